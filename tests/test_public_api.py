"""Pins the public API: a name added to or removed from `openrtc` must be a decision, not an accident."""

import subprocess
import sys

import openrtc

EXPECTED = {
    "Agent",
    "AgentLoadError",
    "AgentPool",
    "ConfigError",
    "Hook",
    "OpenRTCError",
    "ProtocolError",
    "RefusalReason",
    "RemoteError",
    "SchemaVersionError",
    "Session",
    "SessionHandle",
    "SessionRefused",
    "SessionState",
    "SocketError",
    "UnknownAgentError",
    "UsageConfig",
    "UsageError",
    "WorkerNotFound",
    "WorkerUnresponsive",
    "__version__",
}


def test_all_is_pinned() -> None:
    assert set(openrtc.__all__) == EXPECTED


def test_public_names_resolve() -> None:
    for name in openrtc.__all__:
        assert hasattr(openrtc, name), name


def test_public_module_attributes_are_exactly_all() -> None:
    # subpackages show up as attributes once something imported them
    public = {n for n in dir(openrtc) if not n.startswith("_")} - {
        "errors",
        "pool",
        "runtime",
        "usage",
        "stats",
        "capacity",
        "metrics",
        "otel",
        "profile",
        "fleet",
        "introspection",
        "top",
        "cli",
        "importlib",
        "TYPE_CHECKING",
        "Any",
    }
    assert public == EXPECTED - {"__version__"}


def test_importing_openrtc_loads_no_runtime_until_asked() -> None:
    code = (
        "import sys, openrtc\n"
        "assert 'asyncio' not in sys.modules and 'openrtc.pool' not in sys.modules, sorted(sys.modules)\n"
        "openrtc.AgentPool\n"
        "assert 'openrtc.pool' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_share_one_base() -> None:
    for name in openrtc.__all__:
        obj = getattr(openrtc, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, openrtc.OpenRTCError), name


def test_import_has_no_side_effects() -> None:
    """Importing openrtc starts no thread, opens no socket, installs no task factory, imports no Textual."""
    code = (
        "import threading, sys, asyncio, os\n"
        "import openrtc, openrtc.cli.main\n"
        "def link(f):\n    try: return os.readlink('/proc/self/fd/' + f)\n    except OSError: return ''\n"
        "fds = [link(f) for f in os.listdir('/proc/self/fd')]\n"
        "assert not [f for f in fds if f.startswith('socket:')], fds\n"
        "assert threading.active_count() == 1, threading.enumerate()\n"
        "assert 'textual' not in sys.modules\n"
        "loop = asyncio.new_event_loop(); assert loop.get_task_factory() is None\n"
        "print('clean')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "clean"
