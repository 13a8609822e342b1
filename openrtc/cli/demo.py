"""`openrtc demo`: a worker on `agents_example/` in a child process, driven by a steady mixed load.

Until the live `openrtc top` exists, the demo prints what `openrtc top --once` shows every few seconds.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from openrtc.errors import OpenRTCError, RemoteError
from openrtc.introspection.client import WorkerClient
from openrtc.introspection.paths import ensure_private_dir, socket_dir
from openrtc.introspection.schema import from_dict
from openrtc.top.view import Filters, render_text

# What a realistic mix looks like: mostly healthy sessions, a few misbehaving ones.
LOAD_MIX = {"chat": 40, "voice": 25, "support": 20, "blocking_fixed": 10, "blocking": 5}


def default_agents_dir() -> Path:
    """`agents_example/` next to the package (a source checkout or an editable install)."""
    return Path(__file__).resolve().parents[2] / "agents_example"


def run_demo(agents: Path | None, duration: float | None, rate: float, status_every: float = 5.0) -> int:
    folder = agents or default_agents_dir()
    if not folder.is_dir():
        print(f"openrtc demo: agents folder {folder} not found; pass --agents DIR", file=sys.stderr)
        return 1
    path = ensure_private_dir(socket_dir()) / f"demo-{os.getpid()}.sock"
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
        ],
    )
    try:
        client = _connect(path, worker)
        if client is None:
            print("openrtc demo: the worker did not start; see its log above", file=sys.stderr)
            return 1
        print(f"demo worker pid {worker.pid} on {path}; {rate:g} sessions/s; Ctrl-C stops it", flush=True)
        _drive(client, worker, duration, rate, status_every)
    except KeyboardInterrupt:
        pass
    finally:
        _stop(worker)
    print(f"demo stopped; worker exited with {worker.returncode}", flush=True)
    return 0


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
    status_every: float,
) -> None:
    agents, weights = list(LOAD_MIX), list(LOAD_MIX.values())
    started = time.monotonic()
    next_status = started + status_every
    interval = 1.0 / rate
    next_start = started
    while worker.poll() is None and (duration is None or time.monotonic() - started < duration):
        agent = random.choices(agents, weights)[0]
        try:
            client.request("dispatch", agent=agent, metadata={"caller": f"caller-{random.randrange(1000)}"})
        except RemoteError as exc:
            print(f"dispatch {agent}: {exc}", flush=True)
        now = time.monotonic()
        if now >= next_status:
            snapshot = from_dict(client.request("snapshot"))
            print(
                f"\n--- t={now - started:.0f}s ---\n{render_text([snapshot], Filters(), 'cpu')}", flush=True
            )
            next_status += status_every
        next_start += interval
        time.sleep(max(0.0, next_start - time.monotonic()))


def _stop(worker: subprocess.Popen[bytes]) -> None:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
