"""Introspection as one of the pool's hooks: it owns the monitor (watchdog, heartbeat, windows), the
task tagger, the socket daemon and the recently ended sessions the snapshot shows.

`openrtc.AgentPool(enable_introspection=True)` adds it first among the hooks; with `False` there is no
such hook at all: no thread, no socket, no task factory, no timer.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrtc.introspection import timing
from openrtc.introspection.daemon import Daemon
from openrtc.introspection.monitor import Monitor
from openrtc.introspection.schema import ENDED_KEEP_S
from openrtc.introspection.selection import Selection
from openrtc.introspection.server import OpHandler
from openrtc.introspection.tagging import TaskTagger, session_of
from openrtc.runtime.config import positive
from openrtc.runtime.hooks import Hook
from openrtc.runtime.memory import process_rss_mb
from openrtc.runtime.session import Session
from openrtc.runtime.view import PoolView
from openrtc.usage.hook import UsageHook

log = logging.getLogger("openrtc.introspection")

RECENTLY_ENDED_MAX = 1000
"""At most this many finished sessions are remembered for snapshots, and none longer than the
snapshots show them (`ENDED_KEEP_S`)."""


@dataclass(frozen=True)
class IntrospectionConfig:
    """The introspection's settings."""

    slow_session_threshold_ms: float = 50.0
    """A loop stall longer than this is recorded as a block."""
    socket_path: Path | None = None
    """Where the worker listens; None means `<socket folder>/<pid>.sock`."""

    def __post_init__(self) -> None:
        positive("slow_session_threshold_ms", self.slow_session_threshold_ms)


class IntrospectionHook(Hook):
    """Measures each session's share of the loop, catches stalls, and serves snapshots on the socket.

    Required: a worker whose socket cannot be opened safely does not start (the operator would not
    see it at all)."""

    required = True

    def __init__(
        self,
        config: IntrospectionConfig,
        usage: UsageHook | None = None,
        ops: dict[str, OpHandler] | None = None,
    ) -> None:
        self.config = config
        self.usage = usage
        """Where the snapshot's worker-wide usage totals come from (None: the snapshot has none)."""
        self.ops = dict(ops or {})
        """More ops for the socket, from other plug-ins (`profile`); read when the socket opens."""
        self.monitor: Monitor | None = None
        self.daemon: Daemon | None = None
        self._tagger: TaskTagger | None = None
        self._view: PoolView | None = None
        self.recently_ended: collections.deque[Session] = collections.deque(maxlen=RECENTLY_ENDED_MAX)
        """Finished sessions, newest last, for the snapshot's recently-ended rows."""
        self._prune_timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return "introspection"

    @property
    def socket_path(self) -> Path | None:
        """Where the worker listens, once started."""
        return self.daemon.socket_path if self.daemon is not None else None

    def started(self, pool: PoolView) -> None:
        assert pool.control is not None
        self._view = pool
        monitor = Monitor(
            self.config.slow_session_threshold_ms,
            pool.sessions,
            pool.code_dirs,
            process_rss_mb,
            on_rss=pool.control.observe_rss,
        )
        self.monitor = monitor
        self._tagger = TaskTagger(monitor.clock)
        self._tagger.install(pool.loop)
        if timing.NATIVE is None:
            log.warning(
                "the C step timer was not built (no C compiler when openrtc was installed?): "
                "steps are timed in pure Python, about 10x the cost per step"
            )
        usage = self.usage
        worker_usage = (lambda: usage.totals) if usage is not None else None
        self.daemon = Daemon(
            pool, monitor, self.ended_sessions, self.config.socket_path, worker_usage, self.ops
        )
        try:
            self.daemon.start()
        except BaseException:
            self._tagger.uninstall()
            raise
        log.info("introspection socket %s", self.daemon.socket_path)

    def session_started(self, session: Session) -> None:
        if self.monitor is not None:
            session.stats = self.monitor.timer.stats(session)
        ledger = self.daemon.ledger if self.daemon is not None else None
        if ledger is not None:
            ledger.started(session.id, session.agent, session.tenant)

    def session_finished(self, session: Session) -> None:
        self.recently_ended.append(session)
        self._prune_ended()
        ledger = self.daemon.ledger if self.daemon is not None else None
        if ledger is not None:
            ledger.ended(session.id)

    def closed(self) -> None:
        if self._prune_timer is not None:
            self._prune_timer.cancel()
            self._prune_timer = None
        if self.daemon is not None:
            self.daemon.close()
            self.daemon = None
        if self._tagger is not None:
            self._tagger.uninstall()
            self._tagger = None
        self.monitor = None

    def loop_holder(self) -> str | None:
        return self.daemon.describe_holder() if self.daemon is not None else None

    def emergency_exit(self) -> None:
        if self.daemon is not None:
            self.daemon.remove_files()

    # -- what front ends and tests read ----------------------------------------------------------

    def ended_sessions(self) -> list[Session]:
        """Finished sessions the snapshot still shows (a copy; safe from any thread)."""
        now = time.perf_counter()
        return [s for s in list(self.recently_ended) if s.ended_at and now - s.ended_at <= ENDED_KEEP_S]

    def snapshot(self, want: Selection | None = None) -> dict[str, Any]:
        """The snapshot, as the socket's `snapshot` op returns it (every session, or `want`'s)."""
        if self.daemon is None:
            raise RuntimeError("introspection has not started")
        return self.daemon.snapshot(want)

    def session_of(self, task: asyncio.Future[Any]) -> Session | None:
        """The session that owns a task; None when untagged."""
        if self._view is None:
            return None
        return session_of(task, {s.id: s for s in self._view.sessions()})

    def _prune_ended(self) -> None:
        """Forget ended sessions once no snapshot shows them; re-arms itself while some remain."""
        ended, now = self.recently_ended, time.perf_counter()
        while ended and ended[0].ended_at is not None and now - ended[0].ended_at > ENDED_KEEP_S:
            ended.popleft()
        loop = self._view.loop if self._view is not None else None
        if ended and self._prune_timer is None and loop is not None and not loop.is_closed():

            def again() -> None:
                self._prune_timer = None
                self._prune_ended()

            self._prune_timer = loop.call_later(ENDED_KEEP_S + 1.0, again)
