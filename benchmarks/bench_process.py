"""Process isolation vs coroutines (issue 5): memory per session and session start latency.

One run, both modes side by side, on `agents_example/support.py` (its `prewarm` builds a ~20 MB FAQ
index once per worker; in process mode once, in the template, shared copy-on-write by the children).

Memory: N sessions (10, then 100) each held open for the measurement. Coroutine mode: the worker's
RSS. Process mode: the worker's + the template's + every child's, both as RSS (which counts a shared
page once per process) and as PSS (which splits it among the processes sharing it: the fair figure).
Per session = (total with N sessions - total with none) / N.

Start latency: `start_session` until the session's code runs (coroutine: its first step; process: the
child's first message), 200 sessions started one after another once warm.

Run: `.venv/bin/python benchmarks/bench_process.py`; JSON goes to benchmarks/out/process.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from openrtc import AgentPool, SessionState
from openrtc.runtime.session import Session

ROOT = Path(__file__).resolve().parents[1]
AGENTS = ROOT / "agents_example"
SIZES = (10, 100)


def family_memory(include_children: bool) -> dict[str, float]:
    """RSS and PSS in MB of this process, and of its children (the template and its sessions)."""
    me = psutil.Process()
    procs = [me, *me.children(recursive=True)] if include_children else [me]
    rss = pss = 0.0
    for proc in procs:
        try:
            info = proc.memory_full_info()
        except psutil.Error:
            continue
        rss += info.rss
        pss += getattr(info, "pss", info.rss)
    return {"rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "processes": len(procs)}


async def memory(isolation: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    async with AgentPool(isolation=isolation, enable_introspection=False, drain_timeout_s=2) as pool:
        pool.discover(AGENTS)
        warm = await pool.start_session("support", metadata={"turns": 1})  # prewarm happens here
        await warm
        await asyncio.sleep(0.5)
        base = family_memory(isolation == "process")
        out["baseline"] = {k: round(v, 1) for k, v in base.items()}
        for n in SIZES:
            handles = [await pool.start_session("support", metadata={"turns": 10_000}) for _ in range(n)]
            await wait_running(handles)
            await asyncio.sleep(1.0)
            now = family_memory(isolation == "process")
            out[str(n)] = {
                "total_rss_mb": round(now["rss_mb"], 1),
                "total_pss_mb": round(now["pss_mb"], 1),
                "per_session_rss_mb": round((now["rss_mb"] - base["rss_mb"]) / n, 3),
                "per_session_pss_mb": round((now["pss_mb"] - base["pss_mb"]) / n, 3),
            }
            for handle in handles:
                pool.cancel(handle.id)
            await asyncio.gather(*(asyncio.wait_for(ended(h), 10) for h in handles))
            await asyncio.sleep(0.5)
    return out


async def ended(handle: Any) -> SessionState:
    return await handle  # type: ignore[no-any-return]


async def wait_running(handles: list[Any]) -> None:
    while not all(h.session.running_at is not None or h.session.state.finished for h in handles):
        await asyncio.sleep(0.005)


async def latency(isolation: str, n: int = 200) -> dict[str, float]:
    times: list[float] = []

    async with AgentPool(isolation=isolation, enable_introspection=False, drain_timeout_s=2) as pool:
        pool.discover(AGENTS)
        await (await pool.start_session("support", metadata={"turns": 1}))  # warm: prewarm done
        for _ in range(n):
            started = time.perf_counter()
            handle = await pool.start_session("support", metadata={"turns": 1})
            session: Session = handle.session
            while session.running_at is None and not session.state.finished:
                await asyncio.sleep(0.0002)
            times.append(((session.running_at or time.perf_counter()) - started) * 1000)
            assert await handle is SessionState.ENDED
    ordered = sorted(times)
    return {
        "p50_ms": round(statistics.median(ordered), 2),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1], 2),
        "max_ms": round(ordered[-1], 2),
        "n": len(ordered),
    }


async def main() -> dict[str, Any]:
    results: dict[str, Any] = {"memory": {}, "start_latency": {}}
    for isolation in ("coroutine", "process"):
        results["memory"][isolation] = await memory(isolation)
    for isolation in ("coroutine", "process"):
        results["start_latency"][isolation] = await latency(isolation)
    return results


if __name__ == "__main__":
    out = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
        **asyncio.run(main()),
    }
    print(json.dumps(out, indent=2))
    (ROOT / "benchmarks" / "out").mkdir(exist_ok=True)
    (ROOT / "benchmarks" / "out" / "process.json").write_text(json.dumps(out, indent=2))
