"""Exact per-step timing: each session task's coroutine is wrapped so every step is timed.

A step is one `send`/`throw` into the coroutine: the stretch during which the task's code holds the
loop thread. Its wall time is charged to the task's session, so a blocking call made on the loop counts
in full (others waited meanwhile). The step in progress is published on the `StepClock`, which is what
lets the watchdog name the session that holds the loop while it still holds it.

Why wrap rather than sample: a thread sampling `current_task` only gets the GIL when the loop gives it
up, so it mostly lands while the loop sleeps (errors up to 60 points were measured); timing each step is
exact. When the coroutine ends (an exception out of `send`/`throw`, `StopIteration` included), the
wrapper takes its task out of the session's `tasks`, which therefore holds only live tasks.

Two implementations of the same objects: the C extension `_steps` (built at install when a compiler is
there; a task steps it like a native coroutine, with no Python frame and nothing allocated per step)
and the pure-Python classes below, the reference and the fallback. `ACTIVE` is the one the worker uses;
`OPENRTC_PURE_PYTHON=1` forces the Python one. Steps that can nest (an eager task factory underneath)
always use `NestedTimedCoroutine`, in Python, with either clock.
"""

from __future__ import annotations

import collections.abc
import os
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from typing import TYPE_CHECKING, Any

try:
    from openrtc.introspection import _steps
except ImportError:  # built without a C compiler
    _steps = None  # type: ignore[assignment]


class PySessionStats:
    """Counters of one session, written on the loop thread, read by the introspection threads."""

    __slots__ = ("blocks", "busy_s", "cpu_ring", "last_block", "last_block_mono", "session")

    def __init__(self, session: Any) -> None:
        self.session = session
        self.busy_s = 0.0
        """Seconds its steps held the loop thread since it started."""
        self.blocks = 0
        self.last_block: Any = None
        """The latest `LastBlock` of this session."""
        self.last_block_mono = 0.0
        self.cpu_ring: list[float] | None = None
        """`busy_s` at each of the last ticks (owned by the monitor thread)."""

    def busy_since(self, tick: int) -> float:
        """Seconds its steps held the loop since ring slot `tick` was written (all of them before the
        first tick)."""
        ring = self.cpu_ring
        return self.busy_s - (ring[tick] if ring is not None else 0.0)


class PyStepClock:
    """The step in progress on one event loop, and the total time of all steps.

    Times are `time.perf_counter()` seconds.
    """

    __slots__ = ("current", "long_steps", "on_long_step", "started", "threshold_s", "total_s")

    def __init__(
        self, threshold_s: float, on_long_step: Callable[[TimedCoroutine, float, float], None]
    ) -> None:
        self.current: TimedCoroutine | None = None
        """The innermost step running now (its wrapper), or None between steps."""
        self.started = 0.0
        """When the current step (or, between steps, the last one) began."""
        self.total_s = 0.0
        """Own time of every nested-aware step so far: lets a step subtract the steps nested in it."""
        self.long_steps = 0
        """Steps longer than the threshold so far."""
        self.threshold_s = threshold_s
        self.on_long_step = on_long_step
        """Called on the loop thread as (wrapper, start, own seconds) after a step over the threshold."""


class _CoroutineFacade:
    """What debuggers, reprs and asyncio's own task introspection read from a coroutine, passed on
    from the wrapped one (the C wrapper has the same getters in C)."""

    __slots__ = ()

    wrapped: Any

    @property
    def cr_frame(self) -> Any:
        return getattr(self.wrapped, "cr_frame", None) or getattr(self.wrapped, "gi_frame", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self.wrapped, "cr_running", False))

    @property
    def cr_await(self) -> Any:
        return getattr(self.wrapped, "cr_await", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self.wrapped, "cr_code", None) or getattr(self.wrapped, "gi_code", None)

    @property
    def __name__(self) -> str:
        # What asyncio's task repr names the coroutine by. Not a `__getattr__` passing every missing
        # name on: any `__getattr__` turns off the interpreter's fast slot reads that `send` relies on.
        return str(getattr(self.wrapped, "__name__", type(self.wrapped).__name__))


class PyTimedCoroutine(_CoroutineFacade, collections.abc.Coroutine):  # type: ignore[type-arg]
    """Wraps a session task's coroutine; the task drives it exactly like the original.

    This is the lean variant, for loops whose steps never nest (no eager task factory). It runs on
    every step of every session task, so it is shaped for the interpreter's fast paths: slots (read by
    a specialised instruction; a tuple subclass, tried before, is unpacked through an iterator), and
    no `__init__` (the task factory fills the slots: a Python `__init__` is a call per task). In
    `send` the bookkeeping is written twice, after the step and in the one exception handler: a
    `finally` or a shared helper costs a second handler or a call on every task's last step. Clock
    readings are float seconds: floats come from a free list, `perf_counter_ns` integers are allocated.
    """

    __slots__ = ("clock", "stats", "wrapped")

    wrapped: Any
    """The original coroutine."""
    stats: SessionStats
    clock: StepClock

    def send(self, value: Any = None, _now: Callable[[], float] = perf_counter) -> Any:
        clock = self.clock
        start = clock.started = _now()
        clock.current = self  # after `started`: another thread never sees this step with the last one's start
        try:
            result = self.wrapped.send(value)
        except BaseException:  # the coroutine has ended (StopIteration is its return)
            own = _now() - start
            clock.current = None
            stats = self.stats
            stats.busy_s += own
            stats.session.tasks.pop(self.wrapped, None)
            if own > clock.threshold_s:
                clock.on_long_step(self, start, own)
            raise
        own = _now() - start
        clock.current = None
        self.stats.busy_s += own
        if own > clock.threshold_s:
            clock.on_long_step(self, start, own)
        return result

    # CPython's tasks step a non-native coroutine with next() when sending None: same code, no extra call.
    __next__ = send

    def throw(
        self, typ: Any, val: Any = None, tb: Any = None, _now: Callable[[], float] = perf_counter
    ) -> Any:
        # Far rarer than `send` (a cancellation, an error thrown in): its bookkeeping may cost a call.
        clock = self.clock
        start = clock.started = _now()
        clock.current = self
        coro = self.wrapped
        try:
            result = coro.throw(typ) if val is None and tb is None else coro.throw(typ, val, tb)
        except BaseException:
            self._step_done(start, _now())
            self.stats.session.tasks.pop(coro, None)
            raise
        self._step_done(start, _now())
        return result

    def _step_done(self, start: float, end: float) -> None:
        """`send`'s bookkeeping after a step, for the rare paths."""
        own = end - start
        clock = self.clock
        clock.current = None
        self.stats.busy_s += own
        if own > clock.threshold_s:
            clock.on_long_step(self, start, own)

    def __await__(self) -> TimedCoroutine:  # type: ignore[override]
        return self

    def close(self) -> None:
        self.stats.session.tasks.pop(self.wrapped, None)
        self.wrapped.close()


class NestedTimedCoroutine(PyTimedCoroutine):
    """The variant for loops where a step can run inside another (an eager task's first step runs
    inside the step that created it): the inner step's time is taken out of the outer one."""

    __slots__ = ()

    def send(self, value: Any = None, _now: Callable[[], float] = perf_counter) -> Any:
        coro, stats, clock = self.wrapped, self.stats, self.clock
        outer, outer_start = clock.current, clock.started
        mark = clock.total_s
        start = clock.started = _now()
        clock.current = self
        try:
            result = coro.send(value)
        except BaseException:  # the coroutine has ended (StopIteration is its return)
            stats.session.tasks.pop(coro, None)
            self._account(outer, outer_start, mark, start, _now())
            raise
        self._account(outer, outer_start, mark, start, _now())
        return result

    __next__ = send

    def throw(
        self, typ: Any, val: Any = None, tb: Any = None, _now: Callable[[], float] = perf_counter
    ) -> Any:
        coro, stats, clock = self.wrapped, self.stats, self.clock
        outer, outer_start = clock.current, clock.started
        mark = clock.total_s
        start = clock.started = _now()
        clock.current = self
        try:
            result = coro.throw(typ) if val is None and tb is None else coro.throw(typ, val, tb)
        except BaseException:
            stats.session.tasks.pop(coro, None)
            self._account(outer, outer_start, mark, start, _now())
            raise
        self._account(outer, outer_start, mark, start, _now())
        return result

    def _account(
        self, outer: TimedCoroutine | None, outer_start: float, mark: float, start: float, end: float
    ) -> None:
        # A helper here, unlike the lean variant: eager task factories are the rare case.
        stats, clock = self.stats, self.clock
        # Steps nested in this one added their own time to total_s.
        own = end - start - (clock.total_s - mark)
        clock.current, clock.started = outer, outer_start
        clock.total_s += own
        stats.busy_s += own
        if own > clock.threshold_s:
            clock.on_long_step(self, start, own)


@dataclass(frozen=True)
class StepTimer:
    """One implementation of the step timer: a clock, per-session stats and the lean wrapper that go
    together (the C wrapper accepts only the C clock and stats)."""

    name: str
    """"c" or "python"."""
    clock: type[Any]
    stats: type[Any]
    wrapper: type[Any]
    filled: bool
    """True when the task factory makes a wrapper with `object.__new__` and fills its slots (the Python
    one: a Python `__init__` would be a call per task); else it calls `wrapper(coro, stats, clock)`."""


PYTHON = StepTimer("python", PyStepClock, PySessionStats, PyTimedCoroutine, filled=True)
"""The pure-Python step timer."""


if _steps is not None:
    # A `Coroutine` by registration, so asyncio accepts it; the facade is in C. Not a Python subclass:
    # that put every wrapper's allocation and release on the heap-type paths (measured in RESULTS).
    collections.abc.Coroutine.register(_steps.TimedCoroutine)


NATIVE = (
    None
    if _steps is None
    else StepTimer("c", _steps.StepClock, _steps.SessionStats, _steps.TimedCoroutine, filled=False)
)
"""The C step timer, or None when the extension was not built."""
NATIVE_FACTORY: Any = None if _steps is None else _steps.TaskFactory
"""The tagging task factory's common call in C (see tagging.py), or None."""
ACTIVE = PYTHON if NATIVE is None or os.environ.get("OPENRTC_PURE_PYTHON") == "1" else NATIVE
"""The step timer the worker uses."""
NATIVE_PASSES: Any = _steps if ACTIVE is NATIVE else None
"""The extension's passes over every session (`scan`, `smallest`: snapshot.py; `tick`: windows.py)
while the C step timer is the one in use, else None; each has its Python twin there."""

if TYPE_CHECKING:
    StepClock = PyStepClock
    SessionStats = PySessionStats
    TimedCoroutine = PyTimedCoroutine
else:
    StepClock, SessionStats, TimedCoroutine = ACTIVE.clock, ACTIVE.stats, ACTIVE.wrapper


def timer_of(clock: PyStepClock) -> StepTimer:
    """The implementation `clock` belongs to."""
    return NATIVE if NATIVE is not None and isinstance(clock, NATIVE.clock) else PYTHON
