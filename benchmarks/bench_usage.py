"""What usage recording costs the worker, and how fast `openrtc stats` reads a big log (issue 17).

1. Recording, on the loop thread: each call of `session.usage.record` (a priced LLM call),
   `record_response` (an OpenAI chat completion as a dict) and `tool()` (a timed tool call), from a
   session of a real `AgentPool` with introspection on and the event log writing: median and p99 per
   event over 20,000 of each.
2. Load: 1,000 sessions each recording 10 events a second (each on its own phase, as sessions that
   start at different moments are); the loop's lag (a 5 ms timer's lateness, p50 / p99) in phases that
   alternate recording on and off (5 s each, 4 of each), in one run.
3. `openrtc stats` over a log of 100,000 sessions and 1,000,000 events (`usage_log_gen.py`, through the
   worker's own writer): wall time and peak RSS of each command as a whole process (start-up included),
   median of 5 runs.

Run: `.venv/bin/python benchmarks/bench_usage.py [--sessions 100000] [--skip-load]`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from usage_log_gen import generate

from openrtc import AgentPool, Session, UsageConfig
from openrtc.runtime.loops import loop_factory

BIN = Path(sys.executable).parent
COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "model": "gpt-4o-mini",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
    "usage": {
        "prompt_tokens": 2000,
        "completion_tokens": 300,
        "total_tokens": 2300,
        "prompt_tokens_details": {"cached_tokens": 1536},
    },
}


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def recording_cost(log_dir: Path, n: int = 20_000) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}

    async def agent(session: Session) -> None:
        clock = time.perf_counter_ns
        usage = session.usage
        for name in ("record", "record_response", "tool"):
            times = []
            for i in range(n):
                if i % 1000 == 0:
                    await asyncio.sleep(0)  # let the writer thread and the watchdog run, as in life
                started = clock()
                if name == "record":
                    usage.record(
                        "gpt-4o-mini",
                        provider="openai",
                        input_tokens=2000,
                        output_tokens=300,
                        cache_read_tokens=1536,
                        latency_ms=640.0,
                    )
                elif name == "record_response":
                    usage.record_response(COMPLETION, provider="openai", latency_ms=640.0)
                else:
                    with usage.tool("lookup_order"):
                        pass
                times.append((clock() - started) / 1000)
            out[name] = (statistics.median(times), pct(times, 99))

    async def main() -> None:
        async with AgentPool(usage=UsageConfig(log_dir=log_dir)) as pool:
            pool.add("bench", agent)
            await (await pool.start_session("bench"))

    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        runner.run(main())
    return out


def loop_lag_under_load(log_dir: Path, sessions: int = 1000, phase_s: float = 5.0, phases: int = 4) -> Any:
    recording = [False]
    lags: dict[bool, list[float]] = {True: [], False: []}
    events = [0]

    async def agent(session: Session) -> None:
        usage = session.usage
        await asyncio.sleep(random.uniform(0, 0.1))  # sessions start at different moments, as in life
        while not session.draining.is_set():
            await asyncio.sleep(0.1)
            if recording[0]:
                usage.record("gpt-4o-mini", provider="openai", input_tokens=1200, output_tokens=80)
                events[0] += 1

    async def heartbeat(stop: asyncio.Event) -> None:
        clock = time.perf_counter  # not loop.time(): uvloop's counts whole milliseconds
        while not stop.is_set():
            before = clock()
            await asyncio.sleep(0.005)
            lags[recording[0]].append((clock() - before - 0.005) * 1000)

    async def main() -> dict[str, Any]:
        async with AgentPool(usage=UsageConfig(log_dir=log_dir), drain_timeout_s=5) as pool:
            pool.add("talker", agent)
            for _ in range(sessions):
                await pool.start_session("talker")
            await asyncio.sleep(2.0)  # all started and in step
            stop = asyncio.Event()
            beat = asyncio.create_task(heartbeat(stop))
            counted = {True: 0, False: 0}
            for i in range(phases * 2):
                recording[0] = i % 2 == 0
                before = events[0]
                await asyncio.sleep(phase_s)
                counted[recording[0]] += events[0] - before
            stop.set()
            await beat
            return {"events_per_s": counted[True] / (phases * phase_s)}

    with asyncio.Runner(loop_factory=loop_factory("uvloop")) as runner:
        result = runner.run(main())
    for on in (True, False):
        result["on" if on else "off"] = (statistics.median(lags[on]), pct(lags[on], 99), len(lags[on]))
    return result


def timed(args: list[str]) -> tuple[float, float]:
    """(wall s, peak RSS MB) of one whole `openrtc` process."""
    started = time.perf_counter()
    proc = subprocess.Popen([str(BIN / "openrtc"), *args], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"openrtc {' '.join(args)} exited {proc.returncode}")
    return wall, usage.ru_maxrss / 1024


def stats_speed(folder: Path, session_id: str, runs: int = 5) -> dict[str, tuple[float, float]]:
    commands = {
        "stats usage": ["stats", "usage"],
        "stats usage --by model": ["stats", "usage", "--by", "model"],
        "stats usage --since 7d": ["stats", "usage", "--since", "7d"],
        "stats history": ["stats", "history"],
        "stats session ID": ["stats", "session", session_id],
        "stats session PREFIX": ["stats", "session", session_id[:8]],
    }
    out = {}
    for name, args in commands.items():
        results = [timed([*args, "--log-dir", str(folder)]) for _ in range(runs)]
        out[name] = (statistics.median(r[0] for r in results), max(r[1] for r in results))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=100_000)
    parser.add_argument("--skip-load", action="store_true", help="skip part 2 (40 s)")
    args = parser.parse_args()
    print(
        f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"Python {platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-usage-") as tmp:
        home = Path(tmp)
        os.environ["XDG_RUNTIME_DIR"] = str(home)
        cost = recording_cost(home / "rec")
        print("\n1. recording, on the loop thread (us per event: median / p99)")
        for name, (median, p99) in cost.items():
            print(f"   {name:<16} {median:6.2f} / {p99:6.2f}")
        if not args.skip_load:
            load = loop_lag_under_load(home / "load")
            print(f"\n2. 1,000 sessions, {load['events_per_s']:,.0f} events/s while recording: loop lag, ms")
            for key in ("off", "on"):
                median, p99, n = load[key]
                print(f"   recording {key:<3}  p50 {median:5.2f}  p99 {p99:5.2f}  ({n} beats)")
            print(f"   p99 moved by {load['on'][1] - load['off'][1]:+.2f} ms")
        folder = home / "log"
        started = time.perf_counter()
        ids = generate(folder, args.sessions)
        size = sum(p.stat().st_size for p in folder.iterdir())
        print(
            f"\n3. a log of {len(ids):,} sessions, {len(ids) * 10:,} events, {size / 1e6:.0f} MB "
            f"(written in {time.perf_counter() - started:.0f} s); each command a whole process, median of 5"
        )
        for name, (wall, rss) in stats_speed(folder, ids[len(ids) // 2]).items():
            print(f"   {name:<24} {wall:5.2f} s  peak RSS {rss:4.0f} MB")


if __name__ == "__main__":
    main()
