"""How a session's code runs: in the worker's own event loop (`InlineRunner`, `isolation="coroutine"`)
or in a process of its own (`ProcessRunner`, `isolation="process"`). The pool holds one runner and
calls it the same way whatever the isolation: start, prewarm each agent, run each session, close.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from openrtc.runtime.agent import AgentSpec
from openrtc.runtime.session import Session


class SessionRunner(Protocol):
    """One isolation's way of running sessions."""

    isolation: str
    """`coroutine` or `process`."""
    per_session_memory: bool
    """True when the memory thresholds apply to each session (its process), not to the worker."""

    async def start(
        self, loop: asyncio.AbstractEventLoop, agents: list[tuple[AgentSpec, str | None]]
    ) -> None:
        """Get ready to run these agents (each with its `module:qualname` origin when added from code)."""

    async def prewarm(self, spec: AgentSpec, origin: str | None) -> dict[str, Any]:
        """Run the agent's prewarm once; returns the dict its sessions get as `shared` here. Raises
        `SessionRefused("prewarm_failed")` when it fails."""

    async def reload(self, spec: AgentSpec, origin: str | None) -> dict[str, Any]:
        """Prewarm a new version of a running agent (hot reload); raises to keep the old one."""

    async def run(self, session: Session, spec: AgentSpec) -> None:
        """Run the session to its end. Returns when it ended; raises what its code raised, or
        `SessionFailed` for an end found outside it (a process's exit); `CancelledError` when cancelled."""

    async def close(self) -> None:
        """Stop: nothing of the runner outlives this."""


def make_runner(
    isolation: str,
    memory_warn_mb: float | None,
    memory_limit_mb: float | None,
    child_setups: list[tuple[str, dict[str, Any]]],
) -> SessionRunner:
    if isolation == "process":
        from openrtc.runtime.runners.process import ProcessRunner

        return ProcessRunner(memory_warn_mb, memory_limit_mb, child_setups)
    from openrtc.runtime.runners.inline import InlineRunner

    return InlineRunner()
