"""What looking costs at 10,000 sessions (issue 21): a worker of idle sessions (each awaiting a 1 s
sleep), watched by nobody, by the live `top` (a selection of the rows it shows, every second) and by a
poller of the full snapshot every second (what the live view asked for before); and `top --once`
against it, whole process, beside `python -c pass`.

    .venv/bin/python benchmarks/bench_snapshot.py [--sessions 10000] [--seconds 10] [--rounds 3]

Per phase, from the worker: its loop's lateness (a 10 ms timer on the worker's loop, ours, not
introspection's heartbeat, so a worker without introspection is measured the same way), its process
CPU (psutil, from outside: the figure `cost_pct` must agree with) and introspection's `cost_pct`.
Phases rotate within each round; medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from bench_top import once_wall_ms

from openrtc.introspection.client import WorkerClient
from openrtc.introspection.selection import Selection
from openrtc.top.source import LiveSource

WORKER = """
import asyncio, json, sys, threading, time
from openrtc import AgentPool

async def idle(session):
    while not session.draining.is_set():
        await asyncio.sleep(1)

async def main():
    late = []
    loop = asyncio.get_running_loop()

    async def probe():
        while True:
            at = loop.time()
            await asyncio.sleep(0.01)
            late.append((loop.time() - at - 0.01) * 1000)

    def report():
        ordered = sorted(late)
        late.clear()
        n = len(ordered)
        out = {"p50": ordered[n // 2], "p99": ordered[min(n - 1, int(n * 0.99))], "n": n} if n else {}
        print(json.dumps(out), flush=True)

    def commands():
        for line in sys.stdin:
            loop.call_soon_threadsafe(report)

    async with AgentPool(socket_path=sys.argv[1], enable_introspection=sys.argv[3] == "on") as pool:
        pool.add("idle", idle)
        for i in range(int(sys.argv[2])):
            await pool.start_session("idle", tenant=f"t{i % 7}")
        asyncio.create_task(probe())
        threading.Thread(target=commands, daemon=True).start()
        print("ready", flush=True)
        await asyncio.sleep(3600)

asyncio.run(main())
"""


class Worker:
    def __init__(self, sessions: int, introspection: bool) -> None:
        home = Path(tempfile.mkdtemp(prefix="ortc-snap-"))
        os.chmod(home, 0o700)
        self.socket = home / "w.sock"
        self.introspection = introspection
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(self.socket), str(sessions), "on" if introspection else "off"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.ps = psutil.Process(self.proc.pid)

    def lateness(self) -> dict[str, float]:
        """The loop's lateness since the last call (ms)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("report\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def cost_pct(self) -> float | None:
        if not self.introspection:
            return None
        with WorkerClient(self.socket, timeout=10) as client:
            reply = client.request("snapshot", limit=1)
        return float(reply["worker"]["introspection"]["cost_pct"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def phase(worker: Worker, viewer: str, seconds: float) -> dict[str, Any]:
    """`seconds` of the worker watched by `viewer` ("none", "live": the live view's request, "full":
    every session), once a second."""
    stop = threading.Event()
    fetch_ms: list[float] = []

    def watch() -> None:
        source = LiveSource(worker.socket, timeout=10)
        want = Selection("cpu", 100) if viewer == "live" else None
        while not stop.wait(1.0):
            began = time.perf_counter()
            source.fetch(want)
            fetch_ms.append((time.perf_counter() - began) * 1000)

    worker.lateness()  # start the lateness window here
    cpu0, t0 = worker.ps.cpu_times(), time.monotonic()
    thread = threading.Thread(target=watch) if viewer != "none" else None
    if thread is not None:
        thread.start()
    time.sleep(seconds)
    stop.set()
    if thread is not None:
        thread.join()
    cpu1, t1 = worker.ps.cpu_times(), time.monotonic()
    late = worker.lateness()
    return {
        "lateness_ms_p50": round(late.get("p50", 0.0), 2),
        "lateness_ms_p99": round(late.get("p99", 0.0), 2),
        "worker_cpu_pct": round((cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (t1 - t0) * 100, 2),
        "cost_pct": worker.cost_pct(),
        "fetch_ms_median": round(statistics.median(fetch_ms), 1) if fetch_ms else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=10.0, help="per phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--once-runs", type=int, default=30)
    parser.add_argument("--out", default="benchmarks/out/snapshot.json")
    args = parser.parse_args()
    results: dict[str, list[dict[str, Any]]] = {"off": [], "on": [], "on+live top": [], "on+full poll": []}
    off, on = Worker(args.sessions, False), Worker(args.sessions, True)
    try:
        time.sleep(5)  # both settle: every session has slept its first second
        plan = [
            (off, "none", "off"),
            (on, "none", "on"),
            (on, "live", "on+live top"),
            (on, "full", "on+full poll"),
        ]
        for r in range(args.rounds):
            for worker, viewer, name in plan[r % len(plan) :] + plan[: r % len(plan)]:
                results[name].append(phase(worker, viewer, args.seconds))
                print(name, results[name][-1], flush=True)
        once = {
            "table": once_wall_ms(on.socket, args.once_runs),
            "json": once_wall_ms(on.socket, max(5, args.once_runs // 3), "--json"),
        }
    finally:
        off.close()
        on.close()
    summary = {
        name: {
            key: round(statistics.median(r[key] for r in runs), 2)
            for key in runs[0]
            if runs[0][key] is not None
        }
        for name, runs in results.items()
    }
    report = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, Python {platform.python_version()}",
        "sessions": args.sessions,
        "seconds_per_phase": args.seconds,
        "rounds": args.rounds,
        "phases": summary,
        "runs": results,
        "top_once_wall_ms": once,
    }
    print(json.dumps({k: report[k] for k in ("phases", "top_once_wall_ms")}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
