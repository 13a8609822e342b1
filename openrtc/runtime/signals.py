"""The signals a worker answers, and the drain's hard deadline.

- SIGTERM (orchestrators), SIGINT (Ctrl-C) and SIGHUP (the terminal closed): drain; the same signal
  again cancels every session at once (`reason=signal`).
- SIGQUIT (Ctrl-\\): stop quickly: every session is cancelled at once (`reason=signal`), each still
  gets its end line.
- SIGKILL cannot be caught: the next worker reports the sessions it had as lost.

The handlers are plain `signal.signal` handlers, not `loop.add_signal_handler` callbacks: they run in the
main thread between two bytecodes, even while a session blocks the loop (a `time.sleep`, a long Python
loop), so the hard deadline learns of the signal on time. They do only what a signal handler may:
schedule the real work on the loop (`call_soon_threadsafe`) and notify the deadline's thread (a byte
written to a pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable, Iterator

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
QUICK_SIGNALS = (signal.SIGQUIT,)

EXIT_OK = 0
"""The worker drained: every session ended, was cancelled, or was abandoned after ignoring its
cancellation, each with its end line."""
EXIT_ERROR = 1
"""It could not start (bad agents folder, unsafe socket folder...)."""
EXIT_USAGE = 2
"""Bad flags or environment."""
EXIT_DRAIN_DEADLINE = 3
"""The drain's hard deadline passed (the event loop was blocked, or the drain stuck): the worker's
own thread wrote every session's end line, removed the socket, and exited."""

DEADLINE_GRACE_S = 1.0
"""After the drain timeout, how long before the deadline checks whether the loop still turns."""
PING_TIMEOUT_S = 1.0
"""A loop that does not run a callback within this long is blocked."""
FINISH_S = 12.0
"""After the drain timeout, the most a turning loop gets to finish (cancel grace, closing)."""

log = logging.getLogger("openrtc.signals")


@contextlib.contextmanager
def capture_signals(
    loop: asyncio.AbstractEventLoop,
    on_signal: Callable[[int], None],
    on_arrival: Callable[[int], None] | None = None,
) -> Iterator[None]:
    """Route the drain and quick signals to `on_signal(signum)` on the loop; `on_arrival(signum)` runs in
    the handler itself (keep it signal-safe). The previous handlers are restored on exit."""

    def handler(signum: int, frame: object) -> None:
        if on_arrival is not None:
            on_arrival(signum)
        with contextlib.suppress(RuntimeError):  # the loop is closed: the worker is exiting anyway
            # A fresh context: the handler interrupts whatever runs, maybe a session's code, whose
            # context would make the drain one of that session's tasks (cancelled when it ends).
            loop.call_soon_threadsafe(on_signal, signum, context=contextvars.Context())

    previous: dict[signal.Signals, object] = {}
    try:
        for sig in (*DRAIN_SIGNALS, *QUICK_SIGNALS):
            try:
                previous[sig] = signal.signal(sig, handler)
            except (ValueError, OSError):  # not the main thread: the host owns the signals
                break
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)  # type: ignore[arg-type]


class DrainDeadline:
    """A thread that makes a draining worker exit on time even when its event loop is blocked.

    Once armed (the drain began), it waits for the drain timeout plus `DEADLINE_GRACE_S`, then checks
    each second that the loop still runs a callback. A loop that does not answer within
    `PING_TIMEOUT_S` is blocked: `expire` is called, on this thread. A loop that answers gets up to
    `FINISH_S` more before `expire` is called all the same. `expire` must not return (it exits).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        drain_timeout_s: float,
        expire: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loop = loop
        self._timeout = drain_timeout_s
        self._expire = expire
        self._clock = clock
        self._armed_at: float | None = None
        self._closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._w, False)
        self._thread = threading.Thread(target=self._run, name="openrtc-drain-deadline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def arm(self, *_: object) -> None:
        """The drain began (now, or at the first call). Safe in a signal handler: no lock, no allocation
        that can block."""
        if self._armed_at is None:
            self._armed_at = self._clock()
        self._poke()

    def close(self) -> None:
        """The worker finished on its own: stop watching."""
        self._closed = True
        self._poke()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(5.0)
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _poke(self) -> None:
        with contextlib.suppress(OSError):  # a full pipe is already a wake-up
            os.write(self._w, b"!")

    def _wait(self, seconds: float | None) -> None:
        readable, _, _ = select.select([self._r], [], [], seconds)
        if readable:
            with contextlib.suppress(OSError):
                os.read(self._r, 4096)

    def _run(self) -> None:
        while self._armed_at is None and not self._closed:
            self._wait(None)
        if self._closed or self._armed_at is None:
            return
        first = self._armed_at + self._timeout + DEADLINE_GRACE_S
        last = self._armed_at + self._timeout + FINISH_S
        while not self._closed and (left := first - self._clock()) > 0:
            self._wait(left)
        while not self._closed:
            if not self._loop_answers():
                if self._closed:
                    return
                self._expire("the event loop was blocked")
                return
            if self._clock() >= last:
                self._expire("the drain did not finish")
                return
            self._wait(1.0)

    def _loop_answers(self) -> bool:
        answered = threading.Event()
        try:
            self._loop.call_soon_threadsafe(answered.set)
        except RuntimeError:  # closed: the worker is past its drain
            return True
        return answered.wait(PING_TIMEOUT_S)


def loop_thread_position(thread_id: int) -> str:
    """Where the thread is now: its innermost frame outside asyncio and openrtc, as `path:line in f`."""
    import sys

    frame = sys._current_frames().get(thread_id)
    first = None
    while frame is not None:
        code = frame.f_code
        where = f"{code.co_filename}:{frame.f_lineno} in {code.co_name}"
        first = first or where
        if not any(
            part in code.co_filename for part in (f"{os.sep}asyncio{os.sep}", f"{os.sep}openrtc{os.sep}")
        ):
            return f"code at {where}"
        frame = frame.f_back
    return f"code at {first}" if first else "(no frame)"
