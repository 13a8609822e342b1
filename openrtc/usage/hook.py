"""Usage as one of the pool's hooks: gives each session its `session.usage`, sums what it records, and
writes every event of every session to the event log.

Events (`eventlog` has the line format): `session.start` {agent, tenant, metadata, worker_id, attempt},
`llm.call` and `tool.call` (from `session.usage`), `block` (from introspection), any other plug-in's,
and `session.end` {state, reason, error, wall_s, cpu_s, llm_s, tool_s, totals, cost_usd,
unknown_cost_calls, agent, tenant, started_at, worker_id, attempt}: the end repeats what a summary needs,
so a report over many sessions reads one line per session.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrtc.runtime.hooks import Hook
from openrtc.runtime.session import Session
from openrtc.runtime.view import PoolView
from openrtc.usage.eventlog import EventLog, Retention
from openrtc.usage.pricing import Pricing, PricingFile
from openrtc.usage.recorder import SessionUsage
from openrtc.usage.totals import Totals

log = logging.getLogger("openrtc.usage")


@dataclass(frozen=True)
class UsageConfig:
    """Where usage goes and how it is priced."""

    log_dir: Path | None = None
    """The event log's folder; None writes no log (the live totals are still kept)."""
    pricing_file: Path | None = None
    """The user's prices (`pricing`), consulted before genai-prices."""
    record_content: bool = False
    """Keep the prompts and outputs a call passes as `content` (off: they are never written)."""
    retention: Retention = field(default_factory=Retention)
    """How long the log keeps its files."""


class UsageHook(Hook):
    """See the module. Required: a worker whose event log folder is unsafe (a symlink, open to others)
    does not start."""

    required = True

    def __init__(self, config: UsageConfig | None = None) -> None:
        self.config = config or UsageConfig()
        file = PricingFile.load(self.config.pricing_file) if self.config.pricing_file is not None else None
        self.pricing = Pricing(file)
        self._ended = Totals()
        self._recording: dict[str, SessionUsage] = {}
        """The live sessions that recorded something, by id: a snapshot sums these, not every session."""
        self.event_log: EventLog | None = None
        self._worker_id = ""
        self._worker_seq = 0

    @property
    def name(self) -> str:
        return "usage"

    def child_setup(self) -> tuple[str, dict[str, Any]] | None:
        pricing = str(self.config.pricing_file) if self.config.pricing_file is not None else None
        return "openrtc.usage.recorder:attach_in_child", {
            "pricing_file": pricing,
            "record_content": self.config.record_content,
        }

    @property
    def totals(self) -> Totals:
        """Everything the worker's sessions recorded since it started: the ended ones' sums and the
        live ones' (any thread). Summed when asked, over the sessions that recorded something: a
        second sum per call would cost the loop on every call, and a walk over every session cost a
        10,000-session worker a fifth of each refresh of the live `top`."""
        out = Totals()
        out.merge(self._ended)
        for usage in list(self._recording.values()):  # a copy: the loop adds sessions meanwhile
            out.merge(usage.totals)
        return out

    def started(self, pool: PoolView) -> None:
        self._worker_id = pool.worker_id
        if self.config.log_dir is not None:
            self.event_log = EventLog(self.config.log_dir, pool.worker_id, self.config.retention)
            self.event_log.start()
            log.info("event log %s", self.event_log.path)

    def session_started(self, session: Session) -> None:
        usage = SessionUsage(session, self.pricing, self.config.record_content)
        session.usage = usage
        if self.event_log is None:
            usage.next_seq = 1  # the start's number, as if written: there is no log to write it to
            return
        data = {
            "agent": session.agent,
            "tenant": session.tenant,
            "metadata": dict(session.metadata),  # written later, by another thread
            "worker_id": self._worker_id,
            "attempt": session.attempt,
        }
        self._write(session, usage, "session.start", data, session.started_at)

    def session_event(self, session: Session | None, kind: str, data: dict[str, Any]) -> None:
        if session is None:
            if self.event_log is not None:
                self.event_log.write(None, self._worker_seq, kind, time.time(), data)
                self._worker_seq += 1
            return
        usage = session.usage
        if not isinstance(usage, SessionUsage):
            return  # started before this hook saw it
        usage.totals.add_event(kind, data)
        self._recording[session.id] = usage
        self._write(session, usage, kind, data, time.time())

    def session_finished(self, session: Session) -> None:
        usage = session.usage
        if not isinstance(usage, SessionUsage):
            return
        if self._recording.pop(session.id, None) is not None:
            self._ended.merge(usage.totals)
        if self.event_log is None:
            return  # the end's line sums the session up for the log; without a log, nothing more
        data = end_record(session, self._worker_id)
        assert data is not None
        self._write(session, usage, "session.end", data, time.time())

    def closed(self) -> None:
        if self.event_log is not None:
            self.event_log.close()

    def _write(
        self, session: Session, usage: SessionUsage, kind: str, data: dict[str, Any], ts: float
    ) -> None:
        seq = usage.next_seq
        usage.next_seq = seq + 1
        if self.event_log is not None:
            self.event_log.write(session.id, seq, kind, ts, data)


def end_record(session: Session, worker_id: str) -> dict[str, Any] | None:
    """A finished session summed up: the `session.end` event's data (what `openrtc stats` reads), or
    None for a session without `session.usage`. On the loop thread, once the session has ended."""
    usage = session.usage
    if not isinstance(usage, SessionUsage):
        return None
    totals = usage.totals
    ended = session.ended_at if session.ended_at is not None else time.perf_counter()
    return {
        "state": session.state.value,
        "reason": session.reason,
        "error": session.error_text,
        "wall_s": round(ended - session.started_mono, 6),
        "cpu_s": _cpu_s(session),
        "llm_s": round(totals.llm_s, 6),
        "tool_s": round(totals.tool_s, 6),
        "totals": totals.as_dict(),
        "cost_usd": totals.cost_usd,
        "unknown_cost_calls": totals.unknown_cost_calls,
        "agent": session.agent,
        "tenant": session.tenant,
        "started_at": session.started_at,
        "worker_id": worker_id,
        "attempt": session.attempt,
    }


def _cpu_s(session: Session) -> float | None:
    """Its loop time (introspection's step timer) in coroutine mode, its process's CPU in process mode."""
    if session.process is not None:
        return round(session.process.cpu_s, 6)
    busy = getattr(session.stats, "busy_s", None)
    return round(float(busy), 6) if busy is not None else None
