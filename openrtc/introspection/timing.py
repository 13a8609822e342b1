"""Exact per-step timing: each session task's coroutine is wrapped so every step is timed.

A step is one `send`/`throw` into the coroutine: the stretch during which the task's code holds the
loop thread. Its wall time is charged to the task's session, so a blocking call made on the loop counts
in full (others waited meanwhile). The step in progress is published on the `StepClock`, which is what
lets the watchdog name the session that holds the loop while it still holds it.

Why wrap rather than sample: a thread sampling `current_task` only gets the GIL when the loop gives it
up, so it mostly lands while the loop sleeps (errors up to 60 points were measured); the wrapper costs
about half a microsecond per step and is exact.
"""

from __future__ import annotations

import collections.abc
from collections.abc import Callable, Coroutine, Generator
from time import perf_counter_ns
from typing import Any

# A published step: [stats, segment_start_ns, own_ns_before_segment, step_start_ns, seq].
# A list, so an eager child task stepping inside this step can pause and resume its clock.
Frame = list[Any]


class SessionStats:
    """Counters of one session, written on the loop thread, read by the introspection threads."""

    __slots__ = ("blocks", "busy_ns", "cpu_ring", "last_block", "last_block_mono", "session", "steps")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.busy_ns = 0
        """Nanoseconds its steps held the loop thread since it started."""
        self.steps = 0
        self.blocks = 0
        self.last_block: Any = None
        """The latest `Block` of this session."""
        self.last_block_mono = 0.0
        self.cpu_ring: list[int] | None = None
        """`busy_ns` at each of the last ticks (owned by the monitor thread)."""


class StepClock:
    """The loop's step in progress and global step counters. One per event loop."""

    __slots__ = ("current", "max_step_ns", "on_long_step", "seq", "threshold_ns")

    def __init__(
        self, threshold_ns: int, on_long_step: Callable[[SessionStats, int, int, int, Any], None]
    ) -> None:
        self.current: Frame | None = None
        """The innermost step running now, or None between steps."""
        self.seq = 0
        """Steps started so far."""
        self.max_step_ns = 0
        """Longest step since the heartbeat last reset it."""
        self.threshold_ns = threshold_ns
        self.on_long_step = on_long_step
        """Called on the loop thread as (stats, seq, start_ns, own_ns, coro) after an over-long step."""


class TimedCoroutine(collections.abc.Coroutine):  # type: ignore[type-arg]
    """Wraps a session task's coroutine; the task drives it exactly like the original."""

    __slots__ = ("_clock", "_coro", "_stats")

    def __init__(
        self, coro: Coroutine[Any, Any, Any] | Generator[Any, Any, Any], stats: SessionStats, clock: StepClock
    ) -> None:
        self._coro = coro
        self._stats = stats
        self._clock = clock

    def send(self, value: Any = None) -> Any:
        clock = self._clock
        outer = clock.current
        start = perf_counter_ns()
        if outer is not None:  # an eager task stepping inside another step: pause the outer one
            outer[2] += start - outer[1]
        seq = clock.seq = clock.seq + 1
        frame: Frame = [self._stats, start, 0, start, seq]
        clock.current = frame
        try:
            return self._coro.send(value)
        finally:
            end = perf_counter_ns()
            own = frame[2] + end - frame[1]
            clock.current = outer
            if outer is not None:
                outer[1] = end
            stats = self._stats
            stats.busy_ns += own
            stats.steps += 1
            clock.max_step_ns = max(clock.max_step_ns, own)
            if own > clock.threshold_ns:
                clock.on_long_step(stats, seq, start, own, self._coro)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        clock = self._clock
        outer = clock.current
        start = perf_counter_ns()
        if outer is not None:
            outer[2] += start - outer[1]
        seq = clock.seq = clock.seq + 1
        frame: Frame = [self._stats, start, 0, start, seq]
        clock.current = frame
        try:
            if val is None and tb is None:
                return self._coro.throw(typ)
            return self._coro.throw(typ, val, tb)
        finally:
            end = perf_counter_ns()
            own = frame[2] + end - frame[1]
            clock.current = outer
            if outer is not None:
                outer[1] = end
            stats = self._stats
            stats.busy_ns += own
            stats.steps += 1
            clock.max_step_ns = max(clock.max_step_ns, own)
            if own > clock.threshold_ns:
                clock.on_long_step(stats, seq, start, own, self._coro)

    # CPython's tasks step a non-native coroutine with next() when sending None: same code, no extra call.
    __next__ = send

    def __iter__(self) -> TimedCoroutine:
        return self

    def __await__(self) -> TimedCoroutine:
        return self

    def close(self) -> None:
        self._coro.close()

    # What debuggers, reprs and asyncio's own task introspection read from a coroutine.
    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None) or getattr(self._coro, "gi_frame", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None) or getattr(self._coro, "gi_code", None)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names this class lacks (`__qualname__`, `__name__`...): asyncio's task repr
        # then shows the wrapped coroutine's name.
        return getattr(self._coro, name)

    @property
    def wrapped(self) -> Any:
        """The original coroutine."""
        return self._coro
