"""The one exception family of openrtc: every error a user can meet derives from `OpenRTCError`."""

from __future__ import annotations

import enum


class OpenRTCError(Exception):
    """Base class of every error openrtc raises on purpose."""


class ConfigError(OpenRTCError, ValueError):
    """Raised when a pool or CLI setting is invalid (bad value, bad environment variable)."""


class AgentLoadError(OpenRTCError):
    """Raised when an agent file cannot be imported or defines no usable agent.

    `path` and `line` point at the place to fix; `line` is 0 when no line applies.
    """

    def __init__(self, path: str, line: int, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {message}")


class UnknownAgentError(OpenRTCError, LookupError):
    """Raised when a session is requested for an agent name the pool does not know."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        listing = ", ".join(known) if known else "none"
        super().__init__(f"unknown agent {name!r}; known agents: {listing}")


class RefusalReason(enum.StrEnum):
    """Why a session was refused."""

    MAX_SESSIONS = "max_sessions"
    MAX_SESSIONS_PER_AGENT = "max_sessions_per_agent"
    MAX_SESSIONS_PER_TENANT = "max_sessions_per_tenant"
    MEMORY_LIMIT = "memory_limit"
    DRAINING = "draining"
    NOT_RUNNING = "not_running"
    PREWARM_FAILED = "prewarm_failed"
    DUPLICATE = "duplicate"
    """A session with that id is already running here."""


CAPS = frozenset(
    {
        RefusalReason.MAX_SESSIONS,
        RefusalReason.MAX_SESSIONS_PER_AGENT,
        RefusalReason.MAX_SESSIONS_PER_TENANT,
        RefusalReason.MEMORY_LIMIT,
    }
)


class SessionRefused(OpenRTCError):
    """Raised when the pool refuses a new session: a cap is reached, memory is over the limit, it drains,
    or the agent's prewarm failed. `reason` (a `RefusalReason`) says which."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = RefusalReason(reason)
        super().__init__(message)

    @property
    def cap(self) -> str:
        """The reason's value: the name this attribute had before `reason`, kept so existing callers go
        on working (not every reason is a cap: `is_cap` tells)."""
        return self.reason.value

    @property
    def is_cap(self) -> bool:
        """True when a cap refused it (`max_sessions...`, `memory_limit`), not the worker's state."""
        return self.reason in CAPS


class SocketError(OpenRTCError):
    """Raised when the introspection socket or its folder is unsafe or unusable."""


class ProtocolError(OpenRTCError):
    """Raised when a peer on the socket sends a frame that breaks the wire contract."""


class SchemaVersionError(ProtocolError):
    """Raised when a worker speaks a protocol or snapshot version this client does not understand."""


class WorkerNotFound(OpenRTCError):
    """Raised when no live worker answers in the socket folder."""


class WorkerUnresponsive(WorkerNotFound):
    """Raised when a worker's socket accepts connections but the worker does not answer in time: it is
    alive, but stuck or overwhelmed (not the same as no worker at all)."""


class RemoteError(OpenRTCError):
    """Raised by the client when the worker answered a request with an error reply.

    `code` is the machine-readable error code; `details` holds any extra fields of the reply.
    """

    def __init__(self, code: str, message: str, details: dict[str, object] | None = None) -> None:
        self.code = code
        self.details = details or {}
        super().__init__(message)


ERROR_MAX_CHARS = 200
"""The longest `error_summary`: a snapshot row and a log line stay readable."""


def error_summary(exc: BaseException) -> str:
    """The exception's type and message on one line, at most `ERROR_MAX_CHARS` long. An exception may
    carry its own `summary` (a child process's failure, whose message is its whole traceback)."""
    summary = getattr(exc, "summary", None)
    if not isinstance(summary, str) or not summary:
        message = str(exc)
        summary = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    text = " ".join(summary.split())
    return text if len(text) <= ERROR_MAX_CHARS else text[: ERROR_MAX_CHARS - 1] + "…"
