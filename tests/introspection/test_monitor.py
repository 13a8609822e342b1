"""Introspection measured against truth, on real loops: CPU shares, stalls and their lines, overload."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, Session
from openrtc.introspection.schema import from_dict

HERE = Path(__file__).resolve()


def line_of(marker: str) -> int:
    """The line of this file that carries `# <marker>`."""
    for number, text in enumerate(HERE.read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(marker)


def snapshot_of(pool: AgentPool) -> dict[str, Any]:
    assert pool.introspection is not None
    return pool.introspection.snapshot()


# -- CPU shares --------------------------------------------------------------------------------------


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


@pytest.mark.parametrize(
    ("step_ms", "step_timer"), [(0.1, "c"), (1.0, "c"), (10.0, "c"), (0.1, "python")], indirect=["step_timer"]
)
def test_cpu_pct_matches_truth_within_3_points(
    run_loop: Any, sock_home: Path, step_ms: float, step_timer: Any
) -> None:
    """Three sessions hold about 10/30/60% of the loop in steps of `step_ms`; each measures its own truth.

    The truth is each whole step, from the moment the coroutine resumes to the moment it yields, over
    the snapshot's own window: the same span the reading covers. A truth of only the busy loop leaves
    out each step's own bookkeeping (arming the timer, resuming from the sleep): a few microseconds
    per 0.1 ms step, more on a loaded machine, which read as 4 points of error once in CI.
    """
    intervals: dict[str, list[tuple[float, float]]] = {}

    async def duty(session: Session) -> None:
        share = float(session.metadata["share"])
        step = step_ms / 1000
        idle = step * (1 - share) / share
        mine = intervals.setdefault(session.id, [])
        loop = asyncio.get_running_loop()
        resumed = time.perf_counter()
        while True:
            while time.perf_counter() - resumed < step:
                pass
            # The timer is armed before the step's last clock reading, so nothing but the `await`
            # itself runs after it.
            woken = loop.create_future()
            loop.call_later(idle, _wake, woken)
            mine.append((resumed, time.perf_counter()))
            await woken
            resumed = time.perf_counter()

    async def main() -> tuple[dict[str, Any], float]:
        async with AgentPool(drain_timeout_s=0) as pool:
            pool.add("duty", duty)
            for share in (0.1, 0.3, 0.6):
                await pool.start_session("duty", metadata={"share": share})
            await asyncio.sleep(6.0)
            # On the loop thread: no session step runs between this reading and the snapshot's.
            taken = time.perf_counter()
            snap = snapshot_of(pool)
            return snap, taken

    snap, taken = run_loop(main())
    info = snap["worker"]["introspection"]
    window = info["window_s"]
    # Ticks come every 0.5 s, a heartbeat (50 ms) late at most when the loop starves the watchdog.
    assert 4.5 <= window <= 5.7, window
    # A saturated uvloop starved the watchdog for whole windows (a GIL convoy): 0 looks a second, one
    # tick in six seconds, its time read long before its counters (shares 5 points low in CI).
    assert info["sample_hz_achieved"] >= 4, info
    for row in snap["sessions"]:
        lo = taken - window
        truth_s = sum(
            max(0.0, min(end, taken) - max(start, lo)) for start, end in intervals[row["session_id"]]
        )
        truth = truth_s / window * 100
        assert abs(row["cpu_pct"] - truth) <= 3.0, (step_ms, row["cpu_pct"], truth)
        total = sum(end - start for start, end in intervals[row["session_id"]])
        assert row["cpu_s"] >= total * 0.97 and row["cpu_s"] - total < 0.25 * total + 0.05


# -- stalls ------------------------------------------------------------------------------------------

STALL_S = 0.3


def _calibrate(make: Any, sizes: range) -> Any:
    """The smallest argument for which `make(arg)` takes at least STALL_S, measured here."""
    for size in sizes:
        started = time.perf_counter()
        make(size)
        if time.perf_counter() - started >= STALL_S:
            return size
    return sizes[-1]


def _regex(n: int) -> None:
    re.match(r"(a+)+$", "a" * n + "b")


def _json_size() -> int:
    """How many ints `json.dumps` encodes in STALL_S here (measured on a sample, then scaled)."""
    sample = list(range(1_000_000))
    started = time.perf_counter()
    json.dumps(sample)
    return int(len(sample) * STALL_S / (time.perf_counter() - started))


REGEX_N = None
JSON_N = None


async def stalling(session: Session) -> None:
    kind, text, payload = session.metadata["kind"], session.metadata["text"], session.metadata["payload"]
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    if kind == "sleep":
        time.sleep(STALL_S)  # STALL:sleep
    elif kind == "python":
        while time.perf_counter() - started < STALL_S:  # STALL:python
            pass
    elif kind == "hashlib":
        data = b"x" * (8 << 20)
        while time.perf_counter() - started < STALL_S:
            hashlib.sha256(data).digest()  # STALL:hashlib
    elif kind == "regex":
        re.match(r"(a+)+$", text)  # STALL:regex
    elif kind == "json":
        json.dumps(payload)  # STALL:json
    session.metadata["took_ms"] = (time.perf_counter() - started) * 1000
    await asyncio.sleep(0.05)


async def healthy(session: Session) -> None:
    while not session.draining.is_set():
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("step_timer", ["c", "python"], indirect=True)
@pytest.mark.parametrize("kind", ["sleep", "python", "hashlib", "regex", "json"])
def test_stalls_are_blamed_on_the_right_session_and_line(
    run_loop: Any, sock_home: Path, kind: str, caplog: pytest.LogCaptureFixture, step_timer: Any
) -> None:
    arg = None
    if kind == "regex":
        arg = _calibrate(_regex, range(18, 34))
    elif kind == "json":
        arg = _json_size()
    repeats = 3

    async def main() -> tuple[dict[str, Any], list[Any]]:
        async with AgentPool(drain_timeout_s=0.2) as pool:
            pool.add("stalling", stalling)
            pool.add("healthy", healthy)
            for _ in range(20):
                await pool.start_session("healthy")
            culprits = []
            for _ in range(repeats):
                metadata = {
                    "kind": kind,
                    "text": "a" * arg + "b" if kind == "regex" else "",
                    "payload": list(range(arg)) if kind == "json" else [],
                }
                handle = await pool.start_session("stalling", metadata=metadata)
                await handle
                culprits.append(handle)
            return snapshot_of(pool), culprits

    # A full collection of this big test process in another thread holds the GIL through a whole
    # stall, and then the watchdog cannot look (seen once in CI: a `time.sleep` stall on the
    # step-end fallback). That is the worker's honest answer, but not what this test is about.
    gc.collect()
    gc.disable()
    try:
        with caplog.at_level("WARNING", logger="openrtc.slow"):
            snap, culprits = run_loop(main())
    finally:
        gc.enable()
    blocks = [b for b in snap["blocks"] if b["kind"] == "session"]
    assert [b["session_id"] for b in blocks] == [
        h.id for h in culprits
    ]  # every stall, right session, nobody else
    expected_where = f"{HERE.name}:{line_of('STALL:' + kind)} in stalling"
    for block, handle in zip(blocks, culprits, strict=True):
        assert block["agent"] == "stalling" and not block["ongoing"]
        if kind in ("regex", "json"):
            # A C call that holds the GIL keeps the watchdog out until it returns: the watchdog then sees
            # the session at the call's line or the next one, or, rarely, not before the step ended
            # (rates in benchmarks/RESULTS.md), and then `where` is the session's line where it ended.
            line = line_of("STALL:" + kind)
            near = (f"{HERE.name}:{line} in stalling", f"{HERE.name}:{line + 1} in stalling")
            assert block["where"].endswith(near) or " in stalling (step ended here;" in block["where"], block
        else:
            assert block["where"].endswith(expected_where), (block["where"], expected_where)
        assert abs(block["ms"] - handle.session.metadata["took_ms"]) < 15, (
            block["ms"],
            handle.session.metadata,
        )
        assert any("in stalling" in frame for frame in block["stack"])
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[slow-session]")]
    assert len(logged) == repeats
    assert logged[0].startswith(
        f"[slow-session] session_id={culprits[0].id} agent=stalling blocked event loop for "
    )


@pytest.mark.parametrize("step_timer", ["c", "python"], indirect=True)
def test_ongoing_stall_is_visible_while_the_loop_is_blocked(
    run_loop: Any, sock_home: Path, step_timer: Any
) -> None:
    seen: list[dict[str, Any]] = []

    async def frozen(session: Session) -> None:
        await asyncio.sleep(0.05)
        time.sleep(1.6)  # FROZEN

    async def main() -> str:
        async with AgentPool(drain_timeout_s=0.2) as pool:
            pool.add("frozen", frozen)

            def look() -> None:
                for _ in range(3):
                    time.sleep(0.3)
                    seen.append(snapshot_of(pool))

            watcher = threading.Thread(target=look)
            handle = await pool.start_session("frozen")
            watcher.start()
            await handle
            watcher.join()
            return handle.id

    culprit = run_loop(main())
    ongoing = [[b for b in s["blocks"] if b["ongoing"]] for s in seen]
    live = [o[0] for o in ongoing if o]
    assert len(live) >= 2
    assert all(
        b["session_id"] == culprit and b["where"].endswith(f":{line_of('FROZEN')} in frozen") for b in live
    )
    assert live[-1]["ms"] > live[0]["ms"]  # the duration is live
    assert any("in frozen" in frame for frame in live[0]["stack"])
    # Its row says so while it lasts: slow, the block in progress, and the time held so far as CPU.
    during = [s for s, o in zip(seen, ongoing, strict=True) if o][-1]
    (row,) = [r for r in during["sessions"] if r["session_id"] == culprit]
    assert row["slow"] and row["blocks"] == 1 and row["last_block"]["where"] == live[-1]["where"]
    assert row["last_block"]["ongoing"] is True  # a script can tell "179 ms so far" from "took 179 ms"
    held_s = live[-1]["ms"] / 1000
    window_s = during["worker"]["introspection"]["window_s"]
    assert row["cpu_s"] >= held_s - 0.05 and row["cpu_pct"] >= min(100.0, (held_s - 0.05) / window_s * 100)


def test_overload_blames_nobody(run_loop: Any, sock_home: Path, caplog: pytest.LogCaptureFixture) -> None:
    """150 sessions of 2 ms steps keep the loop about 300 ms late at every heartbeat: an overload. The
    threshold (200 ms) is far above a step, so a loaded machine pausing the thread mid-step does not
    turn a step into a session's block."""

    async def chatty(session: Session) -> None:
        for _ in range(20):
            started = time.perf_counter()
            while time.perf_counter() - started < 0.002:
                pass
            await asyncio.sleep(0)

    async def main() -> dict[str, Any]:
        async with AgentPool(drain_timeout_s=0.2, slow_session_threshold_ms=200) as pool:
            pool.add("chatty", chatty)
            handles = [await pool.start_session("chatty") for _ in range(150)]
            await asyncio.gather(*(h.wait() for h in handles))
            return snapshot_of(pool)

    snap = run_loop(main())
    kinds = {b["kind"] for b in snap["blocks"]}
    assert "overload" in kinds and kinds <= {"overload", "gc"}, snap["blocks"]  # a gc pause may show too
    overloads = [b for b in snap["blocks"] if b["kind"] == "overload"]
    assert all(b["session_id"] is None and b["where"].startswith("overload:") for b in overloads)
    assert all(row["blocks"] == 0 for row in snap["sessions"])
    # Late at every heartbeat, logged at most once per OVERLOAD_LOG_EVERY_S (5 s of a ~6 s overload).
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("[overload]")]
    assert 1 <= len(lines) <= 2 < len(overloads), (lines, len(overloads))


def test_snapshot_rows_and_worker_figures(run_loop: Any, sock_home: Path) -> None:
    async def idle(session: Session) -> None:
        async def child() -> None:
            await session.draining.wait()

        await asyncio.gather(child(), child())

    async def boom(session: Session) -> None:
        raise RuntimeError("bug")

    async def main() -> dict[str, Any]:
        async with AgentPool(drain_timeout_s=0.2, max_sessions=50, memory_limit_mb=4096) as pool:
            pool.add("idle", idle)
            pool.add("boom", boom)
            for i in range(4):
                await pool.start_session("idle", tenant=f"t{i}")
            await (await pool.start_session("boom"))
            await asyncio.sleep(1.3)  # at least one RSS reading
            return snapshot_of(pool)

    snap = run_loop(main())
    from dataclasses import fields

    from openrtc.introspection.schema import Block, SessionRow, WorkerInfo

    assert all(list(row) == [f.name for f in fields(SessionRow)] for row in snap["sessions"])
    assert list(snap["worker"]) == [f.name for f in fields(WorkerInfo)]
    assert all(list(b) == [f.name for f in fields(Block)] for b in snap["blocks"])
    parsed = from_dict(snap)  # the schema round-trips
    assert parsed.worker.sessions_active == 4 and parsed.worker.sessions_failed == 1
    assert parsed.worker.max_sessions == 50 and parsed.worker.memory_limit_mb == 4096
    active = [r for r in parsed.sessions if r.state == "running"]
    assert len(active) == 4 and all(r.tasks == 3 for r in active)  # root + two gathered children
    assert {r.tenant for r in active} == {"t0", "t1", "t2", "t3"}
    share = parsed.worker.rss_mb / 4
    assert all(abs(r.mem_mb - share) < 0.02 and r.peak_mb >= r.mem_mb for r in active)
    (failed,) = [r for r in parsed.sessions if r.state == "failed"]
    assert failed.reason == "exception" and failed.agent == "boom" and failed.error == "RuntimeError: bug"
    assert all(r.error is None for r in active)
    info = parsed.worker.introspection
    # threshold 50 ms: at least 20 looks a second, a few more timed to steps about to cross it
    # Generous bounds: the figures exist and are of the right order even on a loaded machine (the
    # rates on a quiet one are in benchmarks/RESULTS.md).
    assert info.enabled and info.sample_hz_target == 20 and 10 < info.sample_hz_achieved <= 60
    assert parsed.worker.loop_lag_ms.max < 250


def test_garbage_collection_is_not_blamed_on_the_session_it_fell_in(run_loop: Any, sock_home: Path) -> None:
    import gc

    async def collector(session: Session) -> None:
        await asyncio.sleep(0.02)
        gc.collect()  # with the heap below, a full collection takes longer than the threshold

    async def main() -> dict[str, Any]:
        heap = [[[i] for i in range(100)] for _ in range(20_000)]  # many tracked containers
        try:
            async with AgentPool(drain_timeout_s=0.2, slow_session_threshold_ms=5) as pool:
                pool.add("collector", collector)
                await (await pool.start_session("collector"))
                return snapshot_of(pool)
        finally:
            del heap

    snap = run_loop(main())
    kinds = [b["kind"] for b in snap["blocks"]]
    assert "gc" in kinds and "session" not in kinds, snap["blocks"]
    assert all(row["blocks"] == 0 for row in snap["sessions"])


# -- the watchdog's own parts ------------------------------------------------------------------------


def test_runs_in_finds_the_stepped_coroutine_on_the_stack() -> None:
    from openrtc.introspection.watchdog import runs_in

    seen: list[bool] = []

    async def step() -> None:
        here = sys._getframe()
        seen.append(runs_in(here, coro))  # in the coroutine's own code
        seen.append(runs_in(here.f_back, coro))  # below it: whoever stepped it

    coro = step()
    with pytest.raises(StopIteration):
        coro.send(None)
    assert seen == [True, False]


def test_a_failure_while_recording_a_long_step_is_counted_not_raised_into_the_session() -> None:
    from openrtc.introspection.monitor import Monitor

    monitor = Monitor(50, list, lambda agent: (), lambda: 0.0)

    def broken(*_: Any) -> None:
        raise RuntimeError("bookkeeping bug")

    monitor.watchdog.note_long_step = broken  # type: ignore[method-assign]
    monitor._on_long_step(None, 0.0, 1.0)  # type: ignore[arg-type]
    assert monitor.errors == 1 and monitor.last_error == "long step: RuntimeError: bookkeeping bug"


def test_a_step_that_mostly_waited_for_a_cpu_blames_no_session() -> None:
    """An overloaded machine (or CPU throttling) pauses the loop thread mid-step: the step is long, but
    the session's own code is not. The thread's run-queue wait (Linux schedstat) tells them apart."""
    from types import SimpleNamespace

    from openrtc.introspection.monitor import Monitor

    monitor = Monitor(50, list, lambda agent: (), lambda: 0.0)
    session = SimpleNamespace(id="s1", agent="chatty")
    stats = SimpleNamespace(session=session, blocks=0, last_block=None, last_block_mono=0.0)
    step = SimpleNamespace(stats=stats, wrapped=None)
    start = time.perf_counter() - 0.25
    waits = iter([0.0 + 0.21])  # now: 210 ms more run-queue wait than at the step's start
    monitor.watchdog.cpu_waits.append((start - 0.01, 0.0))
    monitor.watchdog._cpu_wait_s = lambda: next(waits)  # type: ignore[method-assign]
    monitor._on_long_step(step, start, 0.25)  # type: ignore[arg-type]
    (block,) = monitor.blocks
    assert block.kind == "outside" and block.session_id is None and stats.blocks == 0
    assert "waited 210 ms for a CPU" in block.where

    waits = iter([0.21 + 0.01])  # a real 250 ms stall: 10 ms of waiting in it
    monitor.watchdog._cpu_wait_s = lambda: next(waits)  # type: ignore[method-assign]
    monitor.watchdog.cpu_waits.append((start - 0.001, 0.21))
    monitor._on_long_step(step, start, 0.25)  # type: ignore[arg-type]
    assert monitor.blocks[-1].kind == "session" and stats.blocks == 1


PREEMPTED = """
import asyncio, os, subprocess, sys, time
from openrtc import AgentPool
from openrtc.runtime.loops import loop_factory

os.sched_setaffinity(0, {0})  # this process and three busy ones share one core
HOG = "import os\\nos.sched_setaffinity(0, {0})\\nwhile True: pass"
hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(3)]

async def chatty(session):
    for _ in range(60):
        started = time.thread_time()
        while time.thread_time() - started < 0.002:  # 2 ms of CPU, however long it takes on the wall
            pass
        await asyncio.sleep(0)

async def main():
    async with AgentPool(slow_session_threshold_ms=10, drain_timeout_s=0) as pool:
        pool.add("chatty", chatty)
        handles = [await pool.start_session("chatty") for _ in range(3)]
        await asyncio.gather(*(h.wait() for h in handles))
        return pool.introspection.snapshot()

try:
    with asyncio.Runner(loop_factory=loop_factory("asyncio")) as runner:
        snap = runner.run(main())
finally:
    for hog in hogs:
        hog.kill()
print(sorted({b["kind"] for b in snap["blocks"]}), sum(r["blocks"] for r in snap["sessions"]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="schedstat and CPU affinity are Linux's")
def test_steps_paused_by_a_busy_cpu_are_not_blamed_on_their_sessions(tmp_path: Path, sock_home: Path) -> None:
    """A real run: the worker shares one core with three busy processes, so its 2 ms steps spend most
    of their wall time waiting for the CPU, far past a 10 ms threshold."""
    import subprocess

    script = tmp_path / "preempted.py"
    script.write_text(PREEMPTED)
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    kinds, session_blocks = out.stdout.strip().rsplit(" ", 1)
    assert session_blocks == "0", out.stdout  # without the run-queue wait: about 100 false blocks
    assert "outside" in kinds, out.stdout  # the pauses are reported, as the machine's
