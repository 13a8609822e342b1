"""`isolation="coroutine"`: every session is tasks on the worker's own event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from openrtc.errors import SessionRefused
from openrtc.runtime.agent import AgentSpec
from openrtc.runtime.session import Session, SessionState

log = logging.getLogger("openrtc.pool")


class InlineRunner:
    """Runs each session's code as a task of the worker's loop."""

    isolation = "coroutine"
    per_session_memory = False

    async def start(
        self, loop: asyncio.AbstractEventLoop, agents: list[tuple[AgentSpec, str | None]]
    ) -> None:
        return None

    async def prewarm(self, spec: AgentSpec, origin: str | None) -> dict[str, Any]:
        shared: dict[str, Any] = {}
        if spec.prewarm is not None:
            started = time.perf_counter()
            try:
                await spec.prewarm(shared)
            except Exception as exc:
                log.exception("prewarm of agent %r failed", spec.name)
                raise SessionRefused(
                    "prewarm_failed", f"prewarm of agent {spec.name!r} failed: {exc!r}"
                ) from exc
            log.info("prewarmed agent %r in %.0f ms", spec.name, (time.perf_counter() - started) * 1000)
        return shared

    async def reload(self, spec: AgentSpec, origin: str | None) -> dict[str, Any]:
        shared: dict[str, Any] = {}
        if spec.prewarm is not None:
            await spec.prewarm(shared)  # raises: the caller keeps the old version
        return shared

    async def run(self, session: Session, spec: AgentSpec) -> None:
        if session.state is SessionState.STARTING:
            session.state = SessionState.RUNNING
        session.running_at = time.perf_counter()
        await spec.entry(session)

    async def close(self) -> None:
        return None
