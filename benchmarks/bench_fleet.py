"""The fleet on NATS JetStream, measured: dispatch throughput (sessions/s), dispatch-to-running latency
(p50/p99) for 1 and 3 workers, and balance (sessions per worker, max/min, at a steady load).

    .venv/bin/python benchmarks/bench_fleet.py [--quick]

A real `nats-server -js` (the virtualenv's) and real `openrtc start --nats` worker processes, on this
machine; the load comes from this process through `openrtc.fleet.client`. Latency is a session's
`running` event time (taken on its worker's loop) less its request's `created_at` (taken here): the
same clock, one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil

from openrtc.fleet.client import connect, ensure_stream, publish
from openrtc.fleet.localserver import LocalNats
from openrtc.fleet.protocol import EVENTS_PREFIX, decode_event, make_request

AGENT = """
import asyncio
from openrtc import Agent, Session

class Bench(Agent):
    name = "bench"

    async def run(self, session: Session) -> None:
        await asyncio.sleep(float(session.metadata.get("seconds", 0)))
"""


def start_workers(folder: Path, url: str, count: int, cap: int, home: Path) -> list[subprocess.Popen[bytes]]:
    openrtc = str(Path(sys.executable).with_name("openrtc"))
    procs = []
    for i in range(count):
        log = open(home / f"worker-{i}.log", "wb")  # noqa: SIM115 - the process holds it
        procs.append(
            subprocess.Popen(
                [openrtc, "start", str(folder), "--nats", url, "--max-sessions", str(cap), "--no-event-log"],
                stderr=log,
                env={"XDG_RUNTIME_DIR": str(home), "PATH": str(Path(sys.executable).parent)},
            )
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        joined = sum("fleet: joined" in (home / f"worker-{i}.log").read_text() for i in range(count))
        if joined == count:
            return procs
        time.sleep(0.1)
    raise RuntimeError("the workers did not join the fleet")


def stop_workers(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(30)


async def run_load(url: str, total: int, rate: float | None, seconds: float) -> dict[str, Any]:
    """Publish `total` requests (at `rate` a second, or as fast as the server acks them), wait for
    every end; what happened to each."""
    nc = await connect(url, name="bench")
    created: dict[str, float] = {}
    running: dict[str, tuple[float, str]] = {}
    ended: dict[str, float] = {}
    done = asyncio.Event()
    # Sessions running on each worker right now, sampled every 0.5 s while the load is steady.
    live: dict[str, int] = {}
    samples: list[dict[str, int]] = []

    async def on_event(msg: Any) -> None:
        event = decode_event(msg.data)
        if event.state == "running":
            running[event.session_id] = (event.at, event.worker_id)
            live[event.worker_id] = live.get(event.worker_id, 0) + 1
        elif event.final:
            ended[event.session_id] = time.time()
            if event.session_id in running:
                live[running[event.session_id][1]] -= 1
            if len(ended) == total:
                done.set()

    try:
        await nc.subscribe(EVENTS_PREFIX + "bench.*", cb=on_event)
        js = nc.jetstream()
        await ensure_stream(js)
        first = time.time()
        if rate is None:  # as fast as acked, 64 in flight
            for start in range(0, total, 64):
                batch = [
                    make_request("bench", metadata={"seconds": seconds})
                    for _ in range(min(64, total - start))
                ]
                for request in batch:
                    created[request.session_id] = request.created_at
                await asyncio.gather(
                    *(publish(js, "bench", metadata=r.metadata, session_id=r.session_id) for r in batch)
                )
        else:
            next_at = time.monotonic()
            warm = next_at + seconds + 1.0
            sampled = 0.0
            for _ in range(total):
                request = make_request("bench", metadata={"seconds": seconds})
                created[request.session_id] = request.created_at
                await publish(js, "bench", metadata=request.metadata, session_id=request.session_id)
                next_at += 1 / rate
                if time.monotonic() > max(warm, sampled + 0.5):
                    sampled = time.monotonic()
                    samples.append(dict(live))
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.wait_for(done.wait(), 120 + total / 10)
        last = max(ended.values())
    finally:
        await nc.close()
    latencies = sorted((running[s][0] - created[s]) * 1000 for s in created if s in running)
    per_worker: dict[str, int] = {}
    for _, worker in running.values():
        per_worker[worker] = per_worker.get(worker, 0) + 1
    workers = sorted(per_worker)
    concurrent = [statistics.mean(sample.get(w, 0) for sample in samples) for w in workers] if samples else []
    return {
        "sessions": total,
        "seconds": round(last - first, 3),
        "sessions_per_s": round(total / (last - first), 1),
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(latencies[int(0.99 * (len(latencies) - 1))], 2),
        "per_worker": sorted(per_worker.values()),
        "concurrent_per_worker": sorted(round(c, 1) for c in concurrent),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--out", default="benchmarks/out/fleet.json")
    args = parser.parse_args()
    q = args.quick
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores",
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        home = Path(tmp)
        (home / "agents").mkdir()
        (home / "agents" / "bench.py").write_text(textwrap.dedent(AGENT))
        for workers in (1, 3):
            server = LocalNats(home / f"nats-{workers}").start()
            procs = start_workers(home / "agents", server.url, workers, 50, home)
            try:
                result = {
                    # Sessions that end at once: what dispatch itself sustains.
                    "throughput": asyncio.run(run_load(server.url, 200 if q else 3000, None, 0.0)),
                    # A steady 20 sessions/s of 0.2 s: the latency of a fleet with room.
                    "latency": asyncio.run(run_load(server.url, 40 if q else 600, 20.0, 0.2)),
                }
                if workers == 3:
                    # 60% of the fleet's 150 slots busy: 45 sessions/s of 2 s.
                    result["balance"] = asyncio.run(run_load(server.url, 180 if q else 1350, 45.0, 2.0))
                    balance = result["balance"]
                    counts = balance["per_worker"]
                    balance["max_over_min"] = round(max(counts) / max(1, min(counts)), 3)
                    concurrent = balance["concurrent_per_worker"]
                    balance["concurrent_max_over_min"] = (
                        round(max(concurrent) / max(0.1, min(concurrent)), 3) if concurrent else None
                    )
                report[f"{workers}_workers"] = result
                print(json.dumps({f"{workers}_workers": result}, indent=1), flush=True)
            finally:
                stop_workers(procs)
                server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
