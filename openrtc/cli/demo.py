"""`openrtc demo`: a worker on `agents_example/` in a child process, driven by a steady mixed load,
with the live `openrtc top` on it. Quitting `top` (or Ctrl-C) stops the load and drains the worker.

`--no-tui` (or a stdout that is not a terminal) prints what `openrtc top --once` shows every few
seconds instead.

The chat agents talk to a simulated LLM the demo starts on loopback (`openrtc.cli.llmsim`): no
network and no model, canned replies with made-up but realistic usage, so IN, OUT, CACHE% and COST
have something to show. The worker's event log goes to a folder of its own, printed at the end for
`openrtc stats`.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from openrtc.cli.llmsim import SimulatedLLM
from openrtc.errors import OpenRTCError, RemoteError
from openrtc.introspection.client import WorkerClient
from openrtc.introspection.paths import ensure_private_dir, socket_dir
from openrtc.introspection.schema import from_dict
from openrtc.introspection.selection import Filters
from openrtc.top.view import render_text

# What a realistic mix looks like: mostly healthy sessions, a few misbehaving ones.
LOAD_MIX = {
    "chat": 35,
    "voice": 20,
    "support": 15,
    "blocking_fixed": 10,
    "parser": 10,
    "blocking": 5,
    "leaky": 5,
    "flaky": 5,
}
TENANTS = {"acme": 5, "globex": 3, "initech": 2}
"""The demo's customers, so `top`'s TENANT column and its `t` filter have something to show."""


def default_agents_dir() -> Path:
    """`agents_example/` next to the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "agents_example"


def demo_agents(agents: Path | None) -> Path | None:
    """The folder the demo runs (`agents`, else the examples); None, said on stderr, when it is missing."""
    folder = agents or default_agents_dir()
    if not folder.is_dir():
        print(f"openrtc demo: agents folder {folder} not found; pass --agents DIR", file=sys.stderr)
        return None
    return folder


def run_demo(
    agents: Path | None,
    duration: float | None,
    rate: float,
    tui: bool = True,
    status_every: float = 5.0,
    log_dir: Path | None = None,
) -> int:
    folder = demo_agents(agents)
    if folder is None:
        return 1
    tui = tui and sys.stdout.isatty()
    home = ensure_private_dir(socket_dir())
    path = home / f"demo-{os.getpid()}.sock"
    log_path = home / f"demo-{os.getpid()}.log"
    events = log_dir or home / f"demo-{os.getpid()}-events"
    # Under the live view the worker's log goes to a file: its lines would tear the screen.
    log_file = open(log_path, "w") if tui else None  # noqa: SIM115 - closed in `finally`
    llm = SimulatedLLM().start()
    env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "demo-no-key"}
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "openrtc.cli.main",
            "start",
            str(folder),
            "--socket",
            str(path),
            "--log-level",
            "warning",
            "--drain-timeout",
            "3",
            "--log-dir",
            str(events),
        ],
        stderr=log_file,
        env=env,
    )
    stop = threading.Event()
    try:
        client = _connect(path, worker)
        if client is None:
            where = f"see {log_path}" if tui else "see its log above"
            print(f"openrtc demo: the worker did not start; {where}", file=sys.stderr)
            return 1
        if tui:
            _with_live_view(client, worker, path, duration, rate, stop)
        else:
            print(f"demo worker pid {worker.pid} on {path}; {rate:g} sessions/s; Ctrl-C stops it", flush=True)
            _drive(client, worker, duration, rate, stop, _printer(client, status_every))
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        _stop(worker)
        llm.close()
        if log_file is not None:
            log_file.close()
    print(f"demo stopped; worker exited with {worker.returncode}", flush=True)
    if log_file is not None:
        print(f"the worker's log: {log_path}", flush=True)
    print(f"what the sessions cost: openrtc stats usage --by agent --log-dir {events}", flush=True)
    return 0


def _with_live_view(
    client: WorkerClient,
    worker: subprocess.Popen[bytes],
    path: Path,
    duration: float | None,
    rate: float,
    stop: threading.Event,
) -> None:
    from openrtc.top.app import make_app
    from openrtc.top.source import LiveSource

    app = make_app(LiveSource(path), refresh_s=1.0)

    def load() -> None:
        _drive(client, worker, duration, rate, stop, None)
        if not stop.is_set():  # the duration is over, or the worker died: close the view
            app.call_from_thread(app.exit)

    driver = threading.Thread(target=load, name="openrtc-demo-load", daemon=True)
    driver.start()
    try:
        app.run()
    finally:
        stop.set()
        driver.join(5)


def _printer(client: WorkerClient, every: float) -> Callable[[float], None]:
    next_at = [every]

    def maybe_print(elapsed: float) -> None:
        if elapsed >= next_at[0]:
            snapshot = from_dict(client.request("snapshot"))
            print(f"\n--- t={elapsed:.0f}s ---\n{render_text([snapshot], Filters(), 'cpu')}", flush=True)
            next_at[0] += every

    return maybe_print


def _connect(path: Path, worker: subprocess.Popen[bytes], timeout: float = 15.0) -> WorkerClient | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and worker.poll() is None:
        if path.exists():
            try:
                return WorkerClient(path)
            except OpenRTCError:
                pass
        time.sleep(0.05)
    return None


def _drive(
    client: WorkerClient,
    worker: subprocess.Popen[bytes],
    duration: float | None,
    rate: float,
    stop: threading.Event,
    each_turn: Callable[[float], None] | None,
) -> None:
    """Dispatch sessions of the mix at `rate` per second until `stop`, `duration` or the worker ends."""
    agents, weights = list(LOAD_MIX), list(LOAD_MIX.values())
    tenants, shares = list(TENANTS), list(TENANTS.values())
    started = time.monotonic()
    counts: dict[str, int] = {}
    interval = 1.0 / rate
    next_start = started
    while not stop.is_set() and worker.poll() is None:
        elapsed = time.monotonic() - started
        if duration is not None and elapsed >= duration:
            return
        agent = random.choices(agents, weights)[0]
        started_count = counts[agent] = counts.get(agent, 0) + 1
        try:
            metadata = {
                "caller": f"caller-{random.randrange(1000)}",
                "turns": random.randint(5, 25),
                "frames": random.randint(250, 1500),  # voice: 5 to 30 s of audio
                "clock_in_prompt": started_count % 4 == 3,  # chat: a prompt the cache cannot match
            }
            tenant = random.choices(tenants, shares)[0]
            client.request("dispatch", agent=agent, tenant=tenant, metadata=metadata)
        except RemoteError as exc:
            if each_turn is not None:  # under the live view, a refusal shows in the worker's counters
                print(f"dispatch {agent}: {exc}", flush=True)
        except OpenRTCError:
            return  # the worker went away
        if each_turn is not None:
            each_turn(elapsed)
        next_start += interval
        stop.wait(max(0.0, next_start - time.monotonic()))


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
