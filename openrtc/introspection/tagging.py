"""Task tagging: a chained task factory that records which session owns each task.

The session id travels in a context variable set in the session's root context, so every task and
callback spawned from the session inherits it. The factory reads it (from the `context=` argument when
given, as uvloop always does, else from the current context), lets the previous factory or `asyncio.Task`
build the task, then adds the task to the session's live set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from contextvars import Context
from typing import Any

from openrtc.runtime.session import Session, current_session

TaskFactory = Any  # asyncio's own annotation for task factories differs across 3.11-3.13


class TaskTagger:
    """Installs itself as the loop's task factory and restores the previous one on `uninstall`."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._previous: TaskFactory | None = None

    @property
    def installed(self) -> bool:
        return self._loop is not None

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._loop is not None:
            raise RuntimeError("TaskTagger is already installed")
        self._previous = loop.get_task_factory()
        self._loop = loop
        loop.set_task_factory(self._factory)

    def uninstall(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.set_task_factory(self._previous)
            self._previous = None

    def _factory(
        self,
        loop: asyncio.AbstractEventLoop,
        coro: Coroutine[Any, Any, Any] | Generator[Any, None, Any],
        **kwargs: Any,
    ) -> asyncio.Future[Any]:
        context: Context | None = kwargs.get("context")
        session = current_session.get() if context is None else context.get(current_session)
        previous = self._previous
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)  # type: ignore[arg-type]
        if session is not None:
            tasks = session.tasks
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return task  # type: ignore[no-any-return]


def session_of(task: asyncio.Task[Any]) -> Session | None:
    """The session a task belongs to, read from the task's context (None when untagged)."""
    get_context = getattr(task, "get_context", None)  # 3.12+
    if get_context is not None:
        return get_context().get(current_session)  # type: ignore[no-any-return]
    return _session_of_slow(task)


def _session_of_slow(task: asyncio.Task[Any]) -> Session | None:
    # Python 3.11 has no Task.get_context: the context lives in a private attribute (C and Python tasks).
    context = getattr(task, "_context", None)
    return context.get(current_session) if context is not None else None
