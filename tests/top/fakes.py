"""Fixed snapshots and a source that serves them, for driving the live view without sockets."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from openrtc.introspection.schema import (
    Block,
    IntrospectionInfo,
    LastBlock,
    LoopLag,
    SessionRow,
    Snapshot,
    UsageInfo,
    WorkerInfo,
)
from openrtc.introspection.selection import Selection
from openrtc.top.source import Fetch, WorkerView

FOLDER = Path("/run/user/1000/openrtc")
STACK = [
    "agents/support.py:31 in run",
    "agents/support.py:14 in lookup",
    "/usr/lib/python3.11/json/__init__.py:231 in dumps",
]


def row(sid: str, **kw: Any) -> SessionRow:
    base: dict[str, Any] = dict(
        session_id=sid,
        agent="chat",
        tenant=None,
        state="running",
        reason=None,
        pid=None,
        started_at=1_700_000_000.0,
        duration_s=42.0,
        cpu_pct=1.0,
        cpu_s=0.4,
        mem_mb=0.6,
        peak_mb=0.7,
        tasks=2,
        slow=False,
        blocks=0,
        last_block=None,
    )
    base.update(kw)
    return SessionRow(**base)


def usage(calls: int, tokens_in: int, read: int, out: int, cost: float | None, unknown: int = 0) -> UsageInfo:
    model = {
        "calls": calls,
        "input_tokens": tokens_in,
        "output_tokens": out,
        "cache_read_tokens": read,
        "cache_write_tokens": 0,
        "reasoning_tokens": 0,
        "cost_usd": cost or 0.0,
        "unknown_cost_calls": unknown,
        "unknown_token_calls": 0,
        "llm_s": 1.5,
    }
    return UsageInfo(calls, tokens_in, out, read, 0, 0, cost, unknown, 1, 0, {"openai/gpt-4o-mini": model})


def worker(pid: int = 4242, **kw: Any) -> WorkerInfo:
    base: dict[str, Any] = dict(
        worker_id="w" * 12,
        pid=pid,
        hostname="box",
        started_at=1_700_000_000.0,
        uptime_s=754.0,
        isolation="coroutine",
        loop="uvloop",
        python="3.11.9",
        rss_mb=61.0,
        cpu_pct=38.0,
        loop_lag_ms=LoopLag(0.4, 3.1, 12.0),
        sessions_active=6,
        sessions_started=131,
        sessions_failed=2,
        max_sessions=200,
        draining=False,
        memory_limit_mb=None,
        introspection=IntrospectionInfo(True, 5.0, 50.0, 49.8, 0, None, 0.3),
    )
    base.update(kw)
    return WorkerInfo(**base)


def mixed_snapshot(pid: int = 4242, stall: bool = False) -> Snapshot:
    """One worker with a mix of states: a slow support session, a CPU-heavy voice one, ended ones."""
    where = "agents/support.py:14 in lookup"
    sessions = [
        row(
            "3f2a9c01d4e5",
            agent="support",
            tenant="acme",
            cpu_pct=61.5,
            cpu_s=12.3,
            blocks=3,
            slow=True,
            last_block=LastBlock(320.0, 1_700_000_700.0, where),
            usage=usage(4, 18_400, 12_288, 910, 0.0029),
            token_class="light",
            kv_bytes=2_531_000_000,
        ),
        row(
            "8b1d0e77aa01", agent="voice", tenant="acme", cpu_pct=24.0, cpu_s=30.1, duration_s=301.0, tasks=5
        ),
        row(
            "c0ffee112233",
            agent="chat",
            tenant="globex",
            cpu_pct=3.2,
            duration_s=12.0,
            usage=usage(2, 2_100, 0, 240, None, unknown=2),
            token_class="medium",
            kv_bytes=306_000_000,
        ),
        row("d00d00445566", agent="chat", tenant=None, cpu_pct=0.4, state="starting", duration_s=0.0),
        row(
            "e1e1e1778899",
            agent="voice",
            tenant="globex",
            cpu_pct=0.0,
            state="failed",
            reason="exception",
            error="RuntimeError: boom from crasher",
        ),
        row("f4f4f4aabbcc", agent="chat", tenant="acme", cpu_pct=0.0, state="ended", duration_s=95.0),
    ]
    blocks = [
        Block("3f2a9c01d4e5", "support", 310.0, 1_700_000_600.0, where, STACK, False, "session"),
        Block(None, None, 80.0, 1_700_000_650.0, "overload: loop 80 ms late", [], False, "overload"),
        Block("3f2a9c01d4e5", "support", 320.0, 1_700_000_700.0, where, STACK, False, "session"),
    ]
    if stall:
        blocks.append(
            Block("3f2a9c01d4e5", "support", 1840.0, 1_700_000_750.0, where, STACK, True, "session")
        )
    totals = usage(131, 1_250_000, 830_000, 64_000, 0.4123, unknown=3)
    worker_info = worker(pid, usage=totals, classes={"light": 1, "medium": 1}, kv_bytes=2_837_000_000)
    return Snapshot(1, 1_700_000_754.0, worker_info, sessions, blocks)


def view(snapshot: Snapshot | None, name: str = "4242.sock", **kw: Any) -> WorkerView:
    base: dict[str, Any] = dict(socket_path=FOLDER / name, snapshot=snapshot, error=None, gone=False)
    base.update(kw)
    return WorkerView(**base)


@dataclass
class FakeSource:
    """Serves `fetches` in turn (the last one forever) and records cancels."""

    fetches: list[Fetch]
    folder: Path = FOLDER
    cancelled: list[tuple[Path, str]] = field(default_factory=list)
    profiled: list[tuple[Path, str | None, float]] = field(default_factory=list)
    calls: int = 0
    wants: list[Selection | None] = field(default_factory=list)

    def fetch(self, want: Selection | None = None) -> Fetch:
        self.calls += 1
        self.wants.append(want)
        return self.fetches[min(self.calls, len(self.fetches)) - 1]

    def cancel(self, socket_path: Path, session_id: str) -> None:
        self.cancelled.append((socket_path, session_id))

    def profile(self, socket_path: Path, session_id: str | None, seconds: float) -> Path:
        self.profiled.append((socket_path, session_id, seconds))
        return Path(f"/profiles/{session_id or 'worker'}.svg")


def source(*views: WorkerView) -> FakeSource:
    return FakeSource([Fetch(FOLDER, tuple(views))])


def bumped(snapshot: Snapshot, **changes: Any) -> Snapshot:
    """`snapshot` with every session's fields changed by `changes` (e.g. cpu_pct)."""
    return replace(snapshot, sessions=[replace(r, **changes) for r in snapshot.sessions])
