"""What a CPU profile costs and how right it is.

    .venv/bin/python benchmarks/bench_profile.py [--rounds 6] [--seconds 5] [--loops asyncio,uvloop]

1. Overhead: a worker of 1,000 sessions (the overhead benchmark's realistic load: voice frames, chat
   turns with a tool task, lookups), work units per second while a 100 Hz profile records vs while
   none does, in alternating pairs of windows in the same worker (the order swapped every round), as
   the median of the pairs' ratios with their spread. Not recording costs nothing by construction:
   the profile hook has no per-session method, no thread and no timer until asked (tested in
   tests/profile/test_sampler.py); there is nothing to measure there.
2. Accuracy: an agent spending 25% / 75% of its CPU in two functions, and two sessions loading the
   loop 1:3, recorded at 1 kHz for 4 s, several times: the share each gets, and the largest error.

Prints one JSON document; benchmarks/RESULTS.md has the figures with the machine and date.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_introspection import realistic, run

from openrtc import AgentPool, Session
from openrtc.introspection.client import WorkerClient
from openrtc.profile.stacks import Profile, from_wire


def _record(path: Path, **request: Any) -> Profile:
    with WorkerClient(path, timeout=request.get("seconds", 10) + 20) as client:
        return from_wire(client.request("profile", **request)["profile"])


def overhead(loop_kind: str, rounds: int, window_s: float) -> dict[str, Any]:
    done = [0]
    kinds = ["voice"] * 300 + ["chat"] * 400 + ["support"] * 300

    async def agent(session: Session) -> None:
        await realistic(session, done)

    async def window(pool: AgentPool, recording: bool) -> tuple[float, dict[str, Any] | None]:
        path = pool.socket_path
        assert path is not None
        start_count, started = done[0], time.perf_counter()
        meta = None
        if recording:
            meta = dict((await asyncio.to_thread(_record, path, seconds=window_s, hz=100)).meta)
        else:
            await asyncio.sleep(window_s)
        return (done[0] - start_count) / (time.perf_counter() - started), meta

    async def main() -> dict[str, Any]:
        async with AgentPool(drain_timeout_s=2) as pool:
            pool.add("load", agent)
            for kind in kinds:
                await pool.start_session("load", metadata={"kind": kind})
            await asyncio.sleep(2.0)  # warm up
            ratios, metas, on_rates, off_rates = [], [], [], []
            for i in range(rounds):
                order = (True, False) if i % 2 == 0 else (False, True)
                rates = {}
                for recording in order:
                    rate, meta = await window(pool, recording)
                    rates[recording] = rate
                    if meta is not None:
                        metas.append(meta)
                ratios.append(rates[True] / rates[False])
                on_rates.append(rates[True])
                off_rates.append(rates[False])
            await pool.drain(timeout=2)
        return {
            "sessions": len(kinds),
            "units_per_s_recording": round(statistics.median(on_rates)),
            "units_per_s_not": round(statistics.median(off_rates)),
            "ratio_median": round(statistics.median(ratios), 4),
            "ratios": [round(r, 4) for r in ratios],
            "hz_achieved_median": statistics.median(m["hz_achieved"] for m in metas),
            "lateness_ms_p50_median": statistics.median(m["lateness_ms_p50"] for m in metas),
            "lateness_ms_p99_median": statistics.median(m["lateness_ms_p99"] for m in metas),
        }

    return run(loop_kind, main())  # type: ignore[no-any-return]


def _spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def quarter() -> None:
    _spin(0.5)


def three_quarters() -> None:
    _spin(1.5)


def accuracy(loop_kind: str, repeats: int) -> dict[str, Any]:
    async def functions(session: Session) -> None:
        while True:
            quarter()
            three_quarters()
            await asyncio.sleep(0)

    async def light(session: Session) -> None:
        while True:
            _spin(0.5)
            await asyncio.sleep(0)

    async def heavy(session: Session) -> None:
        while True:
            _spin(1.5)
            await asyncio.sleep(0)

    async def main() -> dict[str, Any]:
        fn_shares, session_shares = [], []
        async with AgentPool(drain_timeout_s=1) as pool:
            pool.add("functions", functions)
            pool.add("light", light)
            pool.add("heavy", heavy)
            path = pool.socket_path
            assert path is not None
            for _ in range(repeats):
                h = await pool.start_session("functions")
                p = await asyncio.to_thread(_record, path, seconds=4, hz=1000)
                h.cancel()
                mine = {s: w for s, w in p.stacks.items() if f"session:{h.id}" in s}
                hit = sum(w for s, w in mine.items() if any(".quarter (" in f for f in s))
                fn_shares.append(100 * hit / sum(mine.values()))
                a, b = await pool.start_session("light"), await pool.start_session("heavy")
                p = await asyncio.to_thread(_record, path, seconds=4, hz=1000)
                a.cancel()
                b.cancel()
                wa = sum(w for s, w in p.stacks.items() if f"session:{a.id}" in s)
                wb = sum(w for s, w in p.stacks.items() if f"session:{b.id}" in s)
                session_shares.append(100 * wa / (wa + wb))
                await asyncio.sleep(0.2)
        return {
            "function_25_share_pct": [round(x, 2) for x in fn_shares],
            "session_25_share_pct": [round(x, 2) for x in session_shares],
            "max_error_points": round(max(abs(x - 25) for x in fn_shares + session_shares), 2),
        }

    return run(loop_kind, main())  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--loops", default="asyncio,uvloop")
    args = parser.parse_args()
    out: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d"),
    }
    for loop_kind in args.loops.split(","):
        out[loop_kind] = {
            "overhead_100hz": overhead(loop_kind, args.rounds, args.seconds),
            "accuracy_1khz": accuracy(loop_kind, args.repeats),
        }
        print(json.dumps({loop_kind: out[loop_kind]}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
