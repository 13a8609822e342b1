"""Event loop choice: uvloop where installed, asyncio otherwise or on request.

The loops openrtc makes refuse `loop.stop()` from session code: an agent that stops the worker's loop
(`asyncio.get_event_loop().stop()`) would stop every session with it. The call is logged, naming the
session, and ignored. A stop from outside any session (a callback in a fresh context) still stops
the loop; `run_worker_loop` then starts it again.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

from openrtc.errors import ConfigError
from openrtc.runtime.session import current_session

LOOPS = ("auto", "asyncio", "uvloop")

log = logging.getLogger("openrtc.loop")


class _GuardedStop:
    """Mixin for a loop class: `stop()` from a session's code is refused."""

    stops_refused = 0

    def stop(self) -> None:
        session = current_session.get()
        if session is not None:
            self.stops_refused += 1
            log.error(
                "session %s (agent %s) called loop.stop(): ignored, the loop runs every session of the "
                "worker (end the session by returning from it)",
                session.id,
                session.agent,
                extra={"session_id": session.id, "agent": session.agent},
            )
            return
        super().stop()  # type: ignore[misc]


class GuardedEventLoop(_GuardedStop, asyncio.SelectorEventLoop):
    """asyncio's loop, with `stop()` refused from session code."""


@functools.cache
def _uvloop_class() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    doc = "uvloop's loop, with `stop()` refused from session code."
    loop_class: type[asyncio.AbstractEventLoop] = type(
        "GuardedUVLoop", (_GuardedStop, uvloop.Loop), {"__doc__": doc}
    )
    return loop_class


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for `asyncio.Runner`: `auto` prefers uvloop, `uvloop` requires it."""
    if name not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}, got {name!r}")
    if name == "asyncio":
        return GuardedEventLoop
    uv = _uvloop_class()
    if uv is None:
        if name == "uvloop":
            raise ConfigError("loop 'uvloop' requested but uvloop is not installed (pip install uvloop)")
        return GuardedEventLoop
    return uv


def loop_name(loop: Any) -> str:
    """`uvloop` or `asyncio`, as the snapshot reports it."""
    return "uvloop" if any(c.__module__.startswith("uvloop") for c in type(loop).__mro__) else "asyncio"
