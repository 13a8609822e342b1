"""What an agent is: a subclass of `Agent`, or a module-level `async def entrypoint(session)`."""

from __future__ import annotations

import inspect
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from openrtc.errors import ConfigError

if TYPE_CHECKING:
    from openrtc.runtime.session import Session

Entrypoint = Callable[["Session"], Awaitable[None]]
Prewarm = Callable[[dict[str, Any]], Awaitable[None]]


class Agent:
    """Base class of class-style agents. One instance is made per session, then `run` is awaited."""

    name: ClassVar[str | None] = None
    """Registered name; defaults to the agent file's stem."""

    @classmethod
    async def prewarm(cls, shared: dict[str, Any]) -> None:
        """Runs once per worker before any session of this agent; store shared resources in `shared`."""

    async def run(self, session: Session) -> None:
        """One call per session. The session ends when this returns."""
        raise NotImplementedError(f"{type(self).__name__}.run is not implemented")


@dataclass(frozen=True)
class AgentSpec:
    """A validated agent, ready to start sessions."""

    name: str
    """The name sessions are routed by."""
    entry: Entrypoint
    """Called with the session; its coroutine is the session's root."""
    prewarm: Prewarm | None
    """Awaited once per worker with the agent's shared dict, or None."""
    source: str | None
    """The file it was loaded from, None when added from code."""
    line: int
    """Where the agent is defined in `source` (0 when unknown)."""
    code_dir: str | None = None
    """The folder whose frames count as the agent's own code when blaming a stall."""


def _class_entry(cls: type[Agent]) -> Entrypoint:
    async def entry(session: Session) -> None:
        await cls().run(session)

    entry.__qualname__ = f"{cls.__qualname__}.run"
    return entry


def make_spec(name: str, agent: object, source: str | None = None) -> AgentSpec:
    """Validate `agent` (an `Agent` subclass or an async function taking a session) into a spec."""
    if not name or not isinstance(name, str):
        raise ConfigError(f"agent name must be a non-empty string, got {name!r}")
    if isinstance(agent, type) and issubclass(agent, Agent):
        if agent.run is Agent.run:
            raise ConfigError(
                f"agent {name!r}: {agent.__qualname__} does not define async def run(self, session)"
            )
        if not inspect.iscoroutinefunction(agent.run):
            raise ConfigError(f"agent {name!r}: {agent.__qualname__}.run must be `async def`")
        prewarm: Prewarm | None = None
        if agent.prewarm.__func__ is not Agent.prewarm.__func__:  # type: ignore[attr-defined]
            if not inspect.iscoroutinefunction(agent.prewarm):
                raise ConfigError(f"agent {name!r}: {agent.__qualname__}.prewarm must be `async def`")
            prewarm = agent.prewarm
        return AgentSpec(
            name, _class_entry(agent), prewarm, source, source_line(agent), _code_dir(agent, source)
        )
    if inspect.iscoroutinefunction(agent):
        return AgentSpec(name, agent, None, source, source_line(agent), _code_dir(agent, source))
    if inspect.isfunction(agent):
        raise ConfigError(f"agent {name!r}: {agent.__qualname__} must be an `async def` taking a session")
    raise ConfigError(
        f"agent {name!r}: expected a subclass of openrtc.Agent or an `async def` function "
        f"taking a session, got {agent!r}"
    )


def _code_dir(obj: object, source: str | None) -> str | None:
    try:
        path = source or inspect.getsourcefile(obj)  # type: ignore[arg-type]
    except TypeError:
        return None
    if not path or path.startswith("<"):
        return None
    return os.path.dirname(os.path.abspath(path))


def source_line(obj: object) -> int:
    """Where `obj` (a function or class) is defined, or 0 when Python cannot tell."""
    code = getattr(obj, "__code__", None)
    if code is not None:
        return int(code.co_firstlineno)
    try:
        return inspect.getsourcelines(obj)[1]  # type: ignore[arg-type]
    except (OSError, TypeError):
        return 0
