"""Task tagging: a chained task factory that records which session owns each task.

The session id travels in a context variable set in the session's root context, so every task and
callback spawned from the session inherits it. The factory reads it (from the `context=` argument when
given, as uvloop always does, else from the current context), lets the previous factory or `asyncio.Task`
build the task, then records the owner: in the session's live set, and in a task -> session map that
other threads (the sampler) can read. Python 3.11 gives no way to read a task's context, so the map
cannot be replaced by a context look-up.
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
        self.owners: dict[asyncio.Future[Any], Session] = {}
        """Live tagged tasks and their sessions."""

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
        task: asyncio.Future[Any]
        if previous is not None:
            task = previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        if session is not None:
            session.tasks.add(task)
            self.owners[task] = session
            task.add_done_callback(self._forget)
        return task

    def _forget(self, task: asyncio.Future[Any]) -> None:
        session = self.owners.pop(task, None)
        if session is not None:
            session.tasks.discard(task)

    def session_of(self, task: asyncio.Future[Any]) -> Session | None:
        """The session that owns a live task, or None when the task is untagged or done."""
        return self.owners.get(task)
