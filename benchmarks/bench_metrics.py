"""What metrics and token classes cost the worker, and how fast a scrape answers (issue 18).

1. Load: a real `AgentPool` (introspection, usage with its event log) with 1,000 sessions each
   recording 10 LLM calls a second (each on its own phase). The metrics and capacity hooks (with a
   model architecture, so every call also moves a KV estimate) see the calls only in alternate phases
   (5 s each, 4 of each, in one run); the loop's lag (a 5 ms timer's lateness, p50 / p99) is compared
   between the two.
2. Scrape: the same worker's `/metrics` with 50 agents x 10 models counted (every token kind, tools,
   ended sessions) and 1,000 live sessions: wall time of 30 scrapes over HTTP, from another thread.

Run: `.venv/bin/python benchmarks/bench_metrics.py`.
"""

from __future__ import annotations

import asyncio
import os
import platform
import random
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from openrtc import AgentPool, Hook, Session, UsageConfig
from openrtc.capacity import MODELS, CapacityConfig, CapacityHook
from openrtc.metrics import MetricsConfig, MetricsHook
from openrtc.runtime.loops import loop_factory
from openrtc.runtime.view import PoolView


class Gate(Hook):
    """Forwards the calls to `hooks` in `on` phases only (their sessions' starts and ends always)."""

    def __init__(self, *hooks: Hook) -> None:
        self.hooks = hooks
        self.on = False

    def started(self, pool: PoolView) -> None:
        for hook in self.hooks:
            hook.started(pool)

    def session_started(self, session: Session) -> None:
        for hook in self.hooks:
            hook.session_started(session)

    def session_event(self, session: Session | None, kind: str, data: dict[str, Any]) -> None:
        if self.on:
            for hook in self.hooks:
                hook.session_event(session, kind, data)

    def session_finished(self, session: Session) -> None:
        for hook in self.hooks:
            hook.session_finished(session)

    def closed(self) -> None:
        for hook in self.hooks:
            hook.closed()


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def scrape(port: int) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as reply:
        size = len(reply.read())
    return (time.perf_counter() - started) * 1000, size


def run(log_dir: Path, sessions: int = 1000, phase_s: float = 5.0, phases: int = 4) -> dict[str, Any]:
    metrics = MetricsHook(MetricsConfig(port=0))
    capacity = CapacityHook(CapacityConfig(arch=MODELS["llama-3.1-8b"]))
    gate = Gate(capacity, metrics)
    lags: dict[bool, list[float]] = {True: [], False: []}
    calls = [0]

    async def agent(session: Session) -> None:
        usage = session.usage
        turn = 0
        await asyncio.sleep(random.uniform(0, 0.1))
        while not session.draining.is_set():
            await asyncio.sleep(0.1)
            turn += 1
            usage.record("gpt-4o-mini", provider="openai", input_tokens=1200 + 40 * turn, output_tokens=80)
            calls[0] += 1

    async def heartbeat(stop: asyncio.Event) -> None:
        clock = time.perf_counter
        while not stop.is_set():
            before = clock()
            await asyncio.sleep(0.005)
            lags[gate.on].append((clock() - before - 0.005) * 1000)

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with AgentPool(usage=UsageConfig(log_dir=log_dir), hooks=[gate], drain_timeout_s=5) as pool:
            pool.add("talker", agent)
            for _ in range(sessions):
                await pool.start_session("talker")
            await asyncio.sleep(2.0)
            stop = asyncio.Event()
            beat = asyncio.create_task(heartbeat(stop))
            counted = 0
            for i in range(phases * 2):
                gate.on = i % 2 == 0
                before = calls[0]
                await asyncio.sleep(phase_s)
                if gate.on:
                    counted += calls[0] - before
            stop.set()
            await beat
            out["calls_per_s"] = counted / (phases * phase_s)
            # The scrape: 50 agents x 10 models on top of what the load counted, 1,000 live sessions.
            tally = metrics.tally
            for a in range(50):
                for m in range(10):
                    data = {
                        "model": f"model-{m}",
                        "provider": "acme",
                        "input_tokens": 1000,
                        "output_tokens": 100,
                        "cache_read_tokens": 500,
                        "cache_write_tokens": 10,
                        "reasoning_tokens": 20,
                        "cost_usd": 0.001,
                    }
                    tally.llm_call(f"agent-{a}", data)
                    tally.tool_call(f"agent-{a}", {"tool": f"tool-{m}", "ok": m % 2 == 0})
                tally.ended_session(f"agent-{a}", "ended", None, 0.5)
            assert metrics.port is not None
            scrapes = [await asyncio.to_thread(scrape, metrics.port) for _ in range(30)]
            times = [t for t, _ in scrapes]
            out["scrape_ms"] = (statistics.median(times), max(times), scrapes[-1][1])
        return out

    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        result = runner.run(main())
    for on in (True, False):
        result["on" if on else "off"] = (statistics.median(lags[on]), pct(lags[on], 99), len(lags[on]))
    return result


def main() -> None:
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        os.environ["XDG_RUNTIME_DIR"] = tmp
        result = run(Path(tmp) / "log")
    print(f"1. 1,000 sessions, {result['calls_per_s']:,.0f} calls/s: loop lag, ms")
    for key in ("off", "on"):
        median, p99, n = result[key]
        print(f"   metrics and classes {key:<3}  p50 {median:5.2f}  p99 {p99:5.2f}  ({n} beats)")
    print(f"   p99 moved by {result['on'][1] - result['off'][1]:+.2f} ms")
    median, worst, size = result["scrape_ms"]
    print(
        f"2. scrape of 50 agents x 10 models, 1,000 live sessions: median {median:.1f} ms, max {worst:.1f} ms"
    )
    print(f"   ({size:,} bytes)")


if __name__ == "__main__":
    main()
