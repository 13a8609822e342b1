"""`openrtc top` with many sessions (issue 4): the wall time of `top --once` against 1,000 sessions,
and what one refresh of the live view costs with 10,000.

A real worker with N idle sessions runs in a child process; this process reads it through the same
`LiveSource` the CLI uses and drives the real Textual app headless (Pilot), refreshing every
`--refresh` seconds while the cursor moves. It reports the fetch (socket + decode, off the UI thread),
the in-place table update on the UI thread (`apply`), and how late a 10 ms timer fires on the UI's
event loop meanwhile (what a user feels as stutter).

Run: `.venv/bin/python benchmarks/bench_top.py [--sessions 10000] [--seconds 15]`; JSON goes to
benchmarks/out/top.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from openrtc.introspection.selection import Selection
from openrtc.top.app import make_app
from openrtc.top.source import Fetch, LiveSource
from openrtc.top.view import TablePlan

ROOT = Path(__file__).resolve().parents[1]

WORKER = """
import asyncio, sys
from openrtc import AgentPool

async def idle(session):
    await session.draining.wait()

async def main():
    async with AgentPool(socket_path=sys.argv[1], drain_timeout_s=5) as pool:
        pool.add("idle", idle)
        for i in range(int(sys.argv[2])):
            await pool.start_session("idle", tenant=f"t{i % 7}")
        print("ready", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


def pcts(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
        "max": round(ordered[-1], 1),
        "n": len(ordered),
    }


async def drive(source: LiveSource, refresh_s: float, seconds: float) -> dict[str, Any]:
    fetch_ms: list[float] = []
    apply_ms: list[float] = []
    lag_ms: list[float] = []

    class Timed:
        folder = source.folder
        cancel = source.cancel

        def fetch(self, want: Selection | None = None) -> Fetch:
            started = time.perf_counter()
            out = source.fetch(want)
            fetch_ms.append((time.perf_counter() - started) * 1000)
            return out

    app = make_app(Timed(), refresh_s=refresh_s)
    original_apply = app.apply

    def timed_apply(fetch: Fetch, plan: TablePlan | None = None) -> None:
        started = time.perf_counter()
        original_apply(fetch, plan)
        apply_ms.append((time.perf_counter() - started) * 1000)

    app.apply = timed_apply  # type: ignore[method-assign]
    async with app.run_test(size=(160, 50)) as pilot:
        while app.refreshes < 1:
            if not app.is_running:
                raise RuntimeError("the app stopped before its first refresh")
            await pilot.pause(0.05)
        first_apply = apply_ms[0]
        deadline = time.perf_counter() + seconds
        table = app.query_one("#sessions")

        async def probe() -> None:
            # How late a 10 ms timer fires on the UI's loop: the stutter a user would feel.
            while True:
                started = time.perf_counter()
                await asyncio.sleep(0.01)
                lag_ms.append((time.perf_counter() - started) * 1000 - 10)

        prober = asyncio.create_task(probe())
        while time.perf_counter() < deadline:
            await pilot.press("down")
            await pilot.pause(0.05)
        prober.cancel()
        rows = table.row_count  # type: ignore[attr-defined]
    return {
        "rows": rows,
        "first_apply_ms": round(first_apply, 1),
        "fetch_ms": pcts(fetch_ms),
        "apply_ms": pcts(apply_ms[1:]),
        "ui_loop_lag_ms": pcts(lag_ms),
    }


class Worker:
    """A real worker with `sessions` idle sessions, in a child process, on a private socket."""

    def __init__(self, sessions: int) -> None:
        home = Path(tempfile.mkdtemp(prefix="ortc-bench-"))
        os.chmod(home, 0o700)
        self.socket = home / "w.sock"
        self._child = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(self.socket), str(sessions)], stdout=subprocess.PIPE, text=True
        )

    def __enter__(self) -> Worker:
        assert self._child.stdout is not None and self._child.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._child.terminate()
        self._child.wait(30)


def once_wall_ms(socket: Path, runs: int, *flags: str) -> dict[str, Any]:
    """Wall time of whole `openrtc top --once` processes (interpreter start included), each run paired
    with a `python -c pass` (the floor on this machine at that moment); p99 of both and their ratio."""
    openrtc = str(Path(sys.executable).with_name("openrtc"))
    command = [openrtc, "top", "--once", "--socket", str(socket), *flags]
    floor = [sys.executable, "-c", "pass"]
    times: list[float] = []
    bare: list[float] = []
    for i in range(runs):
        for argv, into in (
            ((command, times), (floor, bare)) if i % 2 == 0 else ((floor, bare), (command, times))
        ):
            started = time.perf_counter()
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
            into.append((time.perf_counter() - started) * 1000)
    once, python = pcts(times), pcts(bare)
    return {**once, "python_c_pass": python, "p99_over_python_c_pass": round(once["p99"] / python["p99"], 2)}


def imports_ms(*argv: str) -> dict[str, float]:
    """`python -X importtime` of a command: the cumulative import time of its top-level modules (ms),
    the largest first."""
    child = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "openrtc.cli.main", *argv],
        capture_output=True,
        text=True,
        check=False,
    )
    top: dict[str, float] = {}
    for line in child.stderr.splitlines():
        parts = line.split("|")
        top_level = len(parts) == 3 and not parts[2].startswith("  ") and parts[1].strip().isdigit()
        if line.startswith("import time:") and top_level:
            top[parts[2].strip()] = int(parts[1]) / 1000
    ranked = sorted(top.items(), key=lambda kv: -kv[1])
    return {"total": round(sum(top.values()), 1), **{name: round(ms, 1) for name, ms in ranked[:8]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000, help="sessions behind the live view")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--refresh", type=float, default=1.0)
    parser.add_argument(
        "--once-runs", type=int, default=50, help="`top --once` runs against 1,000 sessions (each paired)"
    )
    parser.add_argument("--once-only", action="store_true", help="only `top --once` against 1,000 sessions")
    args = parser.parse_args()
    with Worker(1000) as worker:
        once = {
            "text": once_wall_ms(worker.socket, args.once_runs),
            "json": once_wall_ms(worker.socket, args.once_runs, "--json"),
            "imports_ms": imports_ms("top", "--once", "--socket", str(worker.socket)),
        }
    if args.once_only:
        print(json.dumps(once, indent=2))
        return
    with Worker(args.sessions) as worker:
        result = asyncio.run(drive(LiveSource(worker.socket, timeout=10.0), args.refresh, args.seconds))
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "once_with_1000_sessions_wall_ms": once,
        "live_view": {"sessions": args.sessions, "refresh_s": args.refresh, **result},
    }
    print(json.dumps(out, indent=2))
    (ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "out" / "top.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
