"""CPU profiles measured against what the agents did, on real loops, through the worker's socket."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, Session
from openrtc.errors import RemoteError
from openrtc.introspection.client import WorkerClient
from openrtc.profile.stacks import Profile, from_wire

HERE = Path(__file__).resolve()


def line_of(marker: str) -> int:
    for number, text in enumerate(HERE.read_text().splitlines(), start=1):
        if text.rstrip().endswith(f"# {marker}"):
            return number
    raise AssertionError(marker)


def spin(ms: float) -> None:
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


def quarter() -> None:
    spin(0.5)


def three_quarters() -> None:
    spin(1.5)


def function_share(profile: Profile, session_frame: str, function: str) -> float:
    """The share of a session's samples whose stack passes through `function` of this file."""
    mine = {s: w for s, w in profile.stacks.items() if session_frame in s}
    total = sum(mine.values())
    hit = sum(w for s, w in mine.items() if any(f".{function} (" in f for f in s))
    return hit / total


async def record(pool: AgentPool, **request: Any) -> Profile:
    path = pool.socket_path
    assert path is not None

    def ask() -> Profile:
        with WorkerClient(path, timeout=request.get("seconds", 10) + 20) as client:
            return from_wire(client.request("profile", **request)["profile"])

    return await asyncio.to_thread(ask)


def test_a_functions_share_of_cpu_is_its_share_of_samples(run_loop: Any, sock_home: Path) -> None:
    """An agent spends 25% / 75% of its CPU in two functions: the profile says so within 3 points.
    Its steps never yield to an idle loop, so nearly every sample is its own: about 6,000 at 1 kHz. Each
    sample lands in a function with its share as the chance: the error's standard deviation is 0.6
    points at 5,000 samples, 1.1 at 1,500 (the least this test accepts): 3 points is 2.7 of them."""

    async def agent(session: Session) -> None:
        while True:
            quarter()
            three_quarters()
            await asyncio.sleep(0)

    async def main() -> Profile:
        pool = AgentPool(drain_timeout_s=1)
        pool.add("duty", agent)
        async with pool:
            handle = await pool.start_session("duty")
            try:
                return await record(pool, seconds=6, hz=1000)
            finally:
                handle.cancel()

    profile = run_loop(main())
    assert profile.meta["samples"] > 1500, profile.meta
    frame = next(f for s in profile.stacks for f in s if f.startswith("session:"))
    share = function_share(profile, frame, "quarter")
    assert abs(share - 0.25) <= 0.03, (share, profile.meta)
    assert abs(function_share(profile, frame, "three_quarters") - 0.75) <= 0.03


def test_two_sessions_loading_the_loop_1_to_3_get_that_share(run_loop: Any, sock_home: Path) -> None:
    async def light(session: Session) -> None:
        while True:
            spin(0.5)
            await asyncio.sleep(0)

    async def heavy(session: Session) -> None:
        while True:
            spin(1.5)
            await asyncio.sleep(0)

    async def main() -> tuple[Profile, str, str]:
        pool = AgentPool(drain_timeout_s=1)
        pool.add("light", light)
        pool.add("heavy", heavy)
        async with pool:
            a = await pool.start_session("light")
            b = await pool.start_session("heavy")
            profile = await record(pool, seconds=6, hz=1000)
            a.cancel()
            b.cancel()
            return profile, a.id, b.id

    profile, light_id, heavy_id = run_loop(main())
    assert profile.meta["samples"] > 1500, profile.meta
    light_w = sum(w for s, w in profile.stacks.items() if f"session:{light_id}" in s)
    heavy_w = sum(w for s, w in profile.stacks.items() if f"session:{heavy_id}" in s)
    share = light_w / (light_w + heavy_w)
    assert abs(share - 0.25) <= 0.03, (share, profile.meta)
    assert ("worker", "agent:light", f"session:{light_id}") == next(
        s[:3] for s in profile.stacks if f"session:{light_id}" in s
    )


def test_a_stalled_sessions_samples_land_on_the_stalling_line(run_loop: Any, sock_home: Path) -> None:
    async def stuck(session: Session) -> None:
        while True:
            time.sleep(0.3)  # stall-line
            await asyncio.sleep(0.01)

    async def main() -> tuple[Profile, str]:
        pool = AgentPool(slow_session_threshold_ms=1000, drain_timeout_s=1)
        pool.add("stuck", stuck)
        async with pool:
            handle = await pool.start_session("stuck")
            profile = await record(pool, seconds=2, hz=100, session_id=handle.id)
            handle.cancel()
            return profile, handle.id

    profile, session_id = run_loop(main())
    total = profile.total
    line = f"test_sampler.py:{line_of('stall-line')})"
    on_line = sum(w for s, w in profile.stacks.items() if s[-1].endswith(line))
    assert total > 100, profile.meta
    assert on_line / total >= 0.9, profile.stacks
    assert all(s[2] == f"session:{session_id}" for s in profile.stacks)
    assert profile.meta["deadlines_elsewhere"] > 0  # the loop's idle moments, left out by the filter


def test_a_gil_holding_call_weighs_the_deadlines_it_held(run_loop: Any, sock_home: Path) -> None:
    """A step that holds the GIL in C (here `sum` over a big range) delays the handler until it returns;
    the deadlines it missed count for it, so its weight is its time, not one sample."""

    async def cruncher(session: Session) -> None:
        while True:
            sum(range(20_000_000))  # crunch-line
            await asyncio.sleep(0.2)

    async def main() -> Profile:
        pool = AgentPool(slow_session_threshold_ms=1000, drain_timeout_s=1)
        pool.add("cruncher", cruncher)
        async with pool:
            handle = await pool.start_session("cruncher")
            profile = await record(pool, seconds=3, hz=100)
            handle.cancel()
            return profile

    profile = run_loop(main())
    on_line = sum(w for s, w in profile.stacks.items() if s[-1].endswith(f":{line_of('crunch-line')})"))
    samples_on_line = sum(1 for s in profile.stacks if s[-1].endswith(f":{line_of('crunch-line')})"))
    assert samples_on_line >= 1
    # About half of the 3 s went to the crunching: well over the one sample per crunch a naive sampler takes.
    assert on_line >= 50, (on_line, profile.meta)
    assert profile.meta["lateness_ms_max"] > 50


def test_nothing_runs_until_a_profile_is_asked_and_nothing_stays(run_loop: Any, sock_home: Path) -> None:
    async def idle(session: Session) -> None:
        await asyncio.sleep(30)

    async def main() -> tuple[set[str], set[str], set[str], Any, Any]:
        before = {t.name for t in threading.enumerate()}
        pool = AgentPool(drain_timeout_s=1)
        pool.add("idle", idle)
        async with pool:
            await pool.start_session("idle")
            quiet = {t.name for t in threading.enumerate()} - before
            assert signal.getsignal(signal.SIGALRM) is signal.SIG_DFL
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
            await record(pool, seconds=0.3, hz=100)
            await asyncio.sleep(0.2)
            deadline = time.monotonic() + 10
            waiting = lambda: any(t.name == "openrtc-profile" for t in threading.enumerate())  # noqa: E731
            while waiting() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            # The loop's executor threads (`to_thread`, the test's own) are not the worker's.
            after = {t.name for t in threading.enumerate() if t.name.startswith("openrtc")} - before
            timer = signal.getitimer(signal.ITIMER_REAL)
            return before, quiet, after, signal.getsignal(signal.SIGALRM), timer

    _, quiet, after, handler, timer = run_loop(main())
    assert quiet == {"openrtc-server", "openrtc-watchdog"}, quiet
    assert after == quiet
    assert handler is signal.SIG_DFL
    assert timer == (0.0, 0.0)


def test_bad_requests_are_refused_with_the_reason(run_loop: Any, sock_home: Path) -> None:
    async def idle(session: Session) -> None:
        await asyncio.sleep(30)

    async def main() -> list[RemoteError]:
        pool = AgentPool(drain_timeout_s=1)
        pool.add("idle", idle)
        async with pool:
            path = pool.socket_path
            assert path is not None
            bad: list[dict[str, Any]] = [
                {"seconds": 0},
                {"hz": 5000},
                {"session_id": "nope"},
                {"agent": "nope"},
                {"seconds": "ten"},
            ]

            def ask() -> list[RemoteError]:
                errors = []
                with WorkerClient(path, timeout=10) as client:
                    for request in bad:
                        with pytest.raises(RemoteError) as caught:
                            client.request("profile", **request)
                        errors.append(caught.value)
                return errors

            return await asyncio.to_thread(ask)

    errors = run_loop(main())
    assert [e.code for e in errors] == ["bad_request"] * 5
    assert "no active session 'nope'" in str(errors[2])
    assert "unknown agent 'nope'" in str(errors[3])


def test_a_second_profile_while_one_records_is_told_to_wait(run_loop: Any, sock_home: Path) -> None:
    async def idle(session: Session) -> None:
        await asyncio.sleep(30)

    async def main() -> RemoteError:
        pool = AgentPool(drain_timeout_s=1)
        pool.add("idle", idle)
        async with pool:
            first = asyncio.ensure_future(record(pool, seconds=2, hz=50))
            await asyncio.sleep(0.5)
            path = pool.socket_path
            assert path is not None

            def ask() -> RemoteError:
                with WorkerClient(path, timeout=10) as client, pytest.raises(RemoteError) as caught:
                    client.request("profile", seconds=1)
                return caught.value

            second = await asyncio.to_thread(ask)
            assert (await first).meta["samples"] > 0
            return second

    assert run_loop(main()).code == "busy"
