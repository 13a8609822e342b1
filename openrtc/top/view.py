"""What `top` shows, as pure functions over snapshots: filtering, sorting, and the plain-text table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from openrtc.introspection.schema import Block, SessionRow, Snapshot

SORT_KEYS = ("cpu", "mem", "age", "blocks", "agent")
STATES = ("starting", "running", "draining", "ended", "failed", "cancelled")


@dataclass(frozen=True)
class Filters:
    """What the operator asked to see."""

    agent: str | None = None
    """Only this agent."""
    tenant: str | None = None
    """Only this tenant."""
    status: str | None = None
    """Only this state."""
    search: str | None = None
    """Only rows whose id, agent, tenant or last block contain this text."""


def select(rows: Sequence[SessionRow], filters: Filters, sort: str = "cpu") -> list[SessionRow]:
    """Rows that pass `filters`, sorted by `sort` (descending, except `agent`), slow ones first."""
    out = [
        r
        for r in rows
        if (filters.agent is None or r.agent == filters.agent)
        and (filters.tenant is None or r.tenant == filters.tenant)
        and (filters.status is None or r.state == filters.status)
        and (filters.search is None or _matches(r, filters.search))
    ]
    return sorted(out, key=lambda r: (not r.slow, _sort_key(r, sort), r.session_id))


def _sort_key(row: SessionRow, sort: str) -> float | str:
    if sort == "agent":
        return row.agent
    value = {"cpu": row.cpu_pct, "mem": row.mem_mb, "age": row.duration_s, "blocks": float(row.blocks)}[sort]
    return -value


def _matches(row: SessionRow, text: str) -> bool:
    text = text.lower()
    hay = [row.session_id, row.agent, row.tenant or "", row.last_block.where if row.last_block else ""]
    return any(text in h.lower() for h in hay)


def ongoing_stall(snapshot: Snapshot) -> Block | None:
    """The stall in progress, if any (pinned at the top of the view)."""
    return next((b for b in reversed(snapshot.blocks) if b.ongoing), None)


def fmt_age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def cpu_bar(pct: float, width: int = 10) -> str:
    filled = round(min(100.0, max(0.0, pct)) / 100 * width)
    return "#" * filled + "." * (width - filled)


def worker_line(s: Snapshot) -> str:
    w = s.worker
    cap = w.max_sessions if w.max_sessions is not None else "-"
    info = w.introspection
    flags = "  DRAINING" if w.draining else ""
    return (
        f"worker {w.hostname}:{w.pid}  up {fmt_age(w.uptime_s)}  {w.loop}/{w.isolation}  "
        f"rss {w.rss_mb:.0f}MB  "
        f"cpu {w.cpu_pct:.0f}%  lag p50 {w.loop_lag_ms.p50:.1f}ms p99 {w.loop_lag_ms.p99:.1f}ms  "
        f"sessions {w.sessions_active}/{cap}  started {w.sessions_started}  failed {w.sessions_failed}  "
        f"sampler {info.sample_hz_achieved:.0f}/{info.sample_hz_target:.0f}Hz  errors {info.errors}{flags}"
    )


COLUMNS = (
    "SESSION",
    "AGENT",
    "TENANT",
    "STATE",
    "AGE",
    "CPU%",
    "",
    "MEM",
    "PEAK",
    "TASKS",
    "BLOCKS",
    "LAST BLOCK",
)


def row_cells(r: SessionRow) -> tuple[str, ...]:
    last = f"{r.last_block.ms:.0f}ms {r.last_block.where}" if r.last_block else ""
    state = f"{r.state}!" if r.slow else r.state
    return (
        r.session_id[:8],
        r.agent,
        r.tenant or "-",
        state,
        fmt_age(r.duration_s),
        f"{r.cpu_pct:.1f}",
        cpu_bar(r.cpu_pct),
        f"{r.mem_mb:.1f}",
        f"{r.peak_mb:.1f}",
        str(r.tasks),
        str(r.blocks),
        last,
    )


def render_text(snapshots: Sequence[Snapshot], filters: Filters, sort: str) -> str:
    """The plain table `top --once` prints: per worker a header, a pinned stall if any, then sessions."""
    lines: list[str] = []
    for snap in snapshots:
        lines.append(worker_line(snap))
        stall = ongoing_stall(snap)
        if stall is not None:
            who = f"session {stall.session_id} ({stall.agent})" if stall.session_id else "no session"
            lines.append(f"STALL NOW {stall.ms:.0f}ms by {who} at {stall.where}")
        rows = [row_cells(r) for r in select(snap.sessions, filters, sort)]
        table = [COLUMNS, *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
        for row in table:
            lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if not rows:
            lines.append("(no session matches)")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
