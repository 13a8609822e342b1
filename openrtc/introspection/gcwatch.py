"""Garbage collections on the loop thread: timed, so a collection inside a step is taken out of it
(nobody's fault) and one past the threshold is reported as a `gc` block of its own."""

from __future__ import annotations

import collections
import gc
import logging
import threading
import time
from time import perf_counter

from openrtc.introspection.schema import Block

log = logging.getLogger("openrtc.slow")

GC_NOTE_S = 0.001
"""Garbage collections longer than this are remembered, to be taken out of the step they fell in."""


class GcWatch:
    """A `gc.callbacks` entry that times the loop thread's collections."""

    def __init__(self, threshold_s: float, blocks: collections.deque[Block]) -> None:
        self._threshold_s = threshold_s
        self._blocks = blocks
        self._started = 0.0
        self._loop_thread_id = 0
        self.pauses: collections.deque[tuple[float, float]] = collections.deque(maxlen=64)
        """(start, end) `perf_counter` of the recent collections longer than `GC_NOTE_S`."""

    def start(self) -> None:
        """On the loop thread."""
        self._loop_thread_id = threading.get_ident()
        gc.callbacks.append(self._on_gc)

    def close(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        # Kept tiny: it runs on every collection. Only the loop thread's collections are timed: between
        # the start and stop callbacks of another thread, the loop may run meanwhile (seen once: a
        # "generation 0 collection" of 238 ms taken out of a session's 300 ms pure-Python stall).
        if threading.get_ident() != self._loop_thread_id:
            return
        if phase == "start":
            self._started = perf_counter()
            return
        end = perf_counter()
        if end - self._started > GC_NOTE_S:
            self.pauses.append((self._started, end))
            if end - self._started > self._threshold_s:
                ms = (end - self._started) * 1000
                gen, freed = info.get("generation"), info.get("collected")
                where = f"garbage collection of generation {gen} ({freed} freed)"
                self._blocks.append(
                    Block(None, None, round(ms, 1), time.time() - ms / 1000, where, [], False, "gc")
                )
                log.warning("[slow-gc] %s held the event loop for %.0fms", where, ms)

    def within(self, start: float, end: float) -> float:
        """Seconds of noted garbage collections between `start` and `end`."""
        total = 0.0
        for s, e in reversed(list(self.pauses)):  # newest first: the window is almost always recent
            if e <= start:
                break
            total += max(0.0, min(e, end) - max(s, start))
        return total
