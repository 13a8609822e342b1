"""The step timer itself, both implementations (C and pure Python) held to the same behaviour."""

from __future__ import annotations

import asyncio
import collections.abc
import time
import types
from collections.abc import Generator
from typing import Any

import pytest

from openrtc.introspection import timing
from openrtc.introspection.timing import StepTimer
from openrtc.introspection.windows import RING

TIMERS = [pytest.param(timing.NATIVE, id="c"), pytest.param(timing.PYTHON, id="python")]


class FakeSession:
    def __init__(self) -> None:
        self.tasks: dict[Any, Any] = {}


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


@types.coroutine
def suspend() -> Generator[None, None, None]:
    """Give the loop back once, without needing a loop (these tests step coroutines by hand)."""
    yield


async def busy_step(seconds: float) -> None:
    """One step that holds the thread for `seconds`, then gives the loop back."""
    spin(seconds)
    await suspend()


def make(timer: StepTimer | None, coro: Any, threshold_s: float = 10.0) -> tuple[Any, Any, Any, list[Any]]:
    """A wrapper around `coro`, as the task factory makes it; returns (wrapper, clock, stats, long steps)."""
    assert timer is not None, "the C step timer was not built"
    longs: list[Any] = []
    clock = timer.clock(threshold_s, lambda *args: longs.append(args))
    stats = timer.stats(FakeSession())
    if timer.filled:
        wrapper = object.__new__(timer.wrapper)
        wrapper.wrapped, wrapper.stats, wrapper.clock = coro, stats, clock
    else:
        wrapper = timer.wrapper(coro, stats, clock)
    stats.session.tasks[coro] = "task"
    return wrapper, clock, stats, longs


def test_the_c_step_timer_is_built_and_active() -> None:
    # `make test` builds the extension; without it the worker would run the slow fallback unnoticed.
    assert timing.NATIVE is not None
    assert timing.ACTIVE is timing.NATIVE


@pytest.mark.parametrize("timer", TIMERS)
def test_a_step_is_published_while_it_runs_and_charged_when_it_ends(timer: StepTimer) -> None:
    seen: dict[str, Any] = {}

    async def body() -> None:
        seen["current"], seen["started"], seen["now"] = clock.current, clock.started, time.perf_counter()
        spin(0.01)
        await suspend()

    wrapper, clock, stats, longs = make(timer, body())
    before = time.perf_counter()
    wrapper.send(None)
    after = time.perf_counter()
    assert seen["current"] is wrapper
    assert before <= seen["started"] <= seen["now"]  # the same clock as perf_counter
    assert clock.current is None
    assert 0.01 <= stats.busy_s <= after - before
    assert longs == []
    wrapper.close()


@pytest.mark.parametrize("timer", TIMERS)
def test_a_long_step_is_reported_with_its_start_and_own_time(timer: StepTimer) -> None:
    wrapper, _, stats, longs = make(timer, busy_step(0.02), threshold_s=0.01)
    before = time.perf_counter()
    wrapper.send(None)
    ((step, start, own),) = longs
    assert step is wrapper
    assert before <= start and own >= 0.02
    assert own == pytest.approx(stats.busy_s)
    wrapper.close()


@pytest.mark.parametrize("timer", TIMERS)
@pytest.mark.parametrize("value", [None, 7, (1, 2), ValueError("a value, not raised")])
def test_the_return_value_comes_out_unchanged_and_the_task_is_forgotten(timer: StepTimer, value: Any) -> None:
    async def body() -> Any:
        return value

    coro = body()
    wrapper, _, stats, _ = make(timer, coro)
    with pytest.raises(StopIteration) as stop:
        wrapper.send(None)
    assert stop.value.value is value
    assert coro not in stats.session.tasks


@pytest.mark.parametrize("timer", TIMERS)
def test_tasks_see_results_errors_and_cancellation_as_without_the_wrapper(timer: StepTimer) -> None:
    async def answer() -> tuple[int, int]:
        await asyncio.sleep(0)
        return (4, 2)

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("boom")

    async def forever() -> None:
        await asyncio.sleep(3600)

    async def main() -> None:
        coros = [answer(), fail(), forever()]
        wrappers = [make(timer, coro)[0] for coro in coros]
        tasks = [asyncio.get_running_loop().create_task(w) for w in wrappers]
        await asyncio.sleep(0.01)
        tasks[2].cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert results[0] == (4, 2)
        assert isinstance(results[1], KeyError)
        assert isinstance(results[2], asyncio.CancelledError)
        for coro, wrapper in zip(coros, wrappers, strict=True):
            assert coro not in wrapper.stats.session.tasks
            assert wrapper.clock.current is None

    asyncio.run(main())


@pytest.mark.parametrize("timer", TIMERS)
def test_throw_is_timed_and_passes_the_exception_in(timer: StepTimer) -> None:
    async def body() -> str:
        try:
            await suspend()
        except RuntimeError as exc:
            spin(0.005)
            return f"caught {exc}"
        return "not reached"

    coro = body()
    wrapper, clock, stats, _ = make(timer, coro)
    wrapper.send(None)
    busy = stats.busy_s
    with pytest.raises(StopIteration) as stop:
        wrapper.throw(RuntimeError("in"))
    assert stop.value.value == "caught in"
    assert stats.busy_s - busy >= 0.005
    assert clock.current is None and coro not in stats.session.tasks


@pytest.mark.parametrize("timer", TIMERS)
def test_a_failing_long_step_callback_comes_out_of_the_step(timer: StepTimer) -> None:
    # The monitor's callback never raises (it records its own errors); the wrappers still must not
    # swallow an exception, nor keep the step published.
    wrapper, clock, _, _ = make(timer, busy_step(0.002), threshold_s=0.001)

    def broken(*_: Any) -> None:
        raise LookupError("callback failed")

    clock.on_long_step = broken
    with pytest.raises(LookupError):
        wrapper.send(None)
    assert clock.current is None
    wrapper.close()


@pytest.mark.parametrize("timer", TIMERS)
def test_the_wrapper_reads_like_its_coroutine(timer: StepTimer) -> None:
    async def handle_call() -> None:
        await suspend()

    coro = handle_call()
    wrapper, _, _, _ = make(timer, coro)
    assert asyncio.iscoroutine(wrapper)
    assert wrapper.__name__ == "handle_call"
    assert wrapper.cr_code is coro.cr_code and wrapper.cr_frame is coro.cr_frame
    assert wrapper.cr_running is False and wrapper.cr_await is None
    assert wrapper.__await__() is wrapper
    wrapper.close()
    assert coro.cr_frame is None  # closed for real


@pytest.mark.parametrize("timer", TIMERS)
def test_the_wrapper_of_an_awaitable_without_coroutine_attributes_reads_as_empty(timer: StepTimer) -> None:
    class Bare(collections.abc.Coroutine):  # type: ignore[type-arg]
        def send(self, value: Any) -> Any:
            raise StopIteration(value)

        def throw(self, *args: Any) -> Any:
            raise args[0]

        def __await__(self) -> Any:
            return self

    wrapper, _, _, _ = make(timer, Bare())
    assert wrapper.cr_frame is None and wrapper.cr_code is None and wrapper.cr_await is None
    assert wrapper.cr_running is False
    assert wrapper.__name__ == "Bare"


def test_the_c_wrapper_takes_only_the_c_clock_and_stats() -> None:
    native = timing.NATIVE
    assert native is not None

    async def body() -> None:
        pass

    coro = body()
    with pytest.raises(TypeError):
        native.wrapper(coro, timing.PYTHON.stats(FakeSession()), native.clock(1.0, print))
    with pytest.raises(TypeError):
        native.wrapper(coro, native.stats(FakeSession()), timing.PYTHON.clock(1.0, print))
    coro.close()


@pytest.mark.parametrize("timer", TIMERS)
def test_the_cpu_ring_and_busy_since_read_alike(timer: StepTimer) -> None:
    stats = timer.stats(FakeSession())
    stats.busy_s = 2.5
    assert stats.cpu_ring is None and stats.busy_since(3) == 2.5  # no tick yet: all of it
    stats.cpu_ring = [0.5 * k for k in range(11)]
    assert stats.cpu_ring == [0.5 * k for k in range(11)]
    assert stats.busy_since(3) == 1.0 and stats.busy_since(0) == 2.5
    stats.cpu_ring = None
    assert stats.busy_since(5) == 2.5


def test_the_c_ring_refuses_what_it_cannot_hold() -> None:
    native = timing.NATIVE
    assert native is not None
    stats = native.stats(FakeSession())
    stats.cpu_ring = [0.0] * RING  # the windows' ring fits
    with pytest.raises(ValueError, match="1 to"):
        stats.cpu_ring = [0.0] * (RING + 1)
    with pytest.raises(TypeError):
        stats.cpu_ring = ["a"]
    stats.cpu_ring = [1.0, 2.0]
    with pytest.raises(IndexError):
        stats.busy_since(2)
