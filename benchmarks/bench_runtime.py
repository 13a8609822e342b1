"""Runtime benchmarks for issue 2: tagging cost per task, idle-session memory, dispatch-to-running latency.

Run: `make bench` (or `.venv/bin/python benchmarks/bench_runtime.py`). Each figure that compares two
settings measures both in the same run, interleaved, because the machine is shared and noisy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextvars
import gc
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

from openrtc import AgentPool, Session
from openrtc.introspection import timing
from openrtc.introspection.client import WorkerClient
from openrtc.introspection.tagging import TaskTagger
from openrtc.runtime.loops import loop_factory
from openrtc.runtime.session import current_session

LOOPS = ("asyncio", "uvloop")


# -- tagging cost per task --------------------------------------------------------------------------


async def _spawn_batch(n: int) -> float:
    """Seconds to create and finish `n` trivial tasks from inside a session's context."""

    async def nothing() -> None:
        return None

    loop = asyncio.get_running_loop()
    started = time.perf_counter()
    for _ in range(n):  # the common shape: spawn a helper task and await it
        await loop.create_task(nothing())
    return time.perf_counter() - started


def tagging_cost(loop_kind: str, rounds: int = 21, batch: int = 20_000) -> dict[str, Any]:
    """ns per task created and finished inside a session, under three factories, rotated each round.

    `none` is what a user without openrtc pays; `passthrough` is a Python factory that only builds the
    task, the floor of any Python-level factory; `tagger` is ours (it tags the task and wraps its
    coroutine so each step is timed, as in a worker), with the active step timer (the C one when
    built, whose factory is C too), `tagger_python_factory` the C step timer behind the Python
    factory (what issue 21 moved to C), and `tagger_python` the pure-Python step timer. GC is
    collected before and disabled during each batch so that one setting does not pay for another's
    garbage.
    """

    def passthrough(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        return asyncio.Task(coro, loop=loop, **kwargs)

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        session = Session("bench", "bench", None, {}, {}, asyncio.Event())
        ctx = contextvars.copy_context()
        ctx.run(current_session.set, session)
        samples: dict[str, list[float]] = {
            "none": [],
            "passthrough": [],
            "tagger": [],
            "tagger_python_factory": [],
            "tagger_python": [],
        }
        order = list(samples)
        timers = {
            "tagger": timing.ACTIVE,
            "tagger_python_factory": timing.ACTIVE,
            "tagger_python": timing.PYTHON,
        }
        # tags and times, as in a worker
        taggers = {name: TaskTagger(t.clock(float("inf"), lambda *_: None)) for name, t in timers.items()}
        for _ in range(rounds):
            order = order[1:] + order[:1]
            for name in order:
                tagger = taggers.get(name)
                if tagger is not None:
                    session.stats = timers[name].stats(session)
                    tagger.install(loop)
                    if name == "tagger_python_factory":  # the C step timer behind the Python factory
                        loop.set_task_factory(getattr(loop.get_task_factory(), "fallback", None))
                elif name == "passthrough":
                    loop.set_task_factory(passthrough)
                gc.collect()
                gc.disable()
                elapsed = await loop.create_task(_spawn_batch(batch), context=ctx)
                gc.enable()
                if tagger is not None:
                    tagger.uninstall()
                loop.set_task_factory(None)
                session.tasks.clear()
                samples[name].append(elapsed / batch * 1e9)
        med = {name: statistics.median(values) for name, values in samples.items()}
        return {
            "ns_per_task_no_factory": med["none"],
            "ns_per_task_passthrough_factory": med["passthrough"],
            "step_timer": timing.ACTIVE.name,
            "ns_per_task_tagger": med["tagger"],
            "ns_per_task_tagger_python_factory": med["tagger_python_factory"],
            "ns_per_task_tagger_python": med["tagger_python"],
            "tagging_ns_vs_no_factory": med["tagger"] - med["none"],
            "tagging_python_factory_ns_vs_no_factory": med["tagger_python_factory"] - med["none"],
            "tagging_python_ns_vs_no_factory": med["tagger_python"] - med["none"],
            "tagging_ns_vs_passthrough": med["tagger"] - med["passthrough"],
        }

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        return runner.run(main())


# -- idle sessions memory (one fresh process per measurement) --------------------------------------

IDLE_CHILD = """
import asyncio, gc, json, sys
import psutil
from openrtc import AgentPool
from openrtc.runtime.loops import loop_factory

N, TAGGING, LOOP = int(sys.argv[1]), sys.argv[2] == "on", sys.argv[3]

async def idle(session):
    await session.draining.wait()

async def main():
    proc = psutil.Process()
    # Introspection's threads and socket are there before the baseline: the difference is per session
    # (its stats, its task's wrapper and entry).
    async with AgentPool(enable_introspection=TAGGING, drain_timeout_s=5) as pool:
        pool.add("idle", idle)
        for _ in range(200):  # warm up allocator pools and code paths
            await pool.start_session("idle")
        await asyncio.sleep(0.05)
        gc.collect()
        before = proc.memory_info().rss
        for _ in range(N):
            await pool.start_session("idle")
        await asyncio.sleep(1.2)  # past two of the windows' ticks: every session's CPU ring is made
        gc.collect()
        after = proc.memory_info().rss
        assert pool.sessions_active == N + 200
        print(json.dumps({"rss_before_mb": before / 2**20, "rss_after_mb": after / 2**20,
                          "bytes_per_session": (after - before) / N}))
        await pool.drain()

with asyncio.Runner(loop_factory=loop_factory(LOOP)) as r:
    r.run(main())
"""


def idle_memory(n: int, loop_kind: str, repeats: int = 3) -> dict[str, Any]:
    results: dict[str, list[dict[str, float]]] = {"on": [], "off": []}
    for _ in range(repeats):
        for mode in ("off", "on"):
            out = subprocess.run(
                [sys.executable, "-c", IDLE_CHILD, str(n), mode, loop_kind],
                capture_output=True,
                text=True,
                check=True,
            )
            results[mode].append(json.loads(out.stdout))
    med = {m: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for m, rs in results.items()}
    return {
        "sessions": n,
        "rss_total_mb_on": med["on"]["rss_after_mb"],
        "bytes_per_session_off": med["off"]["bytes_per_session"],
        "bytes_per_session_on": med["on"]["bytes_per_session"],
        "tagging_bytes_per_session": med["on"]["bytes_per_session"] - med["off"]["bytes_per_session"],
    }


# -- dispatch to running latency -------------------------------------------------------------------


def _percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": values[len(values) // 2] * 1e3,
        "p99_ms": values[min(len(values) - 1, int(len(values) * 0.99))] * 1e3,
        "max_ms": values[-1] * 1e3,
    }


def dispatch_latency(loop_kind: str, background: int = 1000, samples: int = 1000) -> dict[str, Any]:
    """With `background` sessions alive: start_session -> agent running, in process and over the socket."""
    running_at: dict[str, float] = {}

    async def idle(session: Session) -> None:
        await session.draining.wait()

    async def probe(session: Session) -> None:
        running_at[session.id] = time.perf_counter()
        await session.draining.wait()

    async def main() -> dict[str, Any]:
        with tempfile.TemporaryDirectory(prefix="ortc-bench-") as home:
            os.environ["XDG_RUNTIME_DIR"] = home
            async with AgentPool(drain_timeout_s=10) as pool:
                pool.add("idle", idle)
                pool.add("probe", probe)
                for _ in range(background):
                    await pool.start_session("idle")
                await asyncio.sleep(0.1)

                # In process: the call returns at once; the agent runs on the next loop turn.
                local: list[float] = []
                for _ in range(samples):
                    t0 = time.perf_counter()
                    handle = await pool.start_session("probe")
                    while handle.id not in running_at:
                        await asyncio.sleep(0)
                    local.append(running_at[handle.id] - t0)

                # Over the socket, one request per session, from a client thread.
                path = pool.socket_path

                def remote() -> list[tuple[float, str]]:
                    out = []
                    with WorkerClient(path) as client:  # type: ignore[arg-type]
                        for _ in range(samples):
                            t0 = time.perf_counter()
                            (sid,) = client.request("dispatch", agent="probe")["session_ids"]
                            out.append((t0, sid))
                    return out

                sent = await asyncio.to_thread(remote)
                await asyncio.sleep(0.1)
                over_socket = [running_at[sid] - t0 for t0, sid in sent]
                active = pool.sessions_active
        return {
            "background_sessions": background,
            "active_at_end": active,
            "in_process": _percentiles(local),
            "socket_dispatch": _percentiles(over_socket),
        }

    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        return runner.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", default="benchmarks/out/runtime.json")
    args = parser.parse_args()
    n_idle = 2_000 if args.quick else 10_000
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "results": {},
    }
    for loop_kind in LOOPS:
        report["results"][loop_kind] = {
            "tagging": tagging_cost(loop_kind, rounds=7 if args.quick else 21),
            "idle_memory": idle_memory(n_idle, loop_kind, repeats=1 if args.quick else 3),
            "dispatch": dispatch_latency(loop_kind, samples=200 if args.quick else 1000),
        }
        print(json.dumps({loop_kind: report["results"][loop_kind]}, indent=2), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
