"""The CPU sampler in a session's own process (isolation="process"): `ProfileHook.child_setup` makes
each session's process answer the worker's `profile` question.

There is no step clock in that process: every task in it is the session's but openrtc's own (named
`openrtc-...`), so the task asyncio runs at the instant of a sample says whose step it is.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import Any

from openrtc.profile.sampler import Sampler
from openrtc.profile.stacks import ProfileError, to_wire
from openrtc.runtime.runners.answers import answer
from openrtc.runtime.session import Session

WAIT_GRACE_S = 5.0


class _Stats:
    __slots__ = ("session",)

    def __init__(self, session: Session) -> None:
        self.session = session


class _Step:
    __slots__ = ("stats", "wrapped")

    def __init__(self, wrapped: Any, stats: _Stats) -> None:
        self.wrapped = wrapped
        self.stats = stats


class TaskClock:
    """`current` as the step clock has it, from asyncio's current task (read on the loop thread)."""

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stats = _Stats(session)

    @property
    def current(self) -> _Step | None:
        task = asyncio.current_task(self._loop)
        if task is None or task.get_name().startswith("openrtc-"):
            return None
        return _Step(task.get_coro(), self._stats)


def attach(session: Session) -> None:
    """`child_setup`: answer `profile` in this process."""
    answer("profile", _profile)


async def _profile(session: Session, payload: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    dirs = tuple(str(d) for d in payload.get("code_dirs") or ())
    finished = asyncio.Event()
    sampler = Sampler(
        TaskClock(session, loop),
        collections.deque(),
        lambda agent: dirs,
        hz=float(payload.get("hz", 100.0)),
        seconds=float(payload.get("seconds", 10.0)),
        on_done=lambda: loop.call_soon_threadsafe(finished.set),
    )
    loop.call_soon(sampler.start)  # from a loop callback: the sampler finds the loop's own frame
    try:
        await asyncio.wait_for(finished.wait(), sampler.seconds + WAIT_GRACE_S)
    except TimeoutError:
        pass
    finally:
        sampler.stop()
    if sampler.error is not None:
        raise ProfileError(sampler.error)
    profile = sampler.profile()
    doc = to_wire(profile)
    doc["meta"]["pid"] = os.getpid()
    return doc
