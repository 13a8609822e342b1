"""What `top` shows, as pure functions over snapshots: filtering, sorting, and the plain-text table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from openrtc.introspection import selection
from openrtc.introspection.schema import Block, SessionRow, Snapshot, UsageInfo
from openrtc.introspection.selection import Filters
from openrtc.usage.totals import usd


def select(rows: Sequence[SessionRow], filters: Filters, sort: str = "cpu") -> list[SessionRow]:
    """Rows that pass `filters`, sorted by `sort` (descending, except `agent`), slow ones first."""
    out = [r for r in rows if passes(r, filters)]
    return sorted(out, key=lambda r: order_key(r, sort))


def passes(row: SessionRow, filters: Filters) -> bool:
    return selection.passes(filters, row.agent, row.tenant, row.state, row.token_class, searched(row))


def searched(row: SessionRow) -> tuple[str, ...]:
    """What a search looks in."""
    where = row.last_block.where if row.last_block else ""
    return (row.session_id, row.agent, row.tenant or "", where, row.error or "")


def order_key(row: SessionRow, sort: str) -> tuple[bool, bool, float | str, str]:
    """Where `row` goes (`selection.order_key`)."""
    return selection.order_key(sort, row.slow, row.state, row.session_id, sort_value(row, sort), row.agent)


def sort_value(row: SessionRow, sort: str) -> float | None:
    if sort == "cost":  # no call yet: $0; an unknown cost: None
        return row.usage.cost_usd if row.usage is not None else 0.0
    if sort == "agent":
        return None
    return {"cpu": row.cpu_pct, "mem": row.mem_mb, "age": row.duration_s, "blocks": float(row.blocks)}[sort]


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
    """The worker's header: one line, and a second for its LLM usage once it has any."""
    w = s.worker
    cap = w.max_sessions if w.max_sessions is not None else "-"
    info = w.introspection
    flags = "  DRAINING" if w.draining else ""
    usage = ""
    if w.usage is not None and w.usage.calls:  # a line of its own: one line would wrap mid-figure
        u = w.usage
        unpriced = f" ({u.unknown_cost_calls} calls with no known price)" if u.unknown_cost_calls else ""
        usage = (
            f"\n  llm calls {u.calls:,}  tokens in {short(u.input_tokens)} out {short(u.output_tokens)}"
            f"  cache {cache_pct(u) or '-'}  cost {cost_text(u) or '-'}{unpriced}"
        )
        if w.classes:
            usage += "  classes " + " ".join(f"{name} {n}" for name, n in w.classes.items() if n)
        if w.kv_bytes is not None:
            usage += f"  kv {fmt_bytes(w.kv_bytes)}"
    return (
        f"worker {w.hostname}:{w.pid}  up {fmt_age(w.uptime_s)}  {w.loop}/{w.isolation}  "
        f"rss {w.rss_mb:.0f}MB  "
        f"cpu {w.cpu_pct:.0f}%  lag p50 {w.loop_lag_ms.p50:.1f}ms p99 {w.loop_lag_ms.p99:.1f}ms  "
        f"sessions {w.sessions_active}/{cap}  started {w.sessions_started}  failed {w.sessions_failed}  "
        f"sampler {info.sample_hz_achieved:.0f}/{info.sample_hz_target:.0f}Hz  errors {info.errors}"
        f"{flags}{usage}"
    )


def short(n: int) -> str:
    """A token count in at most 6 characters: 950, 12.3k, 1.23M."""
    if n >= 999_500:
        return f"{n / 1e6:.2f}M"
    if n >= 10_000:
        return f"{n / 1e3:.1f}k"
    return f"{n:,}"


def cache_pct(u: UsageInfo | None) -> str:
    """Cache reads over input, or blank without input."""
    if u is None or not u.input_tokens:
        return ""
    return f"{u.cache_read_tokens / u.input_tokens * 100:.0f}%"


def cost_text(u: UsageInfo | None) -> str:
    """`$0.0123`; a `?` after it when some calls had no known price; `?` alone when none had; blank with
    no call. Never `$0` for a cost nobody knows."""
    if u is None or not u.calls:
        return ""
    if u.cost_usd is None:
        return "?"
    return usd(u.cost_usd) + ("?" if u.unknown_cost_calls else "")


def model_table(models: dict[str, dict[str, object]]) -> list[str]:
    """The per-model lines of the details: calls, tokens, cache hit, cost."""
    header = ("MODEL", "CALLS", "IN", "CACHE READ", "CACHE WRITE", "OUT", "REASONING", "CACHE%", "COST")
    rows = [header]
    for key, m in sorted(models.items()):
        calls, tokens_in = int(str(m.get("calls") or 0)), int(str(m.get("input_tokens") or 0))
        read, unknown = int(str(m.get("cache_read_tokens") or 0)), int(str(m.get("unknown_cost_calls") or 0))
        cost = float(str(m.get("cost_usd") or 0.0))
        rows.append(
            (
                key,
                str(calls),
                short(tokens_in),
                short(read),
                short(int(str(m.get("cache_write_tokens") or 0))),
                short(int(str(m.get("output_tokens") or 0))),
                short(int(str(m.get("reasoning_tokens") or 0))),
                f"{read / tokens_in * 100:.0f}%" if tokens_in else "-",
                "?" if unknown == calls else usd(cost) + ("?" if unknown else ""),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return [
        "  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r)) for r in rows
    ]


def usage_cells(u: UsageInfo | None) -> tuple[str, str, str, str]:
    """IN, OUT, CACHE%, COST of a row (blank while nothing is recorded)."""
    if u is None or not u.calls:
        return ("", "", "", "")
    return (short(u.input_tokens), short(u.output_tokens), cache_pct(u), cost_text(u))


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
    "IN",
    "OUT",
    "CACHE%",
    "COST",
    "CLASS",
    "KV",
    "LAST BLOCK / ERROR",
)


USAGE_COLUMNS = ("IN", "OUT", "CACHE%", "COST")


def fmt_bytes(n: float | None) -> str:
    """A byte count in at most 7 characters: 512.0MB, 1.20GB, 12.3GB (10^6 and 10^9, as GPUs count)."""
    if n is None:
        return ""
    if n >= 9.995e9:
        return f"{n / 1e9:.1f}GB"
    if n >= 0.9995e9:
        return f"{n / 1e9:.2f}GB"
    return f"{n / 1e6:.1f}MB"


def has_usage(r: SessionRow) -> bool:
    """Whether the session made an LLM call (its usage columns say something)."""
    return r.usage is not None and r.usage.calls > 0


def drop(cells: tuple[str, ...], indexes: set[int]) -> tuple[str, ...]:
    return tuple(c for i, c in enumerate(cells) if i not in indexes)


def last_cell(r: SessionRow) -> str:
    """The table's last column: why a failed session failed, else its latest block."""
    if r.error:
        return r.error
    return f"{r.last_block.ms:.0f}ms {r.last_block.where}" if r.last_block else ""


def row_cells(r: SessionRow) -> tuple[str, ...]:
    last = last_cell(r)
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
        *usage_cells(r.usage),
        r.token_class or "",
        fmt_bytes(r.kv_bytes),
        last,
    )


def detail_lines(
    row: SessionRow, snapshot: Snapshot, socket_path: Path | None, last_profile: str | None = None
) -> list[tuple[str, str]]:
    """One session in full, as (line, style) pairs: every field, then its recent blocks with their
    stacks, newest first. Style `field` marks a `name\0value` line; others are plain text styles."""
    w = snapshot.worker
    where = f" ({socket_path})" if socket_path is not None else ""
    fields = [
        ("worker", f"{w.hostname}:{w.pid}{where}"),
        ("agent", row.agent),
        ("tenant", row.tenant or "-"),
        ("state", row.state + (f" ({row.reason})" if row.reason else "")),
        ("pid", str(row.pid) if row.pid is not None else "- (runs in the worker)"),
        ("age", fmt_age(row.duration_s)),
        ("cpu", f"{row.cpu_pct:.1f}% of one core over {w.introspection.window_s:g}s"),
        ("cpu time", f"{row.cpu_s:.3f}s since start"),
        ("memory", f"{row.mem_mb:.1f} MB (equal share of the worker's RSS), peak {row.peak_mb:.1f} MB"),
        ("tasks", str(row.tasks)),
        (
            "slow",
            f"yes (blocked the loop in the last {w.introspection.slow_for_s:g} s)" if row.slow else "no",
        ),
        ("blocks", str(row.blocks)),
    ]
    # With the memory lines: a session's KV cache is memory too, on the GPU that serves it.
    at = [name for name, _ in fields].index("memory") + 1
    if row.token_class is not None:
        fields.insert(at, ("class", row.token_class))
        at += 1
    if row.kv_bytes is not None:
        fields.insert(
            at, ("kv cache", f"{fmt_bytes(row.kv_bytes) or '0'} (estimated from its current context)")
        )
    if row.error:
        fields.append(("error", row.error))
    if row.last_block is not None:
        still = " (still going on)" if row.last_block.ongoing else ""
        fields.append(("last block", f"{row.last_block.ms:.0f} ms at {row.last_block.where}{still}"))
    u = row.usage
    if u is not None and u.calls:
        fields.append(
            (
                "tokens",
                f"in {u.input_tokens:,} (cache read {u.cache_read_tokens:,}, "
                f"write {u.cache_write_tokens:,})  out {u.output_tokens:,} "
                f"(reasoning {u.reasoning_tokens:,})  cache hit {cache_pct(u) or '-'}",
            )
        )
        unknown = (
            f" ({u.unknown_cost_calls} of {u.calls} calls with no known price)"
            if u.unknown_cost_calls
            else ""
        )
        fields.append(("cost", f"{cost_text(u) or '-'}{unknown}"))
    if u is not None and (u.tools_ok or u.tools_failed):
        fields.append(("tools", f"{u.tools_ok} ok, {u.tools_failed} failed"))
    if last_profile is not None:  # the live view's: `top --once` records none
        fields.append(("profile", last_profile))
    out: list[tuple[str, str]] = [(f"session {row.session_id}", "bold")]
    out += [(f"  {name:<11}\0{value}", "field") for name, value in fields]
    if u is not None and u.models:
        out += [("", ""), ("calls per model", "bold")]
        out += [(f"  {line}", "") for line in model_table(u.models)]
    blocks = [b for b in reversed(snapshot.blocks) if b.session_id == row.session_id]
    kept = w.introspection.blocks_kept
    out += [("", ""), (f"recent blocks ({len(blocks)} in the worker's last {kept})", "bold")]
    if not blocks:
        out.append(("  none", "dim"))
    for block in blocks:
        head = "ONGOING " if block.ongoing else ""
        out += [("", ""), (f"  {head}{block.ms:,.0f} ms at {block.where}", "bold red")]
        out += [(f"      {frame}", "") for frame in block.stack]
    return out


def render_detail(row: SessionRow, snapshot: Snapshot, socket_path: Path | None = None) -> str:
    """`detail_lines` as plain text (`top --once --session`)."""
    return "\n".join(line.replace("\0", "") for line, _ in detail_lines(row, snapshot, socket_path)) + "\n"


BOLD, RED, RESET = "\x1b[1m", "\x1b[31m", "\x1b[0m"


def render_text(snapshots: Sequence[Snapshot], filters: Filters, sort: str, color: bool = False) -> str:
    """The plain table `top --once` prints: per worker a header, a pinned stall if any, then sessions.

    With `color`, headers are bold and the stall and slow sessions red (ANSI escapes).
    """

    def paint(text: str, *codes: str) -> str:
        return "".join(codes) + text + RESET if color else text

    lines: list[str] = []
    for snap in snapshots:
        lines.append(paint(worker_line(snap), BOLD))
        stall = ongoing_stall(snap)
        if stall is not None:
            who = f"session {stall.session_id} ({stall.agent})" if stall.session_id else "no session"
            lines.append(paint(f"STALL NOW {stall.ms:.0f}ms by {who} at {stall.where}", BOLD, RED))
        selected = select(snap.sessions, filters, sort)
        rows: list[tuple[str, ...]] = [row_cells(r) for r in selected]
        header: tuple[str, ...] = COLUMNS
        if any(r.pid is not None for r in selected):  # process isolation: each session's own pid
            header = (COLUMNS[0], "PID", *COLUMNS[1:])
            rows = [(c[0], str(r.pid or "-"), *c[1:]) for c, r in zip(rows, selected, strict=True)]
        gone: set[int] = set()
        if not any(has_usage(r) for r in selected):  # a worker with no LLM call keeps its width
            gone |= {header.index(name) for name in USAGE_COLUMNS}
        if all(r.token_class is None for r in selected):
            gone.add(header.index("CLASS"))
        if all(r.kv_bytes is None for r in selected):
            gone.add(header.index("KV"))
        header, rows = drop(header, gone), [drop(c, gone) for c in rows]
        table = [header, *rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        for i, row in enumerate(table):
            line = "  ".join(cell.ljust(widths[j]) for j, cell in enumerate(row)).rstrip()
            lines.append(paint(line, RED) if i and selected[i - 1].slow else line)
        if not rows:
            lines.append("(no session matches)")
        chosen = snap.selection
        if chosen is not None and chosen.matched > len(selected):
            lines.append(f"({len(selected)} of {chosen.matched} sessions, the first by {chosen.sort})")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


class PlannedRow(NamedTuple):
    """One row of the live table: the texts of its columns, then what sets its styles. A tuple, so a
    row that did not change compares equal and is not drawn again."""

    worker: str
    session: str
    pid: str
    agent: str
    tenant: str
    state: str
    age: str
    cpu: str
    bar: str
    mem: str
    blocks: str
    tokens_in: str
    tokens_out: str
    cache: str
    cost: str
    token_class: str
    kv: str
    last: str
    slow: bool
    """The session blocked the loop lately (the row is red)."""
    state_value: str
    """The session's state, without the `!` of a slow one."""
    cpu_pct: float
    """Its CPU share, for the bar's colour."""


@dataclass(frozen=True)
class TablePlan:
    """The session table one refresh wants: computed off the UI thread, then applied as a diff."""

    rows: dict[str, tuple[Path, SessionRow]]
    """Per row key (`<socket>|<session id>`): the worker's socket and the session."""
    cells: dict[str, PlannedRow]
    """Per row key: what its row shows."""
    order: list[str]
    """The row keys in display order."""


def planned_row(worker: str, r: SessionRow) -> PlannedRow:
    """The live table's row for session `r` of the worker labelled `worker`."""
    (
        session,
        agent,
        tenant,
        state,
        age,
        cpu,
        bar,
        mem,
        _,
        _,
        blocks,
        tin,
        tout,
        cache,
        cost,
        klass,
        kv,
        last,
    ) = row_cells(r)
    pid = str(r.pid) if r.pid is not None else "-"
    return PlannedRow(
        worker,
        session,
        pid,
        agent,
        tenant,
        state,
        age,
        cpu,
        bar,
        mem,
        blocks,
        tin,
        tout,
        cache,
        cost,
        klass,
        kv,
        last,
        r.slow,
        r.state,
        r.cpu_pct,
    )


def plan_table(
    workers: Iterable[tuple[Path, Snapshot]], filters: Filters, sort: str, only: Path | None = None
) -> TablePlan:
    """The rows of every worker's snapshot (or only the worker at `only`) that pass `filters`, sorted."""
    rows: dict[str, tuple[Path, SessionRow]] = {}
    cells: dict[str, PlannedRow] = {}
    for path, snapshot in workers:
        if only is not None and path != only:
            continue
        prefix, label = f"{path}|", str(snapshot.worker.pid)
        for row in snapshot.sessions:
            if passes(row, filters):
                key = prefix + row.session_id
                rows[key] = (path, row)
                cells[key] = planned_row(label, row)
    order = sorted(rows, key=lambda k: order_key(rows[k][1], sort))
    return TablePlan(rows, cells, order)
