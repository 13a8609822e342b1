"""Task tagging: a chained task factory that records which session owns each task.

The session travels in a context variable set in the session's root context, so every task and
callback spawned from the session inherits it. The factory reads it (from the `context=` argument when
given, as uvloop always does, else from the current context), lets the previous factory or `asyncio.Task`
build the task, then adds the task to the session's task set.

The factory is on the path of every task the worker creates, so it does the least it can: one set
insertion, no done callback (a done callback costs a loop turn per task). Finished tasks are pruned from
the set lazily, when it has doubled since the last prune, which keeps it at most twice the live count.
"""

from __future__ import annotations

import asyncio
import operator
import sys
from collections.abc import Coroutine, Generator
from contextvars import Context
from typing import Any

from openrtc.introspection.timing import NestedTimedCoroutine, StepClock, TimedCoroutine
from openrtc.runtime.session import Session, current_session

TaskFactory = Any  # asyncio's own annotation for task factories differs across 3.11-3.13

MIN_PRUNE_AT = 64
"""A session's task set is never pruned below this size: small sets cost nothing to keep."""


class TaskTagger:
    """Installs itself as the loop's task factory and restores the previous one on `uninstall`."""

    def __init__(self, clock: StepClock | None = None) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: TaskFactory | None = None
        self._clock = clock
        """When set, each session task's coroutine is wrapped so its steps are timed on this clock."""

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


def _make_factory(previous: TaskFactory | None, clock: StepClock | None) -> TaskFactory:
    # A closure over locals, not a method, and no helper call when there is no previous factory: this
    # runs for every task the worker creates, and each extra Python call or attribute look-up shows.
    get_session = current_session.get
    new_task = asyncio.Task
    # Another factory underneath may start tasks eagerly, nesting one step in another.
    timed = TimedCoroutine if previous is None else NestedTimedCoroutine

    def factory(
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        context: Context | None = None,
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        task: asyncio.Future[Any]
        if context is None:
            session = get_session()
            if clock is not None and session is not None and session.stats is not None:
                coro = timed((coro, session.stats, clock))
            if previous is None:
                task = new_task(coro, loop=loop, **kwargs)
            else:
                task = previous(loop, coro, **kwargs)
        else:
            session = context.get(current_session)
            if clock is not None and session is not None and session.stats is not None:
                coro = timed((coro, session.stats, clock))
            if previous is None:
                task = new_task(coro, loop=loop, context=context, **kwargs)
            else:
                task = previous(loop, coro, context=context, **kwargs)
        if session is not None:
            tasks = session.tasks
            tasks.add(task)
            if len(tasks) > session.tasks_prune_at:
                _prune(session)
        return task

    return factory


_is_done = operator.methodcaller("done")


def _prune(session: Session) -> None:
    tasks = session.tasks
    tasks.difference_update([*filter(_is_done, tasks)])  # filter + methodcaller: the scan stays in C
    session.tasks_prune_at = max(MIN_PRUNE_AT, 2 * len(tasks))


def live_tasks(session: Session) -> int:
    """How many of the session's tagged tasks are still running. Safe from any thread."""
    return sum(1 for task in tuple(session.tasks) if not task.done())


def session_of(task: asyncio.Future[Any], sessions: dict[str, Session]) -> Session | None:
    """The session that owns `task`, among `sessions`; None when untagged. Safe from any thread.

    3.12+ reads the task's own context. 3.11 cannot (its C tasks hide their context), so it looks the
    task up in each session's set: O(sessions), acceptable for what needs it (naming a stalled task).
    """
    if sys.version_info >= (3, 12):
        get_context = getattr(task, "get_context", None)
        if get_context is not None:
            owner: Session | None = get_context().get(current_session)
            return owner
    for session in list(sessions.values()):
        if task in session.tasks:
            return session
    return None
