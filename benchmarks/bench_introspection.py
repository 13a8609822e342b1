"""Introspection benchmarks (issue 3): CPU-share accuracy against a current_task sampler, stall
detection, false positives, snapshot latency under load, and the throughput cost of introspection.

Run: `make bench` (all benchmarks) or `.venv/bin/python benchmarks/bench_introspection.py [--quick]`.
Every comparison is measured within one run, interleaved; results print as JSON and go to
benchmarks/out/introspection.json.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from openrtc import AgentPool, Session
from openrtc.introspection.client import WorkerClient
from openrtc.runtime.loops import loop_factory

LOOPS = ("asyncio", "uvloop")
ROOT = Path(__file__).resolve().parents[1]


def run(loop_kind: str, coro: Any) -> Any:
    with asyncio.Runner(loop_factory=loop_factory(loop_kind)) as runner:
        return runner.run(coro)


def snapshot(pool: AgentPool) -> dict[str, Any]:
    assert pool.introspection is not None
    return pool.introspection.snapshot()


# -- 1. accuracy ------------------------------------------------------------------------------------


class CurrentTaskSampler(threading.Thread):
    """The approach we replace: a thread samples `asyncio.current_task(loop)` at 100 Hz."""

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: dict[Any, str]) -> None:
        super().__init__(daemon=True)
        self.loop, self.owner = loop, owner
        self.samples: list[tuple[float, str | None]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.01):
            task = asyncio.current_task(self.loop)
            self.samples.append((time.perf_counter(), self.owner.get(task) if task is not None else None))

    def share(self, session_id: str, lo: float, hi: float) -> float:
        window = [s for t, s in self.samples if lo <= t <= hi]
        return 100 * sum(1 for s in window if s == session_id) / max(1, len(window))


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def accuracy(loop_kind: str, step_ms: float, settle_s: float = 6.0) -> dict[str, Any]:
    """Each session measures two truths over the snapshot's own window: its busy loop only (`busy`,
    the strict figure: the 3-point bar holds against it) and each whole step, from resumption to the
    yield (`step`: the span the reading covers, bookkeeping included)."""
    busy: dict[str, list[tuple[float, float]]] = {}
    steps: dict[str, list[tuple[float, float]]] = {}
    owner: dict[Any, str] = {}

    async def duty(session: Session) -> None:
        owner[asyncio.current_task()] = session.id
        share, step = float(session.metadata["share"]), step_ms / 1000
        idle = step * (1 - share) / share
        mine, whole = busy.setdefault(session.id, []), steps.setdefault(session.id, [])
        loop = asyncio.get_running_loop()
        resumed = time.perf_counter()
        while True:
            start = time.perf_counter()
            while time.perf_counter() - start < step:
                pass
            mine.append((start, time.perf_counter()))
            woken = loop.create_future()
            loop.call_later(idle, _wake, woken)
            whole.append((resumed, time.perf_counter()))
            await woken
            resumed = time.perf_counter()

    async def main() -> dict[str, Any]:
        async with AgentPool(drain_timeout_s=0) as pool:
            pool.add("duty", duty)
            sampler = CurrentTaskSampler(asyncio.get_running_loop(), owner)
            sampler.start()
            for share in (0.1, 0.3, 0.6):
                await pool.start_session("duty", metadata={"share": share})
            await asyncio.sleep(settle_s)
            # On the loop thread, right before the snapshot: no session step runs between the two
            # readings, so the truth and the reading cover the same span.
            taken = time.perf_counter()
            snap = snapshot(pool)
            sampler.stop.set()
            window = snap["worker"]["introspection"]["window_s"]
            lo = taken - window

            def share_of(intervals: list[tuple[float, float]]) -> float:
                return 100 * sum(max(0.0, min(e, taken) - max(s, lo)) for s, e in intervals) / window

            rows = []
            for row, target in zip(snap["sessions"], (10, 30, 60), strict=True):
                sid = row["session_id"]
                truth, step_truth = share_of(busy[sid]), share_of(steps[sid])
                sampled = sampler.share(sid, lo, taken)
                rows.append(
                    {
                        "target_pct": target,
                        "truth_pct": round(truth, 2),
                        "step_truth_pct": round(step_truth, 2),
                        "openrtc_pct": row["cpu_pct"],
                        "openrtc_error": round(row["cpu_pct"] - truth, 2),
                        "openrtc_error_vs_step": round(row["cpu_pct"] - step_truth, 2),
                        "sampler_pct": round(sampled, 2),
                        "sampler_error": round(sampled - truth, 2),
                    }
                )
            return {
                "window_s": window,
                "sessions": rows,
                "sample_hz_achieved": snap["worker"]["introspection"]["sample_hz_achieved"],
            }

    return run(loop_kind, main())


# -- 2. stalls --------------------------------------------------------------------------------------

STALL_S = 0.3


def _sizes() -> dict[str, Any]:
    n = 18
    while True:
        started = time.perf_counter()
        re.match(r"(a+)+$", "a" * n + "b")
        if time.perf_counter() - started >= STALL_S or n > 40:
            break
        n += 1
    sample = list(range(1_000_000))
    started = time.perf_counter()
    json.dumps(sample)
    ints = int(len(sample) * STALL_S / (time.perf_counter() - started))
    return {"regex_text": "a" * n + "b", "json_payload": list(range(ints))}


async def stalling(session: Session) -> None:
    kind, data = session.metadata["kind"], session.metadata["data"]
    await asyncio.sleep(0.02)
    started = time.perf_counter()
    if kind == "sleep":
        time.sleep(STALL_S)  # LINE:sleep
    elif kind == "python":
        while time.perf_counter() - started < STALL_S:  # LINE:python
            pass
    elif kind == "hashlib":
        blob = b"x" * (8 << 20)
        while time.perf_counter() - started < STALL_S:
            hashlib.sha256(blob).digest()  # LINE:hashlib
    elif kind == "regex":
        re.match(r"(a+)+$", data["regex_text"])  # LINE:regex
    elif kind == "json":
        json.dumps(data["json_payload"])  # LINE:json
    session.metadata["took_ms"] = (time.perf_counter() - started) * 1000
    await asyncio.sleep(0.02)


def _line(marker: str) -> int:
    for number, text in enumerate(Path(__file__).read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# LINE:{marker}"):
            return number
    raise LookupError(marker)


def stalls(loop_kind: str, repeats: int) -> dict[str, Any]:
    data = _sizes()

    async def healthy(session: Session) -> None:
        while not session.draining.is_set():
            await asyncio.sleep(0.01)

    async def main() -> dict[str, Any]:
        async with AgentPool(drain_timeout_s=0.2) as pool:
            pool.add("stalling", stalling)
            pool.add("healthy", healthy)
            for _ in range(50):
                await pool.start_session("healthy")
            out = {}
            for kind in ("sleep", "python", "hashlib", "regex", "json"):
                monitor = pool.introspection.monitor if pool.introspection else None
                handles = []
                session_blocks = []
                seen = {id(b) for b in monitor.blocks} if monitor else set()
                for _ in range(repeats):
                    handle = await pool.start_session("stalling", metadata={"kind": kind, "data": data})
                    await handle
                    handles.append(handle)
                    # After each stall, not once at the end: the monitor keeps its last 100 blocks, and
                    # a collection or an overload among them would push the oldest stall out.
                    for b in list(monitor.blocks) if monitor else []:
                        if id(b) not in seen:
                            seen.add(id(b))
                            if b.kind == "session":
                                session_blocks.append(b)
                by_id = {b.session_id: b for b in session_blocks}
                line = f"{Path(__file__).name}:{_line(kind)} in stalling"
                next_line = f"{Path(__file__).name}:{_line(kind) + 1} in stalling"
                detected = [h for h in handles if h.id in by_id]
                errors = [abs(by_id[h.id].ms - h.session.metadata["took_ms"]) for h in detected]
                out[kind] = {
                    "stalls": repeats,
                    "detected": len(detected),
                    "blamed_on_others": len(
                        [b for b in session_blocks if b.session_id not in {h.id for h in handles}]
                    ),
                    "where_exact_line": sum(1 for h in detected if by_id[h.id].where.endswith(line)),
                    "where_next_line": sum(1 for h in detected if by_id[h.id].where.endswith(next_line)),
                    "where_step_end_fallback": sum(
                        1 for h in detected if "no live stack" in by_id[h.id].where
                    ),
                    "duration_error_ms_max": round(max(errors), 2) if errors else None,
                    "duration_error_ms_median": round(statistics.median(errors), 2) if errors else None,
                }
            return out

    return run(loop_kind, main())


def false_positives(loop_kind: str, seconds: float, sessions: int = 1000) -> dict[str, Any]:
    """Healthy sessions only (I/O waits and light CPU per turn): any session block is a false positive."""

    async def healthy(session: Session) -> None:
        import random

        while not session.draining.is_set():
            started = time.perf_counter()
            while time.perf_counter() - started < random.uniform(0.00005, 0.0005):
                pass
            await asyncio.sleep(random.uniform(0.05, 0.5))

    async def main() -> dict[str, Any]:
        async with AgentPool(drain_timeout_s=1) as pool:
            pool.add("healthy", healthy)
            for _ in range(sessions):
                await pool.start_session("healthy")
            await asyncio.sleep(seconds)
            snap = await asyncio.to_thread(snapshot, pool)
            kinds = Counter(b["kind"] for b in snap["blocks"])
            return {
                "sessions": sessions,
                "seconds": seconds,
                "session_blocks": kinds.get("session", 0),
                "other_blocks": {k: v for k, v in kinds.items() if k != "session"},
                "loop_lag_ms": snap["worker"]["loop_lag_ms"],
            }

    return run(loop_kind, main())


# -- 3. snapshot latency ----------------------------------------------------------------------------

LATENCY_AGENTS = """
import asyncio, time

async def entrypoint(session):
    mode = session.metadata.get("mode", "idle")
    if mode == "idle":
        await session.draining.wait()
    elif mode == "busy":  # many short steps: the loop is saturated, no single step is long
        while not session.draining.is_set():
            started = time.perf_counter()
            while time.perf_counter() - started < 0.0002:
                pass
            await asyncio.sleep(0)
    elif mode == "stall":
        await asyncio.sleep(0.5)
        time.sleep(5.0)
"""


def _request_latencies(path: Path, n: int, pause: float = 0.02) -> list[float]:
    out = []
    with WorkerClient(path, timeout=30) as client:
        for _ in range(n):
            started = time.perf_counter()
            client.request("snapshot")
            out.append((time.perf_counter() - started) * 1000)
            time.sleep(pause)
    return out


def _cli_latencies(env: dict[str, str], path: Path, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        subprocess.run(
            [
                str(Path(sys.executable).with_name("openrtc")),
                "top",
                "--once",
                "--json",
                "--socket",
                str(path),
            ],
            env=env,
            check=True,
            capture_output=True,
        )
        out.append((time.perf_counter() - started) * 1000)
    return out


def _pcts(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50_ms": round(values[len(values) // 2], 2),
        "p99_ms": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2),
        "max_ms": round(values[-1], 2),
        "n": len(values),
    }


def latency(loop_kind: str, sessions: int, n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ortc-lat-") as home:
        agents = Path(home) / "agents"
        agents.mkdir()
        (agents / "load.py").write_text(LATENCY_AGENTS)
        env = {**os.environ, "XDG_RUNTIME_DIR": home}
        path = Path(home) / "w.sock"
        worker = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("openrtc")),
                "start",
                str(agents),
                "--socket",
                str(path),
                "--loop",
                loop_kind,
                "--log-level",
                "error",
                "--drain-timeout",
                "1",
            ],
            env=env,
        )
        try:
            deadline = time.time() + 20
            while not path.exists() and time.time() < deadline:
                time.sleep(0.05)
            with WorkerClient(path, timeout=30) as c:
                c.request("dispatch", agent="load", metadata={"mode": "idle"}, count=sessions)
            time.sleep(1.0)
            result: dict[str, Any] = {"sessions": sessions}
            result["idle"] = {
                "request": _pcts(_request_latencies(path, n)),
                "cli": _pcts(_cli_latencies(env, path, max(5, n // 10))),
            }
            with WorkerClient(path, timeout=30) as c:
                c.request("dispatch", agent="load", metadata={"mode": "busy"}, count=50)
            time.sleep(1.0)
            with WorkerClient(path, timeout=30) as c:
                lag = c.request("snapshot")["worker"]["loop_lag_ms"]
            result["saturated"] = {
                "request": _pcts(_request_latencies(path, n)),
                "cli": _pcts(_cli_latencies(env, path, max(5, n // 10))),
                "loop_lag_ms": lag,
            }
            with WorkerClient(path, timeout=30) as c:  # stop the busy ones: drain is too final, cancel them
                snap = c.request("snapshot")
                for row in snap["sessions"]:
                    if row["state"] == "running" and row["cpu_pct"] > 0.5:
                        c.request("cancel", session_id=row["session_id"])
            time.sleep(0.5)
            with WorkerClient(path, timeout=30) as c:
                c.request("dispatch", agent="load", metadata={"mode": "stall"})
            time.sleep(0.7)  # the stall has begun: it lasts 5 s
            started = time.perf_counter()
            during = []
            ongoing_seen = 0
            with WorkerClient(path, timeout=30) as c:
                while time.perf_counter() - started < 4.0:
                    t0 = time.perf_counter()
                    snap = c.request("snapshot")
                    during.append((time.perf_counter() - t0) * 1000)
                    ongoing_seen += any(b["ongoing"] for b in snap["blocks"])
                    time.sleep(0.02)
            result["during_5s_stall"] = {
                "request": _pcts(during),
                "answers_showing_the_ongoing_stall": ongoing_seen,
            }
            return result
        finally:
            worker.terminate()
            worker.wait(30)


# -- 4. overhead ------------------------------------------------------------------------------------


def _spin(seconds: float) -> None:
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        pass


async def realistic(session: Session, done: list[int]) -> None:
    """Agent-shaped work: voice frames with DSP, chat turns with token handling and a tool call, lookups."""
    kind = session.metadata["kind"]
    while not session.draining.is_set():
        if kind == "voice":  # a 20 ms frame, ~150 us of signal processing
            _spin(0.00015)
            await asyncio.sleep(0.02)
        elif kind == "chat":  # wait for the model, handle the tokens, call a tool in a child task
            await asyncio.sleep(0.05)
            _spin(0.0002)

            async def tool() -> None:
                _spin(0.0001)
                await asyncio.sleep(0.01)

            await asyncio.create_task(tool())
        else:  # support lookups
            await asyncio.sleep(0.1)
            _spin(0.00005)
        done[0] += 1


async def tiny(session: Session, done: list[int]) -> None:
    """Worst case for per-step timing: steps of a few microseconds, a child task every turn."""
    while not session.draining.is_set():
        await asyncio.create_task(asyncio.sleep(0))
        done[0] += 1


def overhead_window(loop_kind: str, enabled: bool, window_s: float, load: str) -> dict[str, Any]:
    """One window of the 1,000-session load in this process: work units per second and per CPU-second."""
    done = [0]
    body = realistic if load == "realistic" else tiny
    kinds = ["voice"] * 300 + ["chat"] * 400 + ["support"] * 300

    async def agent(session: Session) -> None:
        await body(session, done)

    async def main() -> dict[str, Any]:
        async with AgentPool(enable_introspection=enabled, drain_timeout_s=2) as pool:
            pool.add("load", agent)
            for kind in kinds:
                await pool.start_session("load", metadata={"kind": kind})
            await asyncio.sleep(2.0)  # warm up
            start_count, started, cpu = done[0], time.perf_counter(), time.process_time()
            await asyncio.sleep(window_s)
            units = done[0] - start_count
            out: dict[str, Any] = {
                "units_per_s": units / (time.perf_counter() - started),
                "units_per_cpu_s": units / (time.process_time() - cpu),  # all threads of the process
                "watchdog_hz": None,
            }
            if enabled:
                out["watchdog_hz"] = (await asyncio.to_thread(snapshot, pool))["worker"]["introspection"][
                    "sample_hz_achieved"
                ]
            await pool.drain(timeout=2)
            return out

    return run(loop_kind, main())


def _window_argv(
    enabled: bool, loop_kind: str, load: str, window_s: float, cpu: int | None = None
) -> list[str]:
    argv = [sys.executable, __file__, "--window", "on" if enabled else "off", "--loop", loop_kind]
    argv += ["--load", load, "--seconds", str(window_s)]
    return argv if cpu is None else [*argv, "--cpu", str(cpu)]


def _window_result(child: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    if child.returncode != 0:
        raise RuntimeError(f"overhead window failed ({child.returncode}): {child.stderr[-2000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def overhead(loop_kind: str, rounds: int, window_s: float, load: str) -> dict[str, Any]:
    """Introspection on vs off, each window a fresh worker process, in alternating pairs.

    A fresh process per window, as a worker runs with introspection on or off for its whole life: run
    in one process one after another, the windows disturbed each other (the same load measured 0.969
    there and 0.983 in fresh processes, with three times the spread).
    """

    def window(enabled: bool) -> dict[str, Any]:
        argv = _window_argv(enabled, loop_kind, load, window_s)
        return _window_result(subprocess.run(argv, capture_output=True, text=True, check=False))

    on: list[dict[str, Any]] = []
    off: list[dict[str, Any]] = []
    for i in range(rounds):
        for enabled in (True, False) if i % 2 == 0 else (False, True):
            (on if enabled else off).append(window(enabled))
    ratios = [a["units_per_s"] / b["units_per_s"] for a, b in zip(on, off, strict=True)]
    cpu_ratios = [a["units_per_cpu_s"] / b["units_per_cpu_s"] for a, b in zip(on, off, strict=True)]
    return {
        "load": load,
        "units_per_s_on": round(statistics.median(w["units_per_s"] for w in on)),
        "units_per_s_off": round(statistics.median(w["units_per_s"] for w in off)),
        "ratio_on_off_median": round(statistics.median(ratios), 4),
        "ratios": [round(r, 4) for r in ratios],
        # Units per CPU-second of the whole process: time the VM lost to other guests does not count.
        "per_cpu_ratio_median": round(statistics.median(cpu_ratios), 4),
        "watchdog_hz_achieved": round(statistics.median(w["watchdog_hz"] for w in on), 1),
    }


def overhead_simultaneous(loop_kind: str, rounds: int, window_s: float) -> dict[str, Any]:
    """Introspection on vs off measured at the same time: two worker processes, each pinned to its own
    core (its helper threads too), started together, then again with the cores swapped.

    A shared machine's speed drifts by several percent within seconds; windows run one after another
    see that drift, windows run at the same time see it alike. The same method run off vs off is the
    control: its spread is what the method itself cannot resolve.
    """
    cpus = sorted(os.sched_getaffinity(0))[:2] if hasattr(os, "sched_getaffinity") else []
    if len(cpus) < 2:
        return {"skipped": "needs two cores and sched_setaffinity"}

    def pair(a: bool, b: bool, swap: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        cores = (cpus[1], cpus[0]) if swap else (cpus[0], cpus[1])
        procs = [
            subprocess.Popen(
                _window_argv(enabled, loop_kind, "realistic", window_s, core),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for enabled, core in zip((a, b), cores, strict=True)
        ]
        ra, rb = (
            _window_result(subprocess.CompletedProcess(p.args, p.wait(), *p.communicate())) for p in procs
        )
        return ra, rb

    def ratios(a: bool, b: bool) -> list[float]:
        # The two cores differ by several percent: each ratio is the geometric mean of a run and the
        # same run with the cores swapped, which cancels that difference.
        out = []
        for _ in range(rounds):
            r = 1.0
            for swap in (False, True):
                ra, rb = pair(a, b, swap)
                r *= ra["units_per_s"] / rb["units_per_s"]
            out.append(r**0.5)
        return out

    on_off = ratios(True, False)
    control = ratios(False, False)
    return {
        "load": "realistic",
        "ratio_on_off_median": round(statistics.median(on_off), 4),
        "ratios": [round(r, 4) for r in on_off],
        "control_off_off_median": round(statistics.median(control), 4),
        "control_ratios": [round(r, 4) for r in control],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument(
        "--pairs", type=int, default=10, help="on/off window pairs per overhead figure (default 10)"
    )
    parser.add_argument("--only", choices=["accuracy", "stalls", "false_positives", "latency", "overhead"])
    parser.add_argument("--out", default="benchmarks/out/introspection.json")
    # One overhead window, run by `overhead` in a child process.
    parser.add_argument("--window", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--loop", choices=LOOPS, default="asyncio", help=argparse.SUPPRESS)
    parser.add_argument(
        "--load", choices=["realistic", "tiny"], help="overhead: only this load (default both)"
    )
    parser.add_argument("--seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.window:
        if args.cpu is not None:  # before the pool starts: its threads inherit the core
            os.sched_setaffinity(0, {args.cpu})
        load = args.load or "realistic"
        print(json.dumps(overhead_window(args.loop, args.window == "on", args.seconds, load)))
        return
    q = args.quick
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "python": platform.python_version(),
    }
    sections = [args.only] if args.only else ["accuracy", "stalls", "false_positives", "latency", "overhead"]
    for loop_kind in LOOPS:
        out: dict[str, Any] = {}
        if "accuracy" in sections:
            out["accuracy"] = {f"{s}ms": accuracy(loop_kind, s) for s in (0.1, 1.0, 10.0)}
        if "stalls" in sections:
            out["stalls"] = stalls(loop_kind, 3 if q else 20)
        if "false_positives" in sections:
            out["false_positives"] = false_positives(loop_kind, 10 if q else 60)
        if "latency" in sections:
            out["latency"] = latency(loop_kind, 1000, 30 if q else 200)
        if "overhead" in sections:
            out["overhead"] = {
                load: overhead(loop_kind, 2 if q else args.pairs, 2.0 if q else 4.0, load)
                for load in ((args.load,) if args.load else ("realistic", "tiny"))
            }
            if args.load in (None, "realistic"):
                out["overhead"]["realistic_simultaneous"] = overhead_simultaneous(
                    loop_kind, 2 if q else args.pairs, 2.0 if q else 4.0
                )
        report[loop_kind] = out
        print(json.dumps({loop_kind: out}, indent=1), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
