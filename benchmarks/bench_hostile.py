"""The worker's memory and snapshot latency under hostile local clients (issue 15).

A real worker (`openrtc start`) with 1,000 idle sessions; for each scenario, a client process from
`benchmarks/hostile_client.py` attacks its socket while a well-behaved client asks for a snapshot
every 100 ms and `openrtc top --once` runs every second:

- quiet: no attacker (the baseline);
- flood: N connections each send 20,000 `snapshot` requests at once and never read a reply;
- hold: 600 connections each send one header byte every 20 s (never a whole request).

Reported per scenario: the worker's RSS (idle before, peak during, after), the snapshot request's
latency (p50 / p99 / max), `top --once` whole-process time (max) and exit codes, the socket's own
counters. Run: `.venv/bin/python benchmarks/bench_hostile.py [--seconds 20]`.
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
import time
from pathlib import Path
from typing import Any

import psutil

from openrtc.introspection.client import WorkerClient

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IDLE = "import asyncio\n\nasync def entrypoint(session):\n    await session.draining.wait()\n"


def start_worker(home: Path) -> tuple[subprocess.Popen[bytes], Path]:
    agents = home / "agents"
    agents.mkdir()
    (agents / "idle.py").write_text(IDLE)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(home)}
    proc = subprocess.Popen(
        [str(BIN / "openrtc"), "start", str(agents), "--log-level", "warning"],
        env=env,
        stderr=open(home / "worker.log", "w"),  # noqa: SIM115
    )
    sock = home / "openrtc" / f"{proc.pid}.sock"
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert time.monotonic() < deadline and proc.poll() is None, "the worker did not start"
        time.sleep(0.05)
    with WorkerClient(sock) as client:
        for _ in range(10):
            client.request("dispatch", agent="idle", count=100)
    return proc, sock


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def scenario(
    home: Path, proc: subprocess.Popen[bytes], sock: Path, args: list[str], seconds: float
) -> dict[str, Any]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(home)}
    worker = psutil.Process(proc.pid)
    time.sleep(1.0)
    idle_mb = worker.memory_info().rss / 2**20
    attacker = None
    if args:
        attacker = subprocess.Popen(
            [sys.executable, str(ROOT / "benchmarks" / "hostile_client.py"), *args, str(sock)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert attacker.stdout is not None
        attacker.stdout.readline()
    latencies: list[float] = []
    failures = 0
    tops: list[float] = []
    top_codes: list[int] = []
    peak = idle_mb
    next_top = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, worker.memory_info().rss / 2**20)
        started = time.perf_counter()
        try:
            with WorkerClient(sock, timeout=5) as client:
                info = client.request("snapshot")["worker"]["introspection"]["socket"]
            latencies.append((time.perf_counter() - started) * 1000)
        except Exception:
            failures += 1
        if time.monotonic() >= next_top:
            started = time.perf_counter()
            done = subprocess.run(
                [str(BIN / "openrtc"), "top", "--once"], env=env, capture_output=True, check=False
            )
            tops.append(time.perf_counter() - started)
            top_codes.append(done.returncode)
            next_top = time.monotonic() + 1.0
        time.sleep(0.1)
    if attacker is not None:
        attacker.terminate()
        attacker.wait()
        attacker.stdout.close()  # type: ignore[union-attr]
    time.sleep(2.0)
    return {
        "rss_mb": {
            "idle": round(idle_mb, 1),
            "peak": round(peak, 1),
            "after": round(worker.memory_info().rss / 2**20, 1),
        },
        "snapshot_ms": {
            "n": len(latencies),
            "failed": failures,
            "p50": round(statistics.median(latencies), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(max(latencies), 1),
        },
        "top_once_s": {"n": len(tops), "max": round(max(tops), 3), "exit_codes": sorted(set(top_codes))},
        "socket": info,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="each scenario's length (default 20)")
    parser.add_argument("--out", default="benchmarks/out/hostile.json")
    args = parser.parse_args()
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "sessions": 1000,
    }
    scenarios = {
        "quiet": [],
        "flood_4x20000": ["flood", "--connections", "4", "--requests", "20000"],
        "flood_64x20000": ["flood", "--connections", "64", "--requests", "20000"],
        "hold_600": ["hold", "--connections", "600", "--every", "20"],
    }
    for name, attack in scenarios.items():
        with tempfile.TemporaryDirectory(prefix="ortc-bench-") as tmp:
            home = Path(tmp)
            proc, sock = start_worker(home)
            try:
                report[name] = scenario(home, proc, sock, attack, args.seconds)
            finally:
                proc.terminate()
                proc.wait(30)
        print(json.dumps({name: report[name]}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
