"""Exact per-step timing: each session task's coroutine is wrapped so every step is timed.

A step is one `send`/`throw` into the coroutine: the stretch during which the task's code holds the
loop thread. Its wall time is charged to the task's session, so a blocking call made on the loop counts
in full (others waited meanwhile). The step in progress is published on the `StepClock`, which is what
lets the watchdog name the session that holds the loop while it still holds it.

Why wrap rather than sample: a thread sampling `current_task` only gets the GIL when the loop gives it
up, so it mostly lands while the loop sleeps (errors up to 60 points were measured); the wrapper costs
a fraction of a microsecond per step and is exact. It runs on every step of every session task, so it
does as little as it can: two clock reads, a handful of attribute updates, no objects but the clock's
integers. When the coroutine ends (an exception out of `send`/`throw`, `StopIteration` included), the
wrapper takes its task out of the session's `tasks`, which therefore holds only live tasks.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any


class SessionStats:
    """Counters of one session, written on the loop thread, read by the introspection threads."""

    __slots__ = ("blocks", "busy_ns", "cpu_ring", "last_block", "last_block_mono", "session")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.busy_ns = 0
        """Nanoseconds its steps held the loop thread since it started."""
        self.blocks = 0
        self.last_block: Any = None
        """The latest `LastBlock` of this session."""
        self.last_block_mono = 0.0
        self.cpu_ring: list[int] | None = None
        """`busy_ns` at each of the last ticks (owned by the monitor thread)."""


class StepClock:
    """The step in progress on one event loop, and the total time of all steps."""

    __slots__ = ("current", "long_steps", "on_long_step", "started_ns", "threshold_ns", "total_ns")

    def __init__(self, threshold_ns: int, on_long_step: Callable[[TimedCoroutine, int, int], None]) -> None:
        self.current: TimedCoroutine | None = None
        """The innermost step running now (its wrapper), or None between steps."""
        self.started_ns = 0
        """When the current step (or, between steps, the last one) began."""
        self.total_ns = 0
        """Own time of every nested-aware step so far: lets a step subtract the steps nested in it."""
        self.long_steps = 0
        """Steps longer than the threshold so far."""
        self.threshold_ns = threshold_ns
        self.on_long_step = on_long_step
        """Called on the loop thread as (wrapper, start_ns, own_ns) after a step over the threshold."""


class TimedCoroutine(tuple, collections.abc.Coroutine):  # type: ignore[type-arg]
    """Wraps a session task's coroutine; the task drives it exactly like the original.

    A tuple `(coroutine, stats, clock)`: it is built in C with no Python `__init__`, and one unpacking
    reads all three, cheaper than three attribute look-ups, on a path taken by every step of every
    session task. This is the lean variant, for loops whose steps never nest (no eager task factory).
    """

    __slots__ = ()

    # Built as `TimedCoroutine((coro, stats, clock))`: tuple's own constructor, no Python call.

    @property
    def stats(self) -> SessionStats:
        return self[1]  # type: ignore[no-any-return]

    def send(self, value: Any = None, _now: Callable[[], int] = perf_counter_ns) -> Any:
        coro, stats, clock = self
        clock.current = self
        start = clock.started_ns = _now()
        try:
            return coro.send(value)
        except BaseException:  # the coroutine has ended (StopIteration is its return)
            stats.session.tasks.pop(coro, None)
            raise
        finally:
            own = _now() - start
            clock.current = None
            stats.busy_ns += own
            if own > clock.threshold_ns:
                clock.on_long_step(self, start, own)

    # CPython's tasks step a non-native coroutine with next() when sending None: same code, no extra call.
    __next__ = send

    # The same body as `send`, on purpose: a shared helper would add a Python call to every step.
    def throw(
        self, typ: Any, val: Any = None, tb: Any = None, _now: Callable[[], int] = perf_counter_ns
    ) -> Any:
        coro, stats, clock = self
        clock.current = self
        start = clock.started_ns = _now()
        try:
            if val is None and tb is None:
                return coro.throw(typ)
            return coro.throw(typ, val, tb)
        except BaseException:
            stats.session.tasks.pop(coro, None)
            raise
        finally:
            own = _now() - start
            clock.current = None
            stats.busy_ns += own
            if own > clock.threshold_ns:
                clock.on_long_step(self, start, own)

    def __await__(self) -> TimedCoroutine:  # type: ignore[override]
        return self

    def close(self) -> None:
        coro, stats, _ = self
        stats.session.tasks.pop(coro, None)
        coro.close()

    # What debuggers, reprs and asyncio's own task introspection read from a coroutine.
    @property
    def cr_frame(self) -> Any:
        return getattr(self[0], "cr_frame", None) or getattr(self[0], "gi_frame", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self[0], "cr_running", False))

    @property
    def cr_await(self) -> Any:
        return getattr(self[0], "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self[0], "cr_code", None) or getattr(self[0], "gi_code", None)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks (`__qualname__`, `__name__`...): asyncio's task repr
        # then shows the wrapped coroutine's name.
        return getattr(self[0], name)

    @property
    def wrapped(self) -> Any:
        """The original coroutine."""
        return self[0]


class NestedTimedCoroutine(TimedCoroutine):
    """The variant for loops where a step can run inside another (an eager task's first step runs
    inside the step that created it): the inner step's time is taken out of the outer one."""

    __slots__ = ()

    def send(self, value: Any = None, _now: Callable[[], int] = perf_counter_ns) -> Any:
        coro, stats, clock = self
        outer, outer_start = clock.current, clock.started_ns
        clock.current = self
        mark = clock.total_ns
        start = clock.started_ns = _now()
        try:
            return coro.send(value)
        except BaseException:  # the coroutine has ended (StopIteration is its return)
            stats.session.tasks.pop(coro, None)
            raise
        finally:
            # Steps nested in this one added their own time to total_ns.
            own = _now() - start - (clock.total_ns - mark)
            clock.current, clock.started_ns = outer, outer_start
            clock.total_ns += own
            stats.busy_ns += own
            if own > clock.threshold_ns:
                clock.on_long_step(self, start, own)

    __next__ = send

    def throw(
        self, typ: Any, val: Any = None, tb: Any = None, _now: Callable[[], int] = perf_counter_ns
    ) -> Any:
        coro, stats, clock = self
        outer, outer_start = clock.current, clock.started_ns
        clock.current = self
        mark = clock.total_ns
        start = clock.started_ns = _now()
        try:
            if val is None and tb is None:
                return coro.throw(typ)
            return coro.throw(typ, val, tb)
        except BaseException:
            stats.session.tasks.pop(coro, None)
            raise
        finally:
            own = _now() - start - (clock.total_ns - mark)
            clock.current, clock.started_ns = outer, outer_start
            clock.total_ns += own
            stats.busy_ns += own
            if own > clock.threshold_ns:
                clock.on_long_step(self, start, own)
