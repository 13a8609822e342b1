"""Task tagging: a chained task factory that records which session owns each task.

The session travels in a context variable set in the session's root context, so every task and
callback spawned from the session inherits it. The factory reads it (from the `context=` argument when
given, as uvloop always does, else from the current context), wraps the coroutine so its steps are
timed (`timing.TimedCoroutine`), lets the previous factory or `asyncio.Task` build the task, then files
the task under its coroutine in the session's `tasks`.

The factory is on the path of every task the worker creates, so it does the least it can: one dict
insertion, no done callback (a done callback costs a loop turn per task). The wrapper takes the entry
out when its coroutine ends, so `tasks` holds exactly the live tasks: finished ones are not kept alive
(keeping them, even pruned lazily, held tens of thousands of objects on a busy worker and made every
garbage collection slower).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Coroutine, Generator
from contextvars import Context
from typing import Any

from openrtc.introspection.timing import NATIVE, NATIVE_FACTORY, NestedTimedCoroutine, StepClock, timer_of
from openrtc.runtime.session import Session, current_session

TaskFactory = Any  # asyncio's own annotation for task factories differs across 3.11-3.13


class TaskTagger:
    """Installs itself as the loop's task factory and restores the previous one on `uninstall`.

    Each task of a session that has `stats` is tagged and its steps timed on `clock`; tasks of no
    session, or of a session without stats, are left alone.
    """

    def __init__(self, clock: StepClock) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: TaskFactory | None = None
        self._clock = clock

    @property
    def installed(self) -> bool:
        return self._loop is not None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError("TaskTagger is already installed")
        self._previous = loop.get_task_factory()
        self._loop = loop
        loop.set_task_factory(_make_factory(self._previous, self._clock))

    def uninstall(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.set_task_factory(self._previous)
            self._previous = None


def _make_factory(previous: TaskFactory | None, clock: StepClock) -> TaskFactory:
    # A closure over locals, not a method, and the common call (`factory(loop, coro)`, no previous
    # factory) goes straight to `asyncio.Task`: this runs for every task the worker creates, and each
    # extra Python call, look-up or `**kwargs` merge shows.
    get_session = current_session.get
    new_task = asyncio.Task
    # Another factory underneath may start tasks eagerly, nesting one step in another.
    lean = timer_of(clock)
    timed: Any = lean.wrapper if previous is None else NestedTimedCoroutine
    filled = lean.filled or previous is not None
    new_wrapper = object.__new__

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        context: Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        session = get_session() if context is None else context.get(current_session)
        if session is None or session.stats is None:
            return _create(loop, coro, context, kwargs)
        if filled:  # the Python wrappers: an `__init__` would be a Python call per task
            wrapped = new_wrapper(timed)
            wrapped.wrapped, wrapped.stats, wrapped.clock = coro, session.stats, clock
        else:
            wrapped = timed(coro, session.stats, clock)
        if previous is None and not kwargs:
            # Not started yet: it cannot have ended, so the wrapper will find its entry.
            task: asyncio.Future[Any] = new_task(wrapped, loop=loop, context=context)
            session.tasks[coro] = task
            return task
        task = _create(loop, wrapped, context, kwargs)
        if not task.done():  # an eager start may have run it to the end already
            session.tasks[coro] = task
        return task

    def _create(
        loop: asyncio.AbstractEventLoop, coro: Any, context: Context | None, kwargs: dict[str, Any]
    ) -> asyncio.Future[Any]:
        if previous is None:
            return new_task(coro, loop=loop, context=context, **kwargs)
        if context is None:  # an older factory may not take `context`
            return previous(loop, coro, **kwargs)  # type: ignore[no-any-return]
        return previous(loop, coro, context=context, **kwargs)  # type: ignore[no-any-return]

    if previous is None and lean is NATIVE and NATIVE_FACTORY is not None:
        # The common call in C, without a Python frame (`_steps.TaskFactory`); this function for the
        # others (a `name=` or other keyword, a session timed by the Python step timer).
        return NATIVE_FACTORY(new_task, current_session, lean.wrapper, clock, factory)
    return factory


def live_tasks(session: Session) -> int:
    """How many of the session's tagged tasks are still running. Safe from any thread."""
    return sum(1 for task in tuple(session.tasks.values()) if not task.done())


def session_of(task: asyncio.Future[Any], sessions: dict[str, Session]) -> Session | None:
    """The session that owns `task`, among `sessions`; None when untagged. Safe from any thread.

    3.12+ reads the task's own context. 3.11 cannot (its C tasks hide their context), so it looks the
    task up in each session's tasks: O(sessions), acceptable for what needs it (naming a stalled task).
    """
    if sys.version_info >= (3, 12):
        get_context = getattr(task, "get_context", None)
        if get_context is not None:
            owner: Session | None = get_context().get(current_session)
            return owner
    for session in list(sessions.values()):
        if task in tuple(session.tasks.values()):
            return session
    return None
