"""The read side of a running pool, for other threads and front ends: `PoolView`.

Every read here is safe from any thread: the pool publishes values whole (ints, tuples, frozen
objects) and containers are copied in one C call. What a worker says about itself is defined once,
`WorkerFacts`: the socket's `hello` and the snapshot's `worker` both start from it.
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from openrtc.runtime.loops import loop_name
from openrtc.runtime.session import Session

if TYPE_CHECKING:
    from openrtc.runtime.config import PoolConfig
    from openrtc.runtime.control import PoolControl
    from openrtc.runtime.pool import Pool

HOSTNAME = socket.gethostname()
PYTHON = platform.python_version()


@dataclass(frozen=True)
class WorkerFacts:
    """What a worker says about itself, the same wherever it is said."""

    worker_id: str
    """Random id, stable for the worker's life."""
    pid: int
    """Process id."""
    hostname: str
    """Host name."""
    started_at: float
    """Unix time the worker started."""
    isolation: str
    """`coroutine` or `process`."""
    loop: str
    """`uvloop` or `asyncio`."""
    python: str
    """Python version."""
    agents: tuple[str, ...]
    """The agents it can run."""
    sessions_active: int
    """Sessions not finished."""
    sessions_started: int
    """Sessions started since the worker started."""
    sessions_failed: int
    """Sessions that failed since the worker started."""
    sessions_refused: dict[str, int]
    """Sessions refused since the worker started, by reason."""
    max_sessions: int | None
    """The worker's session cap, or None."""
    draining: bool
    """True once a drain started (or before the start): no new sessions."""
    memory_limit_mb: float | None
    """RSS above which new sessions are refused (per session process in process mode), or None."""
    drain_timeout_s: float
    """How long a drain waits before cancelling what is left."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["agents"] = list(self.agents)
        return out


class PoolView:
    """What other threads may read of a pool (see the module)."""

    def __init__(self, pool: Pool, loop: asyncio.AbstractEventLoop) -> None:
        self._pool = pool
        self.loop = loop
        """The pool's event loop: reach it only with `call_soon_threadsafe` (or `PoolControl`)."""
        self.loop_name = loop_name(loop)
        self.pid = os.getpid()
        self.control: PoolControl | None = None
        """The pool's control side (set by the pool): the one way for another thread to act on it."""

    @property
    def config(self) -> PoolConfig:
        return self._pool.config

    @property
    def worker_id(self) -> str:
        return self._pool.worker_id

    @property
    def started_at(self) -> float:
        return self._pool.started_at

    @property
    def state(self) -> str:
        """`new`, `starting`, `running`, `draining` or `closed`."""
        return self._pool.state

    @property
    def memory_full(self) -> bool:
        """True while the worker's RSS is above its memory limit: new sessions are refused."""
        return self._pool.memory.above_limit

    def sessions(self) -> list[Session]:
        """The active sessions (a copy)."""
        return list(self._pool.sessions.values())

    def session(self, session_id: str) -> Session | None:
        """An active session by id, or None."""
        return self._pool.sessions.get(session_id)

    def emit(self, kind: str, data: dict[str, Any], session: Session | None = None) -> None:
        """Tell every hook of an event (the worker's own when `session` is None). Loop thread only."""
        self._pool.emit(session, kind, data)

    def code_dirs(self, agent: str) -> tuple[str, ...]:
        """The folders whose frames count as `agent`'s own code."""
        return self._pool.code_dirs(agent)

    def facts(self) -> WorkerFacts:
        pool, config = self._pool, self._pool.config
        return WorkerFacts(
            worker_id=pool.worker_id,
            pid=self.pid,
            hostname=HOSTNAME,
            started_at=pool.started_at,
            isolation=config.isolation,
            loop=self.loop_name,
            python=PYTHON,
            agents=pool.agent_names,
            sessions_active=pool.sessions_active,
            sessions_started=pool.sessions_started,
            sessions_failed=pool.sessions_failed,
            sessions_refused=dict(pool.sessions_refused),
            max_sessions=config.limits.max_sessions,
            draining=pool.state != "running",
            memory_limit_mb=config.memory.limit_mb,
            drain_timeout_s=config.drain_timeout_s,
        )
