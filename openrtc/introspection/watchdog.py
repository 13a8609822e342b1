"""The watchdog: a thread that looks at the loop when the running step would cross the threshold (and
at least once per threshold), and names the session of every step that held the loop too long.

It does not look on a fixed clock: every look takes the GIL from a busy loop. When the step has run
past the threshold, it captures the loop thread's stack (`sys._current_frames`) while the step is
still running: the session that holds the loop is known exactly, never guessed. A C call that holds
the GIL (a regex, `json.dumps`) keeps the watchdog out until it returns; the watchdog, already waiting
for the GIL, then gets it at the next bytecode boundary, still inside the step, so the offending frame
is still on the stack. When the step ends, `note_long_step` (on the loop thread) turns what was seen
into a block: the session's, or nobody's when the thread was only paused (OS scheduling, a CPU given
to others: the threads' run-queue waits, Linux).

Every `TICK_S` the watchdog also drives the rolling windows (`windows.Windows.tick`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from types import FrameType
from typing import Any

from openrtc.introspection.frames import FrameInfo, pick_blame, suspended_stack, walk
from openrtc.introspection.gcwatch import GcWatch
from openrtc.introspection.heartbeat import HEARTBEAT_S, OVERLOAD_LOG_EVERY_S, Heartbeat
from openrtc.introspection.ratelimit import Every
from openrtc.introspection.schema import Block, LastBlock
from openrtc.introspection.timing import StepClock, TimedCoroutine
from openrtc.introspection.windows import TICK_S, WINDOW_S, Windows

log = logging.getLogger("openrtc.slow")

MIN_GAP_S = 0.002
"""Shortest pause between two looks of the watchdog."""
STARVED_S = 0.01
"""The watchdog starves when it has waited this long past its wake-up for the GIL (twice the
interpreter's switch interval: a drop request gets it the GIL sooner than that)."""


@dataclass
class Capture:
    """What the watchdog saw of one long step while it ran."""

    step: Any
    """The step's wrapper (`TimedCoroutine`), or None for code outside any session."""
    session: Any
    start: float
    stack: list[FrameInfo]
    blame: FrameInfo | None
    in_session: bool
    """False when the loop thread was in openrtc's own step bookkeeping, not in the session's code:
    the step was long because the thread was paused (OS scheduling, another thread holding the GIL)."""
    dirs: tuple[str, ...] = ()
    """The folders of the session's agent code (what `where` is named relative to)."""

    def blame_text(self) -> str:
        return _blame_text(self.blame, self.dirs)

    def stack_text(self) -> list[str]:
        return _stack_text(self.stack, self.dirs)


def runs_in(frame: FrameType | None, coro: Any) -> bool:
    """True when `coro`'s own frame is on the stack that ends in `frame`: the thread is in the step's
    code, not in the wrapper's bookkeeping around it (nor anywhere else)."""
    target = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
    if target is None:  # a coroutine without frames (one written in C): cannot tell, so trust it
        return True
    while frame is not None:
        if frame is target:
            return True
        frame = frame.f_back
    return False


def _blame_text(frame: FrameInfo | None, dirs: tuple[str, ...] = ()) -> str:
    return frame.display(dirs) if frame is not None else "(no frame captured)"


def _stack_text(stack: list[FrameInfo], dirs: tuple[str, ...] = ()) -> list[str]:
    return [f.display(dirs) for f in stack]


class Watchdog:
    """The watchdog thread, and the recording of long steps it saw."""

    def __init__(
        self,
        threshold_s: float,
        clock: StepClock,
        own_dirs: Callable[[str], tuple[str, ...]],
        blocks: collections.deque[Block],
        gc: GcWatch,
        windows: Windows,
        heartbeat: Heartbeat,
        record_error: Callable[[str], None],
    ) -> None:
        self.threshold_s = threshold_s
        self.clock = clock
        self._own_dirs = own_dirs
        self._blocks = blocks
        self._gc = gc
        self._windows = windows
        self._heartbeat = heartbeat
        self._record_error = record_error
        self._capture: Capture | None = None
        self.polls: collections.deque[float] = collections.deque(maxlen=int(WINDOW_S / MIN_GAP_S))
        """When it looked, over the window (its achieved rate)."""
        self._paused_log = Every(OVERLOAD_LOG_EVERY_S)
        self._due = perf_counter()
        """When the watchdog wants the GIL: the end of its wait, or the start of a look under way."""
        self._thread: threading.Thread | None = None
        self._wake = threading.Lock()
        """Held while the watchdog runs: its timed wait on it is its sleep, and `close` ends it."""
        self._loop_thread_id = 0
        self._sched_fds: list[int] = []
        self.cpu_waits: collections.deque[tuple[float, float]] = collections.deque(maxlen=128)
        """(perf_counter, the loop and watchdog threads' run-queue wait in s) at each look."""

    @property
    def sample_hz_target(self) -> float:
        """The rate the watchdog keeps at least: one look per threshold (at most one per MIN_GAP_S)."""
        return 1.0 / max(self.threshold_s, MIN_GAP_S)

    def start(self) -> None:
        """On the loop thread."""
        self._loop_thread_id = threading.get_ident()
        self._open_schedstat()
        self._wake.acquire()
        self._thread = threading.Thread(target=self._run, name="openrtc-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._close_schedstat()
        if self._wake.locked():
            self._wake.release()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        # One C call per wait (a timed lock acquire), not Event.wait's Python-level condition: each
        # bytecode here runs while a busy loop waits for the GIL.
        self._open_schedstat()
        stopped = self._wake.acquire
        next_tick = time.perf_counter() + TICK_S
        delay = MIN_GAP_S
        while not stopped(True, delay):
            now = self._due = time.perf_counter()
            try:
                next_at = self._poll()
                if now >= next_tick:
                    self._windows.tick()
                    next_tick += TICK_S
                    if next_tick < now:
                        next_tick = now + TICK_S
            except Exception as exc:
                # The watchdog must outlive its own bugs; the error goes into the snapshot.
                self._record_error(f"watchdog: {type(exc).__name__}: {exc}")
                log.exception("introspection watchdog failed")
                next_at = perf_counter() + self.threshold_s
            self.polls.append(now)
            done = time.perf_counter()
            delay = max(MIN_GAP_S, min(next_at, next_tick) - done)
            self._due = done + delay

    def starves(self) -> bool:
        """On the loop thread: the watchdog waits for the GIL, past its wake-up or in mid-look (its
        windows' ticks and its looks slip meanwhile; the heartbeat then lends it the GIL)."""
        return perf_counter() - self._due > STARVED_S

    def _poll(self) -> float:
        """Look at the loop once; returns when to look next (`perf_counter`)."""
        now = perf_counter()
        wait = self._cpu_wait_s()
        if wait is not None:
            self.cpu_waits.append((now, wait))
        threshold = self.threshold_s
        latest = now + threshold  # a step starting right now could cross the threshold by then
        clock = self.clock
        start, step = clock.started, clock.current
        if step is not None:
            seen = self._capture
            if seen is not None and seen.step is step and seen.start == start:
                # Keep the first look: a later one can land after the blocking code, just before the
                # step ends (seen: 1 of 20 pure-Python stalls blamed on the line after the loop).
                return latest
            if now - start > threshold and clock.started == start and clock.current is step:
                self._capture = self._capture_step(step, start)
                return latest
            return min(latest, start + threshold + 1e-6)  # the moment this step would become long
        last_beat = self._heartbeat.last_beat
        stale_at = last_beat + threshold + HEARTBEAT_S
        if now > stale_at:
            # The loop is held, but by no session step: capture it, for the heartbeat to report.
            stack = walk(sys._current_frames().get(self._loop_thread_id))
            self._heartbeat.outside = Capture(0, None, last_beat, stack, pick_blame(stack, ()), False)
            return latest
        return min(latest, stale_at + 1e-6)

    def _capture_step(self, step: TimedCoroutine, start: float) -> Capture:
        session = step.stats.session
        frame = sys._current_frames().get(self._loop_thread_id)
        stack = walk(frame)
        dirs = self._own_dirs(session.agent)
        blame = pick_blame(stack, dirs)
        return Capture(step, session, start, stack, blame, runs_in(frame, step.wrapped), dirs)

    def ongoing(self) -> Block | None:
        """The block in progress, if the loop is held right now by a step the watchdog has seen."""
        capture = self._capture
        step = self.clock.current
        if capture is None or step is None or step is not capture.step or self.clock.started != capture.start:
            return None
        if not capture.in_session:
            return None
        held_ms = (perf_counter() - capture.start) * 1000
        at = time.time() - held_ms / 1000
        session = capture.session
        return Block(
            session.id,
            session.agent,
            round(held_ms, 1),
            at,
            capture.blame_text(),
            capture.stack_text(),
            True,
            "session",
        )

    # -- long steps (on the loop thread, when a step ends) ----------------------------------------

    def note_long_step(self, step: TimedCoroutine, start: float, own: float) -> None:
        """A session step held the loop past the threshold: record it as a block (or as nobody's)."""
        self.clock.long_steps += 1
        # A garbage collection that ran inside the step is nobody's fault: it is reported on its own.
        own -= self._gc.within(start, perf_counter())
        if own <= self.threshold_s:
            return
        stats = step.stats
        session = stats.session
        capture = self._capture
        same = capture is not None and capture.step is step and capture.start == start
        if same and capture is not None and not capture.in_session:
            self._record_paused(own, capture.start, capture.stack)
            return
        waited = self._waited_during(start)
        if own - waited <= self.threshold_s:
            # The thread was runnable but had no CPU for most of the step (an overloaded machine, CPU
            # throttling): what the session's code itself took is under the threshold.
            stack = capture.stack if same and capture is not None else []
            where = (
                f"(loop thread waited {waited * 1000:.0f} ms for a CPU during the step: the machine was "
                "overloaded, not the session)"
            )
            self._record_paused(own, start, stack, where)
            return
        dirs = self._own_dirs(session.agent)
        if same and capture is not None:
            stack, blame = capture.stack, capture.blame
            where = _blame_text(blame, dirs)
        else:
            # The watchdog never got the GIL during the step: a C call held it until the step was
            # nearly over, or another thread did (a long garbage collection there, say). The
            # coroutine's suspension point is the best honest clue left.
            stack = suspended_stack(step.wrapped)
            blame = pick_blame(stack, dirs)
            where = (
                f"{_blame_text(blame, dirs)} (step ended here; the watchdog could not look: no live stack)"
            )
        ms = own * 1000
        at = time.time() - (perf_counter() - start)
        block = Block(
            session.id, session.agent, round(ms, 1), at, where, _stack_text(stack, dirs), False, "session"
        )
        self._blocks.append(block)
        stats.blocks += 1
        stats.last_block = LastBlock(block.ms, at, where)
        stats.last_block_mono = time.perf_counter()
        session.emit("block", {"ms": block.ms, "where": where, "kind": "session"})
        log.warning(
            "[slow-session] session_id=%s agent=%s blocked event loop for %.0fms at %s",
            session.id,
            session.agent,
            ms,
            where,
            extra={"session_id": session.id, "agent": session.agent},
        )

    def _record_paused(
        self, own: float, start: float, stack: list[FrameInfo], where: str | None = None
    ) -> None:
        where = (
            where or "(loop thread paused outside session code: OS scheduling or another thread held the GIL)"
        )
        at = time.time() - (perf_counter() - start)
        self._blocks.append(
            Block(None, None, round(own * 1000, 1), at, where, _stack_text(stack), False, "outside")
        )
        more = self._paused_log.due()  # an overloaded machine pauses every step: say it, not each one
        if more is not None:
            since = f" ({more} more such steps since the last such line)" if more else ""
            log.warning("[slow-loop] event loop held %.0fms %s%s", own * 1000, where, since)

    # -- run-queue waits (Linux) ------------------------------------------------------------------

    def _open_schedstat(self) -> None:
        """The calling thread's scheduler statistics (how long it waited, runnable, for a CPU): the
        loop thread's, and the watchdog's (preempted while it holds the GIL, it stalls the loop too)."""
        try:
            path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            return
        self._sched_fds.append(fd)
        wait = self._cpu_wait_s()
        if wait is None:
            self._close_schedstat()
        else:  # a baseline: a step may be long before the watchdog's first look
            self.cpu_waits.append((perf_counter(), wait))

    def _close_schedstat(self) -> None:
        for fd in self._sched_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._sched_fds = []

    def _cpu_wait_s(self) -> float | None:
        """Seconds the loop and watchdog threads have spent runnable but not running (None off Linux)."""
        total = 0.0
        try:
            for fd in tuple(self._sched_fds):
                total += int(os.pread(fd, 128, 0).split()[1]) / 1e9
        except (OSError, ValueError, IndexError):
            return None
        return total if self._sched_fds else None

    def _waited_during(self, start: float) -> float:
        """How long the loop thread waited for a CPU since `start` (at most: from the watchdog's last
        reading before it), 0 when unknown."""
        now = self._cpu_wait_s()
        if now is None:
            return 0.0
        for at, wait in reversed(list(self.cpu_waits)):  # a copy: the watchdog appends meanwhile
            if at <= start:
                return max(0.0, now - wait)
        return 0.0
