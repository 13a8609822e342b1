"""`openrtc stats`'s reports, as pure functions over session summaries: time windows, usage grouped by
agent, model, provider or tenant, history, a side-by-side comparison, and the tables they print as."""

from __future__ import annotations

import calendar
import csv
import heapq
import html
import io
import math
import re
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

from openrtc.errors import ConfigError
from openrtc.stats.summary import (
    AGENT,
    CPU_S,
    INCOMPLETE,
    MODEL_ROW,
    MODELS,
    STARTED_AT,
    STATE,
    TENANT,
    TOOL_S,
    WALL_S,
    ModelRow,
    Raw,
    SessionSummary,
    from_summary,
)
from openrtc.usage.totals import COST_DIGITS, ModelTotals, usd

GROUPS = ("agent", "model", "provider", "tenant")
DAY = 86400.0


def parse_since(text: str, now: float) -> tuple[float, float | None]:
    """`today`, `7d`, `30d`, `YYYY-MM-DD` (from that day on) or `YYYY-MM-DD..YYYY-MM-DD` (both days
    whole), in UTC: (since, until or None)."""
    text = text.strip()
    if text == "today":
        day = time.gmtime(now)
        return float(calendar.timegm((day.tm_year, day.tm_mon, day.tm_mday, 0, 0, 0, 0, 0, 0))), None
    if match := re.fullmatch(r"(\d+)([dh])", text):
        span = int(match.group(1)) * (DAY if match.group(2) == "d" else 3600.0)
        return now - span, None
    if ".." in text:
        first, _, last = text.partition("..")
        return _day(first, text), _day(last, text) + DAY - 1e-6
    return _day(text, text), None


def _day(text: str, whole: str) -> float:
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%d")))
    except ValueError:
        raise ConfigError(
            f"--since {whole!r}: expected today, 7d, 30d, YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD (UTC)"
        ) from None


@dataclass(frozen=True)
class Group:
    """The usage of the sessions of one group (an agent, a model...)."""

    name: str
    sessions: int
    incomplete: int
    calls: int
    input_tokens: int
    output_tokens: int
    cache_read_tokens: int
    cache_write_tokens: int
    reasoning_tokens: int
    cost_usd: float | None
    """The sum of the calls' known costs; None when no call had a known price (or there was none)."""
    unknown_cost_calls: int
    llm_s: float
    tool_s: float
    wall_s: float
    cpu_s: float

    @property
    def cache_hit_rate(self) -> float | None:
        return self.cache_read_tokens / self.input_tokens if self.input_tokens else None

    def as_dict(self) -> dict[str, Any]:
        rate = self.cache_hit_rate
        return {
            "name": self.name,
            "sessions": self.sessions,
            "incomplete": self.incomplete,
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cache_hit_rate": round(rate, 4) if rate is not None else None,
            "cost_usd": self.cost_usd,
            "unknown_cost_calls": self.unknown_cost_calls,
            "llm_s": round(self.llm_s, 3),
            "tool_s": round(self.tool_s, 3),
            "wall_s": round(self.wall_s, 3),
            "cpu_s": round(self.cpu_s, 3),
        }


class _Sums:
    """A group's running sums, a batch of sessions at a time. Columns are summed with built-ins: over
    100,000 sessions, a Python loop per row would be most of a report's time."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sessions = self.incomplete = 0
        self.ints = [0] * 7  # calls, input, output, cache read, cache write, reasoning, unknown cost calls
        self.floats = [0.0] * 5  # known cost, llm s, tool s, wall s, cpu s

    def add_sessions(self, summaries: Sequence[Sequence[Any]]) -> None:
        self.sessions += len(summaries)
        self.incomplete += list(map(itemgetter(STATE), summaries)).count(INCOMPLETE)
        for i, field in enumerate((TOOL_S, WALL_S, CPU_S), start=2):
            self.floats[i] += math.fsum(filter(None, map(itemgetter(field), summaries)))

    def add_rows(self, rows: Sequence[ModelRow]) -> None:
        if not rows:
            return
        try:
            columns = list(zip(*rows, strict=True))
        except ValueError:  # a row of another length (a damaged index): only the whole ones
            columns = list(zip(*[r for r in rows if len(r) == MODEL_ROW], strict=True)) or [()] * MODEL_ROW
        for i, column in enumerate((1, 2, 3, 4, 5, 6, 8)):
            self.ints[i] += sum(filter(None, columns[column]))
        self.floats[0] += math.fsum(filter(None, columns[7]))
        self.floats[1] += math.fsum(filter(None, columns[10]))

    def add_row_sums(self, other: _Sums) -> None:
        for i in range(len(self.ints)):
            self.ints[i] += other.ints[i]
        self.floats[0] += other.floats[0]
        self.floats[1] += other.floats[1]

    def group(self) -> Group:
        calls, tokens_in, tokens_out, read, write, reasoning, unknown = self.ints
        known, llm, tool, wall, cpu = self.floats
        return Group(
            self.name,
            self.sessions,
            self.incomplete,
            calls,
            tokens_in,
            tokens_out,
            read,
            write,
            reasoning,
            round(known, COST_DIGITS) if unknown < calls else None,
            unknown,
            llm,
            tool,
            wall,
            cpu,
        )


def group_usage(batches: Iterable[Sequence[Raw]], by: str) -> tuple[list[Group], Group]:
    """Usage grouped `by` agent, tenant, model or provider (a session counts in every model it used),
    costliest first; and the total."""
    if by not in GROUPS:
        raise ConfigError(f"--by must be one of {', '.join(GROUPS)}, got {by!r}")
    sums: dict[str, _Sums] = {}
    total = _Sums("all")
    name_of: dict[Any, str] = {}  # a model's key -> its group
    field = AGENT if by == "agent" else TENANT
    for batch in batches:
        summaries = list(map(itemgetter(1), batch))
        total.add_sessions(summaries)
        sessions: dict[str, list[Sequence[Any]]] = {}
        rows: dict[str, list[ModelRow]] = {}
        for summary in summaries:
            if by in ("agent", "tenant"):
                name = summary[field] or "-"
                if name not in rows:
                    sessions[name], rows[name] = [], []
                sessions[name].append(summary)
                rows[name].extend(summary[MODELS])
                continue
            names = set()
            for row in summary[MODELS]:
                key = row[0]
                name = name_of.get(key)
                if name is None:
                    text = str(key)
                    provider = text.split("/", 1)[0] if "/" in text else "-"
                    name = name_of[key] = text if by == "model" else provider
                if name not in rows:
                    sessions[name], rows[name] = [], []
                rows[name].append(row)
                names.add(name)
            for name in names:
                sessions[name].append(summary)
        for name, group_rows in rows.items():
            if name not in sums:
                sums[name] = _Sums(name)
            sums[name].add_sessions(sessions[name])
            sums[name].add_rows(group_rows)
    for group_sums in sums.values():  # each call is in exactly one group
        total.add_row_sums(group_sums)
    groups = [s.group() for s in sums.values()]
    return sorted(groups, key=lambda g: (-(g.cost_usd or 0.0), -g.calls, g.name)), total.group()


HISTORY_SORTS = ("started", "cost", "tokens", "wall", "cache")


def _cost(raw: Raw) -> float:
    """The known cost; -1 when no call had a known price, so it sorts after every known one."""
    rows = raw[1][MODELS]
    if not rows or all(row[7] is None for row in rows):
        return -1.0
    return math.fsum(row[7] or 0.0 for row in rows)


def _cache_miss(raw: Raw) -> float:
    """1 - the cache hit rate, so the lowest rate comes first; -1 without input tokens (last)."""
    rows = raw[1][MODELS]
    tokens_in = sum(row[2] for row in rows)
    return 1.0 - sum(row[4] for row in rows) / tokens_in if tokens_in else -1.0


HISTORY_KEYS: dict[str, Callable[[Raw], float]] = {
    "started": lambda raw: float(raw[1][STARTED_AT]),
    "cost": _cost,
    "tokens": lambda raw: float(sum(row[2] + row[3] for row in raw[1][MODELS])),
    "wall": lambda raw: float(raw[1][WALL_S] or 0.0),
    "cache": _cache_miss,
}


def history(
    batches: Iterable[Sequence[Raw]],
    limit: int,
    agent: str | None = None,
    tenant: str | None = None,
    sort: str = "started",
) -> list[SessionSummary]:
    """The first `limit` sessions (of `agent`, of `tenant`) by `sort`: newest, costliest, most tokens
    (input and output), longest, lowest cache hit rate."""
    chosen = heapq.nlargest(
        limit,
        (
            raw
            for batch in batches
            for raw in batch
            if (agent is None or raw[1][AGENT] == agent) and (tenant is None or raw[1][TENANT] == tenant)
        ),
        key=HISTORY_KEYS[sort],
    )
    return [from_summary(session_id, summary) for session_id, summary in chosen]


FIGURES: list[tuple[str, Callable[[SessionSummary], float | None]]] = [
    ("wall s", lambda s: s.wall_s),
    ("cpu s", lambda s: s.cpu_s),
    ("llm s", lambda s: s.llm_s),
    ("tool s", lambda s: s.tool_s),
    ("calls", lambda s: s.totals.calls),
    ("input tokens", lambda s: s.totals.input_tokens),
    ("cache read tokens", lambda s: s.totals.cache_read_tokens),
    ("cache write tokens", lambda s: s.totals.cache_write_tokens),
    ("output tokens", lambda s: s.totals.output_tokens),
    ("reasoning tokens", lambda s: s.totals.reasoning_tokens),
    ("cache hit %", lambda s: None if s.totals.cache_hit_rate is None else s.totals.cache_hit_rate * 100),
    ("cost usd", lambda s: s.totals.cost_usd),
    ("unknown cost calls", lambda s: s.totals.unknown_cost_calls),
    ("tools ok", lambda s: sum(t.ok for t in s.totals.tools.values())),
    ("tools failed", lambda s: sum(t.failed for t in s.totals.tools.values())),
    ("blocks", lambda s: s.totals.blocks),
]


def compare(a: SessionSummary, b: SessionSummary) -> list[dict[str, Any]]:
    """Each figure of `a` and `b`, with `b - a` and that as a % of `a` (None where it does not apply)."""
    rows = []
    for name, get in FIGURES:
        x, y = get(a), get(b)
        delta = y - x if x is not None and y is not None else None
        pct = delta / x * 100 if delta is not None and x else None
        rows.append({"figure": name, "a": x, "b": y, "delta": delta, "pct": pct})
    return rows


# -- formatting --------------------------------------------------------------------------------------


def tokens(n: float | None) -> str:
    if n is None:
        return "-"
    n = float(n)
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:,.0f}"


def dollars(cost: float | None, unknown: int = 0) -> str:
    """`$0.0123`, `$0.0123+3?` when 3 calls had no known price, `?` when none did; never `$0` for
    unknown."""
    if cost is None:
        return "?" if unknown else "-"
    return f"{usd(cost)}+{unknown}?" if unknown else usd(cost)


def percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.0f}%"


def seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}s" if value < 10 else f"{value:,.1f}s"


def when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


_FIGURE = re.compile(r"[-?]|[-$?+<]*[\d.,]+[kMG%s]?[+?\d]*( \(\d+ inc\.\))?( [-+][\d.,]+%?)*")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Plain text, columns padded; a column of figures (a blank or `-` among them) right-aligned,
    its header too."""
    widths = [max(len(str(r[i])) for r in (header, *rows)) for i in range(len(header))]
    right = [
        i > 0
        and any(str(r[i]) not in ("", "-", "?") for r in rows)  # a column of dashes is text
        and all(not str(r[i]) or _FIGURE.fullmatch(str(r[i])) for r in rows)
        for i in range(len(header))
    ]

    def line(row: Sequence[str]) -> str:
        cells = (
            str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        )
        return "  ".join(cells).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)]) + "\n"


def markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def esc(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    out = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(out) + "\n"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ padding: 2px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; }}
th {{ text-align: left; background: #f4f4f4; position: sticky; top: 0; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
</style></head>
<body><h1>{title}</h1><p>{subtitle}</p>
<table><thead><tr>{head}</tr></thead><tbody>
{body}
</tbody></table></body></html>
"""


def html_page(title: str, subtitle: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A page of its own (no script, no outside file): the table, figures right-aligned, every cell
    escaped."""
    numeric = re.compile(r"-?[\d.,]+(e-?\d+)?")
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="n">{html.escape(c)}</td>' if numeric.fullmatch(c) else f"<td>{html.escape(c)}</td>"
            for c in row
        )
        + "</tr>"
        for row in rows
    )
    return _PAGE.format(title=html.escape(title), subtitle=html.escape(subtitle), head=head, body=body)


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


USAGE_HEADER = (
    "SESSIONS",
    "CALLS",
    "INPUT",
    "CACHE READ",
    "CACHE WRITE",
    "OUTPUT",
    "REASONING",
    "CACHE%",
    "COST",
)


def usage_row(group: Group) -> list[str]:
    t = group
    sessions = f"{group.sessions:,}" + (f" ({group.incomplete} inc.)" if group.incomplete else "")
    return [
        group.name,
        sessions,
        f"{t.calls:,}",
        tokens(t.input_tokens),
        tokens(t.cache_read_tokens),
        tokens(t.cache_write_tokens),
        tokens(t.output_tokens),
        tokens(t.reasoning_tokens),
        percent(t.cache_hit_rate),
        dollars(t.cost_usd, t.unknown_cost_calls),
    ]


HISTORY_HEADER = (
    "STARTED (UTC)",
    "SESSION",
    "AGENT",
    "TENANT",
    "STATE",
    "WALL",
    "CPU",
    "LLM",
    "CALLS",
    "IN",
    "OUT",
    "CACHE%",
    "COST",
)


def history_row(s: SessionSummary) -> list[str]:
    t = s.totals
    return [
        when(s.started_at),
        s.session_id[:12],
        s.agent,
        s.tenant or "-",
        s.state,
        seconds(s.wall_s),
        seconds(s.cpu_s),
        seconds(s.llm_s),
        f"{t.calls:,}",
        tokens(t.input_tokens),
        tokens(t.output_tokens),
        percent(t.cache_hit_rate),
        dollars(t.cost_usd, t.unknown_cost_calls),
    ]


def model_rows(models: dict[str, ModelTotals]) -> list[list[str]]:
    rows = []
    for key, m in sorted(models.items()):
        hit = m.cache_read_tokens / m.input_tokens if m.input_tokens else None
        rows.append(
            [
                key,
                f"{m.calls:,}",
                tokens(m.input_tokens),
                tokens(m.cache_read_tokens),
                tokens(m.cache_write_tokens),
                tokens(m.output_tokens),
                tokens(m.reasoning_tokens),
                percent(hit),
                dollars(m.cost_usd if m.unknown_cost_calls < m.calls else None, m.unknown_cost_calls),
            ]
        )
    return rows


MODEL_HEADER = (
    "MODEL",
    "CALLS",
    "INPUT",
    "CACHE READ",
    "CACHE WRITE",
    "OUTPUT",
    "REASONING",
    "CACHE%",
    "COST",
)
