"""The control side of a running pool: the one thread-safe door into it, for front ends on other
threads (the socket server, the fleet dispatcher). Everything else they do is read through `PoolView`.

Each call schedules the work on the pool's event loop, in a fresh context (never the caller's: a
session's context would make the work one of its tasks), and returns a `concurrent.futures.Future`
the caller may wait on or attach a callback to. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from openrtc.errors import OpenRTCError, SessionRefused, UnknownAgentError

if TYPE_CHECKING:
    from openrtc.runtime.pool import Pool


@dataclass(frozen=True)
class Started:
    """What a request to start sessions did."""

    session_ids: list[str] = field(default_factory=list)
    """The sessions started, in order (some, when a refusal stopped the rest)."""
    error: OpenRTCError | None = None
    """Why it stopped short: `UnknownAgentError` or `SessionRefused` (with its `reason`), else None."""


class PoolControl:
    """Start, cancel and drain, from any thread."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self._loop = loop

    def start_sessions(
        self,
        agent: str,
        *,
        tenant: str | None = None,
        metadata: dict[str, Any] | None = None,
        count: int = 1,
        session_ids: list[str] | None = None,
        attempt: int = 1,
    ) -> concurrent.futures.Future[Started]:
        """Start `count` sessions of `agent` (with the given ids, if any): a future of `Started`."""
        return self._submit(self._start(agent, tenant, metadata or {}, count, session_ids, attempt))

    async def _start(
        self,
        agent: str,
        tenant: str | None,
        metadata: dict[str, Any],
        count: int,
        session_ids: list[str] | None,
        attempt: int,
    ) -> Started:
        started: list[str] = []
        try:
            for i in range(count):
                wanted = session_ids[i] if session_ids is not None and i < len(session_ids) else None
                handle = await self._pool.start_session(
                    agent, tenant=tenant, metadata=metadata, session_id=wanted, attempt=attempt
                )
                started.append(handle.id)
        except (UnknownAgentError, SessionRefused) as exc:
            return Started(started, exc)
        return Started(started)

    def cancel(self, session_id: str, reason: str = "cancelled_by_user") -> concurrent.futures.Future[bool]:
        """Cancel an active session: a future of True, or False when no such session is active."""

        async def cancel() -> bool:
            return self._pool.cancel(session_id, reason)

        return self._submit(cancel())

    def drain(self) -> None:
        """Begin the drain (it goes on in the background); raises `RuntimeError` if the loop is closed."""
        self._loop.call_soon_threadsafe(self._pool.request_drain, context=contextvars.Context())

    def observe_rss(self, rss_mb: float) -> None:
        """Check the worker's memory thresholds against an RSS reading taken on another thread (it only
        compares and logs: safe from any thread)."""
        self._pool.observe_rss(rss_mb)

    def _submit(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        try:
            return contextvars.Context().run(asyncio.run_coroutine_threadsafe, coro, self._loop)
        except RuntimeError:
            coro.close()
            raise
