"""200 `top` clients at once against a worker with 1,000 sessions (issue 7): does the loop notice?

A real worker (`openrtc start`, in a child process) holds 1,000 idle sessions. Each round reads the
loop lag p99 over the last 5 s (the heartbeat window), then 200 threads of this process each open a
connection and ask for a snapshot at the same instant, and the lag p99 is read again once the window
covers the burst. Goal: p99 during the burst within 2 ms of before.

Run: `.venv/bin/python benchmarks/bench_clients.py [--rounds 5]`; JSON goes to benchmarks/out/clients.json.
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

from openrtc.introspection.client import WorkerClient

ROOT = Path(__file__).resolve().parents[1]
AGENT = "async def entrypoint(session):\n    await session.draining.wait()\n"


def lag_p99(socket: Path) -> float:
    with WorkerClient(socket) as client:
        return float(client.request("snapshot")["worker"]["loop_lag_ms"]["p99"])


def burst(socket: Path, clients: int) -> tuple[float, int]:
    answered: list[int] = []
    gate = threading.Barrier(clients)

    def one() -> None:
        with WorkerClient(socket, timeout=60) as client:
            gate.wait()
            answered.append(len(client.request("snapshot")["sessions"]))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started, sum(1 for n in answered if n == 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, default=200)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ortc-bench-"))
    os.chmod(home, 0o700)
    agents = home / "agents"
    agents.mkdir()
    (agents / "idle.py").write_text(AGENT)
    socket = home / "w.sock"
    openrtc = str(Path(sys.executable).with_name("openrtc"))
    worker = subprocess.Popen(
        [openrtc, "start", str(agents), "--socket", str(socket), "--log-level", "warning"],
        env={**os.environ, "XDG_RUNTIME_DIR": str(home)},
    )
    rounds: list[dict[str, Any]] = []
    try:
        while not socket.exists():
            time.sleep(0.05)
        time.sleep(0.5)
        with WorkerClient(socket) as client:
            client.request("dispatch", agent="idle", count=1000)
        for _ in range(args.rounds):
            time.sleep(5.5)  # a whole heartbeat window without the previous burst
            before = lag_p99(socket)
            took, answered = burst(socket, args.clients)
            time.sleep(max(0.0, 4.5 - took))  # the window now covers the burst, and little else
            after = lag_p99(socket)
            rounds.append(
                {
                    "before_p99_ms": before,
                    "during_p99_ms": after,
                    "burst_s": round(took, 2),
                    "answered": answered,
                }
            )
    finally:
        worker.terminate()
        worker.wait(30)
    deltas = [r["during_p99_ms"] - r["before_p99_ms"] for r in rounds]
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        "clients": args.clients,
        "sessions": 1000,
        "rounds": rounds,
        "delta_p99_ms_median": round(statistics.median(deltas), 2),
        "delta_p99_ms_max": round(max(deltas), 2),
    }
    print(json.dumps(out, indent=2))
    (ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "out" / "clients.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
