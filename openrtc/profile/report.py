"""The HTML report: one self-contained file (no network, no outside file) with the CPU flamegraphs per
agent and per session, the wall-time and token flamegraphs, the top sessions by CPU, tokens and cost,
and a timeline of the blocks. Pure: it takes what `openrtc profile` recorded and what the event log
holds, and returns the page.
"""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from openrtc import __version__
from openrtc.profile import semantic
from openrtc.profile.stacks import Profile
from openrtc.profile.svg import SCRIPT, STYLE, svg
from openrtc.stats.summary import SessionSummary

TOP_SESSIONS = 10
"""Sessions with a flamegraph (and table rows) of their own, the heaviest first."""
TIMELINE_ROWS = 20


@dataclass(frozen=True)
class BlockMark:
    """One block of the event log, for the timeline."""

    ts: float
    """Unix time it began."""
    session_id: str | None
    agent: str | None
    ms: float
    where: str


@dataclass(frozen=True)
class ReportInput:
    """What a report is made of; each part may be missing (the page says so)."""

    cpu: Profile | None = None
    """A CPU profile (`openrtc profile`), or None."""
    summaries: Sequence[SessionSummary] = ()
    """The sessions of the event log in the report's window."""
    blocks: Sequence[BlockMark] = ()
    tags: dict[str, str] = field(default_factory=dict)
    """Session id to one-word tag."""
    title: str = "openrtc profile"
    subtitle: str = ""


def _esc(text: Any) -> str:
    return html.escape(str(text))


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{_esc(note)}</p>' if note else ""
    return f"<section><h2>{_esc(title)}</h2>{note_html}{body}</section>"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    if not rows:
        return '<p class="note">nothing to show</p>'
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{_esc('—' if c is None else c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flame(profile: Profile) -> str:
    return f'<div class="flame">{svg(profile, standalone=False)}</div>'


def _cpu_sections(cpu: Profile) -> list[str]:
    meta = cpu.meta
    note = (
        f"{meta.get('samples', 0)} samples (covering {cpu.total:g} deadlines: a late one counts all it held) "
        f"in {meta.get('seconds', 0)} s at {meta.get('hz_achieved', 0)} Hz "
        f"({meta.get('hz_target', 0)} asked); sample lateness p50 {meta.get('lateness_ms_p50')} ms, "
        f"p99 {meta.get('lateness_ms_p99')} ms. Stacks: worker;agent;session;frames. "
        "Click a frame to zoom, Search to highlight."
    )
    parts = [_section("CPU: the whole worker", _flame(cpu), note)]
    sessions = sorted(cpu.by_session().items(), key=lambda kv: -kv[1].total)
    heavy = [(k, p) for k, p in sessions if k.startswith(("session:", "tag:"))][:TOP_SESSIONS]
    total, sample_s = cpu.total or 1.0, (cpu.sample_ms or 0) / 1000
    rows = [
        (k.partition(":")[2], _agent_of(p), round(100 * p.total / total, 1), round(p.total * sample_s, 2))
        for k, p in heavy
    ]
    header = ("SESSION", "AGENT", "% OF SAMPLES", "SECONDS")
    parts.append(_section("Top sessions by CPU (this recording)", _table(header, rows)))
    agents = sorted({s[1] for s in cpu.stacks if len(s) > 1 and s[1].startswith("agent:")})
    for agent in agents:
        parts.append(_section(f"CPU: {agent}", _flame(cpu.only([agent]))))
    for key, part in heavy:
        parts.append(_section(f"CPU: {key}", _flame(part)))
    return parts


def _agent_of(profile: Profile) -> str:
    """The agent of a one-session profile (its stacks' second frame)."""
    stack = next(iter(profile.stacks), ())
    return stack[1].partition(":")[2] if len(stack) > 1 else ""


def _usage_sections(summaries: Sequence[SessionSummary], tags: dict[str, str]) -> list[str]:
    wall = semantic.wall(summaries, tags)
    tokens = semantic.tokens(summaries, tags)
    parts = [
        _section(
            "Wall time: where each session's time went",
            _flame(wall) if wall.stacks else '<p class="note">no session in the log</p>',
            "loop = its steps on the event loop; call:llm and call:tool = its calls; awaiting = the rest.",
        ),
        _section(
            "Tokens",
            _flame(tokens) if tokens.stacks else '<p class="note">no LLM call recorded</p>',
            "kind:input counts the input that was not cached; cache reads and writes are their own kinds.",
        ),
    ]

    def name(s: SessionSummary) -> str:
        return f"{s.session_id} ({tags[s.session_id]})" if s.session_id in tags else s.session_id

    def tokens_of(s: SessionSummary) -> int:
        t = s.totals
        return t.input_tokens + t.output_tokens

    by_cpu = sorted(summaries, key=lambda s: -(s.cpu_s or 0.0))[:TOP_SESSIONS]
    by_tokens = sorted(summaries, key=lambda s: -tokens_of(s))[:TOP_SESSIONS]
    by_cost = sorted(summaries, key=lambda s: -(s.cost_usd or 0.0))[:TOP_SESSIONS]
    header = ("SESSION", "AGENT", "STATE", "WALL S", "CPU S", "TOKENS", "COST $")

    def row(s: SessionSummary) -> tuple[Any, ...]:
        cost = s.cost_usd
        return (
            name(s),
            s.agent,
            s.state,
            None if s.wall_s is None else round(s.wall_s, 2),
            None if s.cpu_s is None else round(s.cpu_s, 3),
            tokens_of(s),
            None if cost is None else f"{cost:.6f}",
        )

    parts.append(_section("Top sessions by loop time (event log)", _table(header, [row(s) for s in by_cpu])))
    parts.append(_section("Top sessions by tokens", _table(header, [row(s) for s in by_tokens])))
    parts.append(
        _section(
            "Top sessions by cost",
            _table(header, [row(s) for s in by_cost]),
            "An unknown price shows as —, never as 0.",
        )
    )
    return parts


def _timeline(blocks: Sequence[BlockMark]) -> str:
    if not blocks:
        return _section("Blocks", '<p class="note">no block in the log</p>')
    start = min(b.ts for b in blocks)
    end = max(b.ts + b.ms / 1000 for b in blocks)
    span = max(end - start, 1e-3)
    counts: dict[str, int] = {}
    for b in blocks:
        counts[b.session_id or "worker"] = counts.get(b.session_id or "worker", 0) + 1
    rows = sorted(counts, key=lambda k: -counts[k])[:TIMELINE_ROWS]
    width, label_w, row_h = 1200, 170, 18
    height = 24 + row_h * len(rows)
    marks = []
    for i, key in enumerate(rows):
        y = 20 + i * row_h
        marks.append(f'<text x="4" y="{y + 12}">{_esc(key)}</text>')
        for b in blocks:
            if (b.session_id or "worker") != key:
                continue
            x = label_w + (b.ts - start) / span * (width - label_w - 10)
            w = max(2.0, b.ms / 1000 / span * (width - label_w - 10))
            marks.append(
                f'<rect class="block" x="{x:.1f}" y="{y}" width="{w:.1f}" height="{row_h - 4}">'
                f"<title>{_esc(b.agent or '')} {b.ms:.0f} ms at {_esc(b.where)}</title></rect>"
            )
    axis = (
        f'<text x="{label_w}" y="12">{_esc(time.strftime("%H:%M:%S", time.gmtime(start)))} UTC</text>'
        f'<text x="{width - 10}" y="12" text-anchor="end">+{span:.1f} s</text>'
    )
    body = (
        f'<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        f"{axis}{''.join(marks)}</svg>"
    )
    note = f"{len(blocks)} blocks; the {len(rows)} sessions with most, a row each (hover a block: its line)"
    return _section("Timeline of blocks", body, note)


PAGE_STYLE = """
body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; margin-bottom: 0; } h2 { font-size: 1.1em; margin: 1.4em 0 0.3em; }
p.note { color: #555; margin: 0.2em 0 0.5em; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 2px 8px; border-bottom: 1px solid #ddd; white-space: nowrap; text-align: left; }
th { background: #f4f4f4; }
svg.timeline { background: #f8f8f8; font: 11px Verdana, sans-serif; }
svg.timeline rect.block { fill: #d9534f; }
div.flame { overflow-x: auto; }
"""


def html_report(data: ReportInput, table: tuple[Sequence[str], Sequence[Sequence[Any]]] | None = None) -> str:
    """The page; `table` (header, rows) adds a table of every session at the end."""
    parts: list[str] = []
    if data.cpu is not None:
        parts += _cpu_sections(data.cpu)
    else:
        parts.append(
            _section(
                "CPU",
                '<p class="note">no CPU profile in this report: record one with '
                "<code>openrtc profile -o report.html</code></p>",
            )
        )
    parts += _usage_sections(data.summaries, data.tags)
    parts.append(_timeline(data.blocks))
    if table is not None:
        parts.append(_section(f"Every session ({len(table[1])})", _table(*table)))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(data.title)}</title><style>{PAGE_STYLE}{STYLE}</style></head><body>"
        f'<h1>{_esc(data.title)}</h1><p class="note">{_esc(data.subtitle)} (openrtc {__version__})</p>'
        + "".join(parts)
        + f"<script>{SCRIPT}</script></body></html>\n"
    )
