"""openrtc: many agent sessions in one Python worker, and the tool that shows which one is eating it."""

import importlib
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from openrtc.pool import AgentPool
    from openrtc.runtime.agent import Agent
    from openrtc.runtime.hooks import Hook
    from openrtc.runtime.session import Session, SessionHandle, SessionState
    from openrtc.usage.calls import UsageError
    from openrtc.usage.hook import UsageConfig

__version__ = "0.1.0"

# Imported on first use (PEP 562): `openrtc top --once` and `openrtc stats` run in a fresh process
# each time, and the pool would bring asyncio, the introspection daemon and more for nothing (~90 ms).
_LAZY = {
    "AgentPool": "openrtc.pool",
    "Agent": "openrtc.runtime.agent",
    "Hook": "openrtc.runtime.hooks",
    "Session": "openrtc.runtime.session",
    "SessionHandle": "openrtc.runtime.session",
    "SessionState": "openrtc.runtime.session",
    "UsageError": "openrtc.usage.calls",
    "UsageConfig": "openrtc.usage.hook",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'openrtc' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
    "UsageConfig",
    "UsageError",
    "WorkerNotFound",
    "WorkerUnresponsive",
    "__version__",
]
