"""The CPU sampler: the loop thread's stack, sampled on a deadline schedule, each sample stamped with
the session whose step holds the loop (read from the step clock at that instant: measured, not guessed).

Why a signal and not a thread: a sampling thread only gets the GIL when the loop thread gives it up,
and the loop gives it up at each `select`, between steps, so a thread's samples pile up between steps
(the watchdog's module says the same of `current_task` sampling: errors up to 60 points). A one-shot
`ITIMER_REAL` timer instead interrupts the loop thread itself (it must be the main thread, where
Python runs signal handlers): the handler runs at the next bytecode boundary of the interrupted code,
with that code's frame, whatever the GIL was doing. A sleep or a `select` is interrupted at once (and
resumed: PEP 475); a C call that holds the GIL delays the handler until it returns, still in the
caller's frame, and the deadlines it missed are counted for that frame: a 400 ms regex weighs 40
samples at 100 Hz, not one.

Deadlines come every `1/hz` seconds on average, each drawn between half and one and a half periods
(jitter: a periodic load must not beat with the sampler). A deadline that fell inside a garbage
collection is counted as `gc`; one that fell while the loop thread waited for a CPU (runnable, not
running: Linux's schedstat says how long) as `cpu-wait`: on an overloaded machine, that time is
nobody's code, and counted for the interrupted frame it would skew the shares. Each sample's lateness
(how long after its deadline the handler ran) is kept, and the achieved rate reported.

Nothing here runs unless a profile is recording: no thread, no timer, no handler installed.
"""

from __future__ import annotations

import asyncio
import collections
import os
import random
import selectors
import signal
import sys
import threading
from collections.abc import Callable
from time import perf_counter, time
from types import CodeType, FrameType
from typing import Any

from openrtc.introspection.frames import display_path
from openrtc.profile.stacks import Profile, ProfileError, Stack, add
from openrtc.runtime.discovery import AGENT_MODULES

MAX_DEPTH = 128
"""Innermost frames kept per sample."""
MAX_HZ = 1000.0
MAX_SECONDS = 600.0
_ASYNCIO = os.path.dirname(os.path.abspath(asyncio.__file__)) + os.sep
_SELECTORS = os.path.abspath(selectors.__file__)
_RUNTIME = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "runtime") + os.sep
_HERE = os.path.abspath(__file__)

Frames = tuple[tuple[CodeType, int], ...]
"""A stack as sampled, root first: (code, line) pairs, named only when the recording ends."""


def _loop_machinery(code: CodeType) -> bool:
    name = code.co_filename
    return name.startswith(_ASYNCIO) or name == _SELECTORS


class Sampler:
    """One recording. `start` and `stop` on the loop thread, which must be the main thread; `done` is
    set when it ended (its time was up, `stop`, or it could not start: `error` says why)."""

    def __init__(
        self,
        clock: Any,
        gc_pauses: collections.deque[tuple[float, float]],
        code_dirs: Callable[[str], tuple[str, ...]],
        *,
        hz: float = 100.0,
        seconds: float = 10.0,
        session_id: str | None = None,
        agent: str | None = None,
        rng: random.Random | None = None,
        now: Callable[[], float] = perf_counter,
        on_done: Callable[[], object] | None = None,
    ) -> None:
        if not 0 < hz <= MAX_HZ:
            raise ProfileError(f"the rate must be above 0 and at most {MAX_HZ:.0f} Hz, got {hz}")
        if not 0 < seconds <= MAX_SECONDS:
            raise ProfileError(f"the duration must be above 0 and at most {MAX_SECONDS:.0f} s, got {seconds}")
        self._clock = clock
        self._gc_pauses = gc_pauses
        self._code_dirs = code_dirs
        self.hz = hz
        self.seconds = seconds
        self.session_id = session_id
        self.agent = agent
        self._period = 1.0 / hz
        self._rng = rng or random.Random()
        self._now = now
        self._counts: collections.Counter[Any] = collections.Counter()
        self._modules: dict[CodeType, str] = {}
        self._lateness: list[float] = []
        self._elsewhere = 0
        """Deadlines that fell on other sessions than the one asked for."""
        self._next = 0.0
        self._began = 0.0
        self._end = 0.0
        self._started_at = 0.0
        self._ended = 0.0
        self._old_handler: Any = None
        self._schedstat: int | None = None
        self._waited = 0.0
        self._last = 0.0
        """When the last sample was taken (or the recording began)."""
        self._loop_caller: FrameType | None = None
        self.running = False
        self.cancelled = False
        """Set (from any thread) when nobody waits any more: a late `start` then does nothing."""
        self.error: str | None = None
        self.done = threading.Event()
        self._on_done = on_done
        """Called once on the loop thread when the recording ends (or could not start)."""

    # -- loop thread --------------------------------------------------------------------------------

    def start(self) -> None:
        """Install the handler and arm the first deadline. Refuses (sets `error`, then `done`) when it
        cannot sample this thread, or when the agents' code uses `SIGALRM` itself."""
        if self.cancelled:
            return
        # The frame that runs the loop (it called `run_until_complete`, or asyncio's runner did): what
        # lies below it is the same in every sample, and a sample that stops at it is an idle loop.
        caller: FrameType | None = sys._getframe(1)
        while caller is not None and _loop_machinery(caller.f_code):
            caller = caller.f_back
        self._loop_caller = caller
        try:
            self._start()
        except ProfileError as exc:
            self.error = str(exc)
            self._finished()

    def _start(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            raise ProfileError(
                "CPU profiles need the event loop on the process's main thread (signals are handled there)"
            )
        current = signal.getsignal(signal.SIGALRM)
        if current not in (signal.SIG_DFL, signal.SIG_IGN, None) or signal.getitimer(signal.ITIMER_REAL)[0]:
            raise ProfileError("SIGALRM or its timer is in use in this worker; a CPU profile cannot share it")
        try:  # this (the loop) thread's scheduler statistics, read by each sample
            self._schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._schedstat = None
        self._cpu_waited()
        self._old_handler = signal.signal(signal.SIGALRM, self._on_signal)
        self._began = self._last = self._now()
        self._started_at = time()
        self._end = self._began + self.seconds
        self._next = self._began + self._gap()
        self.running = True
        signal.setitimer(signal.ITIMER_REAL, self._next - self._began)

    def stop(self) -> None:
        """End the recording now (idempotent)."""
        if not self.running:
            self._finished()
            return
        self.running = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self._old_handler if self._old_handler is not None else signal.SIG_DFL)
        if self._schedstat is not None:
            os.close(self._schedstat)
            self._schedstat = None
        self._ended = self._now()
        self._finished()

    def _finished(self) -> None:
        if not self.done.is_set():
            self.done.set()
            if self._on_done is not None:
                self._on_done()

    def _cpu_waited(self) -> float:
        """Seconds this thread waited for a CPU (runnable, not running) since the last call; 0 where
        Linux's schedstat is not there."""
        fd = self._schedstat
        if fd is None:
            return 0.0
        try:
            total = int(os.pread(fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return 0.0
        waited, self._waited = total - self._waited, total
        return max(0.0, waited)

    def _gap(self) -> float:
        return self._period * (0.5 + self._rng.random())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # Runs on the loop thread, inside whatever code it interrupted: kept short, and it never raises.
        if not self.running:
            return
        now = self._now()
        deadline = self._next
        if now < deadline:  # a stray SIGALRM: keep the schedule
            signal.setitimer(signal.ITIMER_REAL, deadline - now)
            return
        first, previous = deadline, self._last
        self._last = now
        self._lateness.append(now - first)
        # The lateness the OS explains (the thread was runnable, waiting for a CPU) is nobody's code.
        # When in the interval since the last sample the thread waited is unknown: only the wait
        # longer than the stretch before this deadline surely fell after it.
        surely_late = self._cpu_waited() - (first - previous)
        waited_until = first + min(max(0.0, surely_late), now - first)
        weight = in_gc = in_wait = 0
        pauses = self._gc_pauses
        while deadline <= now:
            if deadline < waited_until:
                in_wait += 1
            elif pauses and any(s <= deadline <= e for s, e in list(pauses)[-4:]):
                in_gc += 1
            else:
                weight += 1
            deadline += self._gap()
        self._next = deadline
        if self.session_id is not None or self.agent is not None:
            self._elsewhere += in_gc + in_wait  # whose they were is not known: not the asked one's
        else:
            if in_gc:
                self._counts[("gc",)] += in_gc
            if in_wait:
                self._counts[("cpu-wait",)] += in_wait
        if weight:
            self._take(frame, weight)
        if now >= self._end:
            self.stop()
        else:
            signal.setitimer(signal.ITIMER_REAL, max(deadline - self._now(), 1e-6))

    def _take(self, frame: FrameType | None, weight: int) -> None:
        while frame is not None and frame.f_code.co_filename == _HERE:  # a signal during the last handler
            frame = frame.f_back
        step = self._clock.current
        modules = self._modules
        if step is not None:
            session = step.stats.session
            if (self.session_id is not None and session.id != self.session_id) or (
                self.agent is not None and session.agent != self.agent
            ):
                self._elsewhere += weight
                return
            wrapped = step.wrapped
            bottom = getattr(wrapped, "cr_frame", None) or getattr(wrapped, "gi_frame", None)
            codes: list[tuple[CodeType, int]] = []
            f = frame
            while f is not None and len(codes) < MAX_DEPTH:
                code = f.f_code
                if code not in modules:
                    modules[code] = str(f.f_globals.get("__name__", "?"))
                codes.append((code, f.f_lineno or 0))
                if f is bottom:
                    break
                f = f.f_back
            else:  # the step's own frame is not there: the thread is in the timer's bookkeeping
                codes = []
            codes.reverse()
            # The session task runs the agent's code from openrtc's runtime: those outer frames are the
            # same in every sample, so they go.
            while len(codes) > 1 and codes[0][0].co_filename.startswith(_RUNTIME):
                del codes[0]
            self._counts[("session", session.agent, session.id, tuple(codes))] += weight
            return
        if self.session_id is not None or self.agent is not None:
            self._elsewhere += weight
            return
        stack: list[tuple[CodeType, int]] = []
        f, base = frame, self._loop_caller
        while f is not None and f is not base:
            code = f.f_code
            if code not in modules:
                modules[code] = str(f.f_globals.get("__name__", "?"))
            stack.append((code, f.f_lineno or 0))
            f = f.f_back
        stack.reverse()
        self._counts[_outside_key(stack, found_base=f is not None)] += weight

    # -- after the end (any thread) ---------------------------------------------------------------

    def profile(self) -> Profile:
        """What was recorded, named (call once `done` is set)."""
        stacks: dict[Stack, float] = {}
        for key, weight in list(self._counts.items()):
            kind = key[0]
            if kind == "session":
                _, agent, session_id, codes = key
                dirs = self._code_dirs(agent)
                head = ("worker", f"agent:{agent}", f"session:{session_id}")
                add(stacks, (*head, *self._names(codes, dirs)), weight)
            elif kind == "outside":
                add(stacks, ("worker", "outside", *self._names(key[1], ())), weight)
            else:
                add(stacks, ("worker", kind), weight)
        late = sorted(self._lateness)
        elapsed = (self._ended or self._now()) - self._began if self._began else 0.0
        samples = len(late)
        meta = {
            "hz_target": self.hz,
            "hz_achieved": round(samples / elapsed, 1) if elapsed > 0 else 0.0,
            "seconds": round(elapsed, 3),
            "samples": samples,
            "deadlines": int(sum(self._counts.values())) + self._elsewhere,
            "deadlines_elsewhere": self._elsewhere,
            "lateness_ms_p50": _ms(late, 0.5),
            "lateness_ms_p99": _ms(late, 0.99),
            "lateness_ms_max": round(late[-1] * 1000, 3) if late else None,
            "started_at": self._started_at,
            "session_id": self.session_id,
            "agent": self.agent,
        }
        return Profile(stacks, "samples", "CPU", session_depth=2, sample_ms=1000.0 / self.hz, meta=meta)

    def _names(self, codes: Frames, dirs: tuple[str, ...]) -> list[str]:
        return [
            f"{self._module(code)}.{getattr(code, 'co_qualname', code.co_name)} "
            f"({display_path(code.co_filename, dirs)}:{line})"
            for code, line in codes
        ]

    def _module(self, code: CodeType) -> str:
        module = self._modules.get(code, "?")
        # An agent file is imported under a name unique per load (`openrtc_agents.parser_5`, for hot
        # reload): its file's name says the same, and stays the same from one load to the next.
        if module.startswith(AGENT_MODULES):
            return os.path.splitext(os.path.basename(code.co_filename))[0]
        return module


def _outside_key(stack: list[tuple[CodeType, int]], found_base: bool) -> tuple[Any, ...]:
    """A sample between steps: `idle` (the loop waits for I/O or a timer), else `outside` with the
    frames the loop is running (a callback, not a session's task). `stack` holds the frames above the
    one that runs the loop when `found_base`, else the whole stack. Under uvloop the loop's own C
    work shows no frame: it counts as idle."""
    i = 0
    if not found_base:  # skip what started the loop, up to the loop's own frames
        i = next((n for n, (code, _) in enumerate(stack) if _loop_machinery(code)), len(stack))
        if i == len(stack):
            return ("outside", tuple(stack))
    while i < len(stack) and _loop_machinery(stack[i][0]):
        i += 1
    rest = stack[i:]
    if rest:
        return ("outside", tuple(rest))
    if not stack or stack[-1][0].co_filename == _SELECTORS or stack[-1][0].co_filename.endswith("runners.py"):
        return ("idle",)
    return ("outside", (stack[-1],))  # the loop's own bookkeeping (asyncio's `_run_once`)


def _ms(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)
