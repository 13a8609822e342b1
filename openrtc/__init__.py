"""openrtc: many agent sessions in one Python worker, and the tool that shows which one is eating it."""

from openrtc.errors import (
    AgentLoadError,
    ConfigError,
    OpenRTCError,
    ProtocolError,
    RefusalReason,
    RemoteError,
    SchemaVersionError,
    SessionRefused,
    SocketError,
    UnknownAgentError,
    WorkerNotFound,
    WorkerUnresponsive,
)
from openrtc.pool import AgentPool
from openrtc.runtime.agent import Agent
from openrtc.runtime.hooks import Hook
from openrtc.runtime.session import Session, SessionHandle, SessionState

__version__ = "0.1.0"

__all__ = [
    "Agent",
    "AgentLoadError",
    "AgentPool",
    "ConfigError",
    "Hook",
    "OpenRTCError",
    "ProtocolError",
    "RefusalReason",
    "RemoteError",
    "SchemaVersionError",
    "Session",
    "SessionHandle",
    "SessionRefused",
    "SessionState",
    "SocketError",
    "UnknownAgentError",
    "WorkerNotFound",
    "WorkerUnresponsive",
    "__version__",
]
