"""Drain on SIGTERM/SIGINT, restoring whatever handlers were there before."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator

DRAIN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def capture_signals(loop: asyncio.AbstractEventLoop, on_signal: Callable[[int], None]) -> Iterator[None]:
    """Route SIGTERM/SIGINT to `on_signal(signum)` on the loop; restore the old handlers on exit."""
    # Signals can only be listened to from the main thread; elsewhere the host owns them.
    previous = {sig: signal.getsignal(sig) for sig in DRAIN_SIGNALS}
    installed: list[signal.Signals] = []
    try:
        for sig in DRAIN_SIGNALS:
            try:
                loop.add_signal_handler(sig, on_signal, sig)
            except (RuntimeError, ValueError, NotImplementedError):
                continue
            installed.append(sig)
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
            signal.signal(sig, previous[sig])
