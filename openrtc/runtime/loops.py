"""Event loop choice: uvloop where installed, asyncio otherwise or on request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from openrtc.errors import ConfigError

LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(name: str = "auto") -> Callable[[], asyncio.AbstractEventLoop]:
    """A factory for `asyncio.Runner`: `auto` prefers uvloop, `uvloop` requires it."""
    if name not in LOOPS:
        raise ConfigError(f"loop must be one of {', '.join(LOOPS)}, got {name!r}")
    if name == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:
        if name == "uvloop":
            raise ConfigError(
                "loop 'uvloop' requested but uvloop is not installed (pip install uvloop)"
            ) from None
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """`uvloop` or `asyncio`, as the snapshot reports it."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
