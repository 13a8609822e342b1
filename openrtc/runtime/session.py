"""A session: one run of one agent for one request, and the handle its starter holds."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable, Generator
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from openrtc.errors import OpenRTCError

if TYPE_CHECKING:
    from openrtc.runtime.runners.process import ProcessStats

"""Longest `Session.error_text` (the full traceback is in the worker's log)."""

current_session: ContextVar[Session | None] = ContextVar("openrtc_session", default=None)
"""The session whose code is running; set in the root context of every session, so every task and
callback spawned from it inherits it."""


class SessionState(enum.StrEnum):
    """Life cycle: starting -> running [-> draining] -> ended | failed | cancelled."""

    STARTING = "starting"
    RUNNING = "running"
    DRAINING = "draining"
    ENDED = "ended"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED = frozenset({SessionState.ENDED, SessionState.FAILED, SessionState.CANCELLED})


class SessionLogAdapter(logging.LoggerAdapter):  # type: ignore[type-arg]
    """Stamps every record with the session id and agent, keeping any `extra` the caller passes."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


class Session:
    """What an agent's `run` receives. Attributes other than `metadata` are read-only by convention."""

    __slots__ = (
        "_cancel_reason",
        "_emit",
        "_log",
        "_root",
        "agent",
        "attempt",
        "capacity",
        "child",
        "draining",
        "ended_at",
        "error",
        "error_text",
        "id",
        "metadata",
        "pid",
        "process",
        "reason",
        "running_at",
        "shared",
        "started_at",
        "started_mono",
        "state",
        "stats",
        "tasks",
        "tenant",
        "usage",
    )

    def __init__(
        self,
        session_id: str,
        agent: str,
        tenant: str | None,
        metadata: dict[str, Any],
        shared: dict[str, Any],
        draining: asyncio.Event,
        attempt: int = 1,
    ) -> None:
        self.id = session_id
        """Unique id of the session (hex)."""
        self.agent = agent
        """Name of the agent running it."""
        self.tenant = tenant
        """Tenant it belongs to, or None."""
        self.metadata = metadata
        """Caller-supplied metadata (JSON-like)."""
        self.shared = shared
        """What the agent's `prewarm` stored, shared by every session of the agent in this worker."""
        self.draining = draining
        """Set when the worker drains: finish the current turn and return."""
        self.attempt = attempt
        """Which delivery of the session's request this is (1 but for a fleet's redelivery)."""
        self.state = SessionState.STARTING
        self.reason: str | None = None
        """Why the session failed or was cancelled (`exception`, `drain_timeout`, `cancelled_by_user`...)."""
        self.error: BaseException | None = None
        """The exception that failed the session, if any."""
        self.error_text: str | None = None
        """Why it failed, in one line of at most `ERROR_MAX_CHARS` (see `error_summary`)."""
        self.started_at = time.time()
        self.started_mono = time.perf_counter()
        self.running_at: float | None = None
        """perf_counter() when the agent's code began to run."""
        self.ended_at: float | None = None
        self.tasks: dict[Any, asyncio.Future[Any]] = {}
        """The session's live tasks, each under its coroutine: filed by the task tagger when created,
        taken out when the coroutine ends. Empty when introspection is off. One dict for the session's
        life, cleared and never replaced: the C step timer holds it to skip a lookup per task."""
        self.stats: Any = None
        """The step timer's counters of this session, set by the introspection hook (None without it).
        A plain slot, not a mapping of plug-ins: the task factory reads it for every task created."""
        self.pid: int | None = None
        """The session's own process (isolation="process"), None when it runs in the worker."""
        self.process: ProcessStats | None = None
        """What the OS says about that process, None in coroutine mode."""
        self.child: Any = None
        """The link to that process (`runners.process.ChildLink`): `await session.child.ask(what, payload)`
        asks it a plug-in's question (`runners.answers`). None in coroutine mode."""
        self.usage: Any = None
        """What the session records of its LLM calls and tools (`session.usage.record(...)`): set by the
        usage hook (`openrtc.usage`), which `openrtc.AgentPool` always has."""
        self.capacity: Any = None
        """The session's token class and KV-cache estimate, set by the capacity hook
        (`openrtc.capacity`), None without it."""
        self._emit: Callable[[Session, str, dict[str, Any]], None] | None = None
        self._root: asyncio.Task[None] | None = None
        self._cancel_reason: str | None = None
        self._log: SessionLogAdapter | None = None

    def emit(self, kind: str, data: dict[str, Any]) -> None:
        """Tell the pool's hooks of an event of this session (`llm.call`, `tool.call`, `block`...):
        what plug-ins record goes through here, on the loop thread. From a session's own process
        (process isolation) the event crosses to the worker first. Without a pool, nothing happens."""
        if self._emit is not None:
            self._emit(self, kind, data)

    @property
    def log(self) -> logging.LoggerAdapter:  # type: ignore[type-arg]
        """A logger whose records carry `session_id` and `agent`."""
        if self._log is None:
            self._log = SessionLogAdapter(
                logging.getLogger(f"openrtc.agent.{self.agent}"), {"session_id": self.id, "agent": self.agent}
            )
        return self._log

    def __repr__(self) -> str:
        return f"<Session {self.id} agent={self.agent} state={self.state.value}>"


class SessionHandle:
    """Returned by `AgentPool.start_session`: await it for the final state, or cancel it."""

    __slots__ = ("_session",)

    def __init__(self, session: Session) -> None:
        self._session = session

    @property
    def id(self) -> str:
        return self._session.id

    @property
    def session(self) -> Session:
        return self._session

    @property
    def state(self) -> SessionState:
        return self._session.state

    @property
    def reason(self) -> str | None:
        return self._session.reason

    @property
    def error(self) -> BaseException | None:
        return self._session.error

    def cancel(self, reason: str = "cancelled_by_user") -> bool:
        """Cancel the session; False when it had already finished."""
        return cancel_session(self._session, reason)

    async def wait(self) -> SessionState:
        """Wait until the session finishes; cancelling the waiter does not cancel the session."""
        root = self._session._root
        if root is not None and not root.done():
            # asyncio.wait neither cancels the task when the waiter is cancelled nor raises its outcome.
            await asyncio.wait([root])
        await asyncio.sleep(0)  # let the root's done callback finish the bookkeeping
        return self._session.state

    def __await__(self) -> Generator[Any, None, SessionState]:
        return self.wait().__await__()

    def __repr__(self) -> str:
        return f"<SessionHandle {self.id} {self.state.value}>"


class SessionFailed(OpenRTCError):
    """A session's end found outside its own code (its process exited non-zero, died by a signal, or
    went above its memory limit): `reason` is the session's reason, `summary` its one-line error."""

    def __init__(self, reason: str, message: str, summary: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.summary = summary or message
        """One line for `Session.error_text` (the message may be a child's whole traceback)."""


def cancel_session(session: Session, reason: str) -> bool:
    """Cancel a session's root task with `reason`, which ends up in `session.reason`."""
    root = session._root
    if root is None or root.done():
        return False
    if session._cancel_reason is None:
        session._cancel_reason = reason
    return root.cancel(msg=reason)
