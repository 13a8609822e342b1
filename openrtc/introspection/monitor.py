"""The monitor: a watchdog thread, a heartbeat on the loop, and the rolling windows behind a snapshot.

- The watchdog wakes when the step published on the `StepClock` would cross the threshold, and at
  least once per threshold; not on a fixed clock, because every wake-up takes the GIL from a busy loop.
  When the step has run past the threshold, it captures the loop thread's stack
  (`sys._current_frames`) while the step is still running: the session that holds the loop is known
  exactly, never guessed. A C call that holds the GIL (a regex, `json.dumps`) keeps the watchdog out
  until it returns; the watchdog, already waiting for the GIL, then gets it at the next bytecode
  boundary, still inside the step, so the offending frame is still on the stack.
- The heartbeat is a loop timer every `HEARTBEAT_S`; its lateness is the loop lag. A late heartbeat with
  no long step behind it is an overload (many short steps) or code outside any session, blamed on no
  session.
- Every `TICK_S` the watchdog also records each session's busy time into a ring, the process CPU time
  and (every second) RSS: the rolling windows of the snapshot.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import contextlib
import gc
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter
from types import FrameType
from typing import TYPE_CHECKING, Any

from openrtc.introspection import timing
from openrtc.introspection.frames import FrameInfo, pick_blame, suspended_stack, walk
from openrtc.introspection.schema import Block, LastBlock
from openrtc.introspection.timing import SessionStats, StepClock, TimedCoroutine

if TYPE_CHECKING:
    from openrtc.runtime.session import Session

log = logging.getLogger("openrtc.slow")

MIN_GAP_S = 0.002
"""Shortest pause between two looks of the watchdog."""
HEARTBEAT_S = 0.05
"""Period of the loop's heartbeat timer."""
TICK_S = 0.5
"""Period of the rolling-window bookkeeping."""
WINDOW_S = 5.0
"""Span of `cpu_pct`, `loop_lag_ms`, `sample_hz_achieved`, `cost_pct`."""
SLOW_FOR_S = 5.0
"""How long a session stays `slow` after a block."""
MAX_BLOCKS = 100
"""Blocks kept per worker."""
RING = int(WINDOW_S / TICK_S) + 1
HANDOVER_SLICE_S = 0.0005
HANDOVER_MAX_S = 0.03
"""At most this much loop time per heartbeat goes to letting a starved server thread run."""
OVERLOAD_LOG_EVERY_S = 5.0
"""A loop that stays overloaded is late at every heartbeat: log it at most this often (each late
heartbeat is still a block in the snapshot)."""
GC_NOTE_S = 0.001
"""Garbage collections longer than this are remembered, to be taken out of the step they fell in."""


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


class _Every:
    """Lets one event of a kind through per period, counting the ones held back."""

    def __init__(self, period_s: float) -> None:
        self._period = period_s
        self._last = -period_s
        self._held = 0

    def due(self) -> int | None:
        """None when this one is held back; else how many were held back since the last."""
        now = time.perf_counter()
        if now - self._last < self._period:
            self._held += 1
            return None
        held, self._last, self._held = self._held, now, 0
        return held


def _thread_cpu_s(ident: int) -> float:
    try:
        return time.clock_gettime(time.pthread_getcpuclockid(ident))
    except (OSError, AttributeError):  # the thread ended, or the platform has no per-thread clocks
        return 0.0


def _blame_text(frame: FrameInfo | None, dirs: tuple[str, ...] = ()) -> str:
    return frame.display(dirs) if frame is not None else "(no frame captured)"


def _stack_text(stack: list[FrameInfo], dirs: tuple[str, ...] = ()) -> list[str]:
    return [f.display(dirs) for f in stack]


class Monitor:
    """Owns the step clock, the watchdog thread and the heartbeat of one pool's loop."""

    def __init__(
        self,
        threshold_ms: float,
        sessions: Callable[[], list[Session]],
        own_dirs: Callable[[str], tuple[str, ...]],
        read_rss_mb: Callable[[], float],
        on_rss: Callable[[float], None] | None = None,
    ) -> None:
        self.threshold_s = threshold_ms / 1000
        self.timer = timing.ACTIVE
        """The step timer implementation: read when the monitor is made, so tests can choose it."""
        self.clock: StepClock = self.timer.clock(self.threshold_s, self._on_long_step)
        self._sessions = sessions
        self._own_dirs = own_dirs
        self._read_rss_mb = read_rss_mb
        self._on_rss = on_rss
        self.blocks: collections.deque[Block] = collections.deque(maxlen=MAX_BLOCKS)
        self.errors = 0
        self.last_error: str | None = None
        # watchdog state (written by the watchdog thread)
        self._capture: Capture | None = None
        self._outside: Capture | None = None
        self.polls: collections.deque[float] = collections.deque(maxlen=int(WINDOW_S / MIN_GAP_S))
        # heartbeat state (written on the loop thread)
        self.last_beat = perf_counter()
        self._beat_long_steps = 0
        self.lags_ms: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=int(WINDOW_S / HEARTBEAT_S)
        )
        self._timer: asyncio.TimerHandle | None = None
        self.other_thread_wants_gil: Callable[[], bool] | None = None
        """Set by the daemon: true while the socket server has a request it could not finish."""
        self.handovers = 0
        self._overload_log = _Every(OVERLOAD_LOG_EVERY_S)
        self._paused_log = _Every(OVERLOAD_LOG_EVERY_S)
        self._loop: asyncio.AbstractEventLoop | None = None
        # tick state (written by the watchdog thread)
        self.tick_times: list[float] = [0.0] * RING
        self.tick_cpu: list[float] = [0.0] * RING
        self.tick_self_cpu: list[float] = [0.0] * RING
        self.tick_index = 0
        self.ticks = 0
        self.rss_mb = 0.0
        self._rss_at = 0.0
        # Peak of the equal share since any time: (mono, share), shares strictly decreasing.
        self.share_peaks: list[tuple[float, float]] = []
        # garbage collection pauses (written by whichever thread collects)
        self._gc_started = 0.0
        self.gc_pauses: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Lock()
        """Held while the watchdog runs: its timed wait on it is its sleep, and `close` ends it."""
        self._loop_thread_id = 0
        self._other_threads: Callable[[], list[int]] = list
        self._sched_fds: list[int] = []
        self.cpu_waits: collections.deque[tuple[float, float]] = collections.deque(maxlen=128)
        """(perf_counter, the loop thread's run-queue wait in s) at each look of the watchdog."""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop, other_threads: Callable[[], list[int]] = list) -> None:
        """Start on the loop's thread; `other_threads` names threads whose CPU counts as our cost."""
        self._loop = loop
        self._loop_thread_id = threading.get_ident()
        self._other_threads = other_threads
        self._open_schedstat()
        self.last_beat = perf_counter()
        now, cpu = time.perf_counter(), os.times()
        self.tick_times[:] = [now] * RING
        self.tick_cpu[:] = [cpu.user + cpu.system] * RING
        self._schedule_beat()
        gc.callbacks.append(self._on_gc)
        self._wake.acquire()
        self._thread = threading.Thread(target=self._run, name="openrtc-watchdog", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._close_schedstat()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        self._stop.set()
        if self._wake.locked():
            self._wake.release()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None

    def record_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message

    # -- loop thread ----------------------------------------------------------------------------

    def _schedule_beat(self) -> None:
        assert self._loop is not None
        self._expected = perf_counter() + HEARTBEAT_S
        self._timer = self._loop.call_at(self._loop.time() + HEARTBEAT_S, self._beat)

    def _beat(self) -> None:
        now = perf_counter()
        late = max(0.0, now - self._expected)
        self.lags_ms.append((now, late * 1000))
        clock = self.clock
        late -= self._gc_within(self.last_beat, now)  # reported by the gc callback already
        if late > self.threshold_s and clock.long_steps == self._beat_long_steps:
            # No long step explains the delay: code outside any session if no session step even
            # started meanwhile, else many short steps (overload).
            self._record_unblamed(late, outside=clock.started < self.last_beat)
        self._beat_long_steps = clock.long_steps
        self.last_beat = now
        self._outside = None
        if self.other_thread_wants_gil is not None and self.other_thread_wants_gil():
            self._hand_over_gil()
        if not self._stop.is_set():
            self._schedule_beat()

    def _hand_over_gil(self) -> None:
        # Sleep in short slices: each releases the GIL for a whole slice, so the starved thread takes
        # it and finishes its request; the loop pays at most HANDOVER_MAX_S per heartbeat, and only
        # while someone is asking.
        wants = self.other_thread_wants_gil
        deadline = time.perf_counter() + HANDOVER_MAX_S
        while wants is not None and wants() and time.perf_counter() < deadline:
            time.sleep(HANDOVER_SLICE_S)
        self.handovers += 1

    def _record_unblamed(self, late: float, outside: bool) -> None:
        capture = self._outside
        at = time.time() - late
        if outside and capture is not None:
            block = Block(
                None,
                None,
                round(late * 1000, 1),
                at,
                _blame_text(capture.blame),
                _stack_text(capture.stack),
                False,
                "outside",
            )
            log.warning(
                "[slow-loop] code outside any session blocked event loop for %.0fms at %s",
                late * 1000,
                block.where,
            )
        else:
            where = f"overload: loop {late * 1000:.0f} ms late, no single step over the threshold"
            block = Block(None, None, round(late * 1000, 1), at, where, [], False, "overload")
            self._log_overload(late, where)
        self.blocks.append(block)

    def _log_overload(self, late: float, where: str) -> None:
        more = self._overload_log.due()
        if more is not None:
            since = f" ({more} more late heartbeats since the last such line)" if more else ""
            log.warning("[overload] event loop %.0fms late: %s%s", late * 1000, where, since)

    def _record_paused(
        self, own: float, start: float, stack: list[FrameInfo], where: str | None = None
    ) -> None:
        where = (
            where or "(loop thread paused outside session code: OS scheduling or another thread held the GIL)"
        )
        at = time.time() - (perf_counter() - start)
        self.blocks.append(
            Block(None, None, round(own * 1000, 1), at, where, _stack_text(stack), False, "outside")
        )
        more = self._paused_log.due()  # an overloaded machine pauses every step: say it, not each one
        if more is not None:
            since = f" ({more} more such steps since the last such line)" if more else ""
            log.warning("[slow-loop] event loop held %.0fms %s%s", own * 1000, where, since)

    # -- run-queue waits of the loop thread (Linux) ---------------------------------------------

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

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Kept tiny: it runs on every collection. Only the loop thread's collections are timed: between
        # the start and stop callbacks of another thread, the loop may run meanwhile (seen once: a
        # "generation 0 collection" of 238 ms taken out of a session's 300 ms pure-Python stall).
        if threading.get_ident() != self._loop_thread_id:
            return
        if phase == "start":
            self._gc_started = perf_counter()
            return
        end = perf_counter()
        if end - self._gc_started > GC_NOTE_S:
            self.gc_pauses.append((self._gc_started, end))
            if end - self._gc_started > self.threshold_s:
                ms = (end - self._gc_started) * 1000
                gen, freed = info.get("generation"), info.get("collected")
                where = f"garbage collection of generation {gen} ({freed} freed)"
                self.blocks.append(
                    Block(None, None, round(ms, 1), time.time() - ms / 1000, where, [], False, "gc")
                )
                log.warning("[slow-gc] %s held the event loop for %.0fms", where, ms)

    def _gc_within(self, start: float, end: float) -> float:
        """Seconds of noted garbage collections between `start` and `end`."""
        total = 0.0
        for s, e in reversed(list(self.gc_pauses)):  # newest first: the window is almost always recent
            if e <= start:
                break
            total += max(0.0, min(e, end) - max(s, start))
        return total

    def _on_long_step(self, step: TimedCoroutine, start: float, own: float) -> None:
        """A session step held the loop past the threshold (called on the loop thread, when it ends)."""
        try:
            self._note_long_step(step, start, own)
        except Exception as exc:
            # Raised here, it would come out of the session's own step and fail its task.
            self.record_error(f"long step: {type(exc).__name__}: {exc}")
            log.exception("introspection failed to record a long step")

    def _note_long_step(self, step: TimedCoroutine, start: float, own: float) -> None:
        self.clock.long_steps += 1
        # A garbage collection that ran inside the step is nobody's fault: it is reported on its own.
        own -= self._gc_within(start, perf_counter())
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
        self.blocks.append(block)
        stats.blocks += 1
        stats.last_block = LastBlock(block.ms, at, where)
        stats.last_block_mono = time.perf_counter()
        log.warning(
            "[slow-session] session_id=%s agent=%s blocked event loop for %.0fms at %s",
            session.id,
            session.agent,
            ms,
            where,
            extra={"session_id": session.id, "agent": session.agent},
        )

    # -- watchdog thread ------------------------------------------------------------------------

    @property
    def sample_hz_target(self) -> float:
        """The rate the watchdog keeps at least: one look per threshold (at most one per MIN_GAP_S)."""
        return 1.0 / max(self.threshold_s, MIN_GAP_S)

    def _run(self) -> None:
        # One C call per wait (a timed lock acquire), not Event.wait's Python-level condition: each
        # bytecode here runs while a busy loop waits for the GIL.
        self._open_schedstat()
        stopped = self._wake.acquire
        next_tick = time.perf_counter() + TICK_S
        delay = MIN_GAP_S
        while not stopped(True, delay):
            now = time.perf_counter()
            try:
                next_at = self._poll()
                if now >= next_tick:
                    self._tick(now)
                    next_tick += TICK_S
                    if next_tick < now:
                        next_tick = now + TICK_S
            except Exception as exc:
                # The watchdog must outlive its own bugs; the error goes into the snapshot.
                self.record_error(f"watchdog: {type(exc).__name__}: {exc}")
                log.exception("introspection watchdog failed")
                next_at = perf_counter() + self.threshold_s
            self.polls.append(now)
            delay = max(MIN_GAP_S, min(next_at, next_tick) - time.perf_counter())

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
        stale_at = self.last_beat + threshold + HEARTBEAT_S
        if now > stale_at:
            # The loop is held, but by no session step: capture it, to blame it on the heartbeat.
            stack = self._loop_stack()
            self._outside = Capture(0, None, self.last_beat, stack, pick_blame(stack, ()), False)
            return latest
        return min(latest, stale_at + 1e-6)

    def _capture_step(self, step: TimedCoroutine, start: float) -> Capture:
        session = step.stats.session
        frame = sys._current_frames().get(self._loop_thread_id)
        stack = walk(frame)
        dirs = self._own_dirs(session.agent)
        blame = pick_blame(stack, dirs)
        return Capture(step, session, start, stack, blame, runs_in(frame, step.wrapped), dirs)

    def _loop_stack(self) -> list[FrameInfo]:
        return walk(sys._current_frames().get(self._loop_thread_id))

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
        return Block(
            capture.session.id,
            capture.session.agent,
            round(held_ms, 1),
            at,
            _blame_text(capture.blame, capture.dirs),
            _stack_text(capture.stack, capture.dirs),
            True,
            "session",
        )

    def _tick(self, now: float) -> None:
        i = self.tick_index = (self.tick_index + 1) % RING
        self.tick_times[i] = now
        cpu = os.times()
        self.tick_cpu[i] = cpu.user + cpu.system
        self.tick_self_cpu[i] = time.thread_time() + sum(map(_thread_cpu_s, self._other_threads()))
        self.ticks += 1
        sessions = self._sessions()
        for session in sessions:
            stats: SessionStats | None = session.stats
            if stats is None:
                continue
            ring = stats.cpu_ring
            if ring is None:
                ring = stats.cpu_ring = [0.0] * RING
            ring[i] = stats.busy_s
        if now - self._rss_at >= 1.0:
            self._rss_at = now
            self.rss_mb = self._read_rss_mb()
            if self._on_rss is not None:
                self._on_rss(self.rss_mb)
            if sessions:
                self._note_share(now, self.rss_mb / len(sessions))

    def _note_share(self, now: float, share: float) -> None:
        peaks = self.share_peaks
        while peaks and peaks[-1][1] <= share:
            peaks.pop()
        peaks.append((now, share))

    # -- windows, read when building a snapshot -------------------------------------------------

    def window(self) -> tuple[int, float]:
        """(oldest ring index, span in seconds from that tick to now) of the rolling window.

        Ticks come every `TICK_S` and the ring holds `WINDOW_S / TICK_S + 1` of them, so once warm the
        span is between `WINDOW_S` and `WINDOW_S + TICK_S`; just after start it is shorter.
        """
        oldest = (self.tick_index + 1) % RING if self.ticks >= RING else 1
        return oldest, max(1e-9, time.perf_counter() - self.tick_times[oldest])

    def peak_share_since(self, since_mono: float, current: float) -> float:
        """Largest equal share recorded at or after `since_mono` (or `current` if larger)."""
        peaks = self.share_peaks
        i = bisect.bisect_left(peaks, since_mono, key=lambda p: p[0])
        return max(current, peaks[i][1]) if i < len(peaks) else current
