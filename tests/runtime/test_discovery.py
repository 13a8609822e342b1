"""Agent files: one agent each, broken files named with file and line, the rest still load."""

from __future__ import annotations

from pathlib import Path

import pytest

from openrtc import AgentLoadError, ConfigError
from openrtc.runtime.discovery import discover, load_agent_file
from tests.helpers import write_agent

CLASS_AGENT = """\
from openrtc import Agent

class Support(Agent):
    name = "support"

    @classmethod
    async def prewarm(cls, shared):
        shared["ready"] = True

    async def run(self, session):
        pass
"""

FUNCTION_AGENT = """\
async def entrypoint(session):
    pass
"""


def test_class_and_function_agents(agents_dir: Path) -> None:
    write_agent(agents_dir, "support_file", CLASS_AGENT)
    write_agent(agents_dir, "echo", FUNCTION_AGENT)
    write_agent(agents_dir, "_helpers", "raise RuntimeError('helpers are not agents')")
    found = discover(agents_dir)
    assert [(a.name, Path(a.source or "").name, a.line) for a in found.agents] == [
        ("echo", "echo.py", 1),
        ("support", "support_file.py", 3),
    ]
    assert found.agents[1].prewarm is not None and found.agents[0].prewarm is None
    assert found.errors == ()


@pytest.mark.parametrize(
    ("source", "line", "message"),
    [
        ("x = 1\ndef broken(:\n", 2, "syntax error"),
        ("import os\n\nraise RuntimeError('no config')\n", 3, "RuntimeError: no config"),
        ("import no_such_module_xyz\n", 1, "ModuleNotFoundError"),
        ("import sys\nsys.exit(4)\n", 2, "SystemExit"),
        ("x = 1\n", 0, "defines no agent"),
        ("def entrypoint(session):\n    pass\n", 1, "must be an `async def`"),
        (CLASS_AGENT + "\nasync def entrypoint(session):\n    pass\n", 13, "more than one agent"),
        ("from openrtc import Agent\n\nclass A(Agent):\n    pass\n", 3, "does not define async def run"),
    ],
)
def test_broken_files_name_file_and_line(agents_dir: Path, source: str, line: int, message: str) -> None:
    bad = write_agent(agents_dir, "bad", source)
    write_agent(agents_dir, "good", FUNCTION_AGENT)
    found = discover(agents_dir)
    assert [a.name for a in found.agents] == ["good"]
    (error,) = found.errors
    assert error.path == str(bad.resolve())
    assert error.line == line, error
    assert message in error.message
    assert str(error).startswith(f"{bad.resolve()}:{line}: " if line else f"{bad.resolve()}: ")


def test_duplicate_names_fail_on_the_later_file(agents_dir: Path) -> None:
    write_agent(agents_dir, "a", CLASS_AGENT)
    write_agent(agents_dir, "b", CLASS_AGENT)
    found = discover(agents_dir)
    assert [a.name for a in found.agents] == ["support"]
    assert "already used by" in found.errors[0].message and found.errors[0].path.endswith("b.py")


def test_agent_files_can_import_sibling_helpers(agents_dir: Path) -> None:
    write_agent(agents_dir, "_shared_util", "GREETING = 'hi'\n")
    write_agent(
        agents_dir, "greeter", "from _shared_util import GREETING\nasync def entrypoint(session):\n    pass\n"
    )
    assert [a.name for a in discover(agents_dir).agents] == ["greeter"]


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        discover(tmp_path / "nope")


def test_each_load_is_a_fresh_module(agents_dir: Path) -> None:
    path = write_agent(
        agents_dir, "v", "VERSION = 1\nasync def entrypoint(session):\n    session.metadata['v'] = VERSION\n"
    )
    first = load_agent_file(path)
    write_agent(
        agents_dir, "v", "VERSION = 2\nasync def entrypoint(session):\n    session.metadata['v'] = VERSION\n"
    )
    second = load_agent_file(path)
    assert first.entry is not second.entry
    assert first.entry.__globals__["VERSION"] == 1 and second.entry.__globals__["VERSION"] == 2  # type: ignore[attr-defined]


def test_load_error_is_an_openrtc_error() -> None:
    assert issubclass(AgentLoadError, Exception)
