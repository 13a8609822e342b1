"""`openrtc stats`: what sessions did and cost, read back from the event log.

Exit codes: 0 with something to show; 1 when nothing matches (the message names the folder searched);
2 for a bad flag. A corrupt line is skipped with a warning on stderr naming its file and line.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from openrtc.cli.parser import SUMMARIES
from openrtc.errors import ConfigError, OpenRTCError
from openrtc.stats import report
from openrtc.stats.summary import SessionSummary, from_events, load_session, load_summaries, scan
from openrtc.usage.eventlog import default_log_dir
from openrtc.usage.reader import Event, Problems
from openrtc.usage.totals import usd

log = logging.getLogger("openrtc.stats")

EXPORT_FORMATS = ("json", "csv", "markdown", "html")
SUFFIXES = {".json": "json", ".csv": "csv", ".md": "markdown", ".html": "html", ".htm": "html"}
EXPORT_COLUMNS = (
    "session_id",
    "agent",
    "tenant",
    "worker_id",
    "attempt",
    "started_at",
    "state",
    "reason",
    "wall_s",
    "cpu_s",
    "llm_s",
    "tool_s",
    "calls",
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cache_hit_rate",
    "cost_usd",
    "unknown_cost_calls",
    "tools_ok",
    "tools_failed",
    "blocks",
    "error",
)


def add_parser(sub: Any) -> None:
    stats = sub.add_parser(
        "stats",
        help=SUMMARIES["stats"],
        description="Read the event log back: usage over a window, the latest sessions, one session's "
        "timeline, two sessions side by side, an export. Exit 0; 1 when nothing matches; 2 for bad flags.",
    )
    commands = stats.add_subparsers(dest="stats_command", metavar="STATS_COMMAND", required=True)

    def common(p: argparse.ArgumentParser, window: bool = True) -> None:
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument(
            "--log-dir",
            type=Path,
            metavar="DIR",
            help="the event log's folder [OPENRTC_LOG_DIR] (default: $XDG_STATE_HOME/openrtc/sessions)",
        )
        if window:
            p.add_argument(
                "--since",
                metavar="WHEN",
                help="today, 7d, 30d, YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD, in UTC (default: everything)",
            )

    def fleet(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--nats",
            metavar="URL",
            help="every worker of the fleet at URL (nats://HOST:PORT), from the summaries its workers "
            "publish, instead of this machine's event log",
        )

    usage = commands.add_parser(
        "usage",
        help="tokens, cache and cost, grouped",
        description="Sessions, calls, tokens (input with its cache reads and writes, output with its "
        "reasoning), cache hit rate and cost, grouped by agent, model, provider or tenant. A cost "
        "ending in +N? leaves out N calls with no known price; ? alone: no price known at all.",
    )
    common(usage)
    fleet(usage)
    usage.add_argument("--by", choices=report.GROUPS, default="agent", help="group by (default: agent)")
    history = commands.add_parser(
        "history",
        help="the latest (or costliest) sessions, one line each",
        description="The latest sessions, newest first; --sort cost: the costliest first (a session "
        "whose cost is unknown comes after every known one); --sort cache: the lowest cache hit rate "
        "first (sessions with no input tokens last).",
    )
    common(history)
    fleet(history)
    history.add_argument("--limit", type=_positive, default=10, metavar="N", help="how many (default: 10)")
    history.add_argument(
        "--sort",
        choices=report.HISTORY_SORTS,
        default="started",
        help="newest first, or costliest / most tokens / longest / lowest cache hit rate first "
        "(default: started)",
    )
    history.add_argument(
        "--ids", action="store_true", help="print only the session ids, one a line (for scripts)"
    )
    history.add_argument("--agent", help="only this agent")
    history.add_argument("--tenant", help="only this tenant")
    one = commands.add_parser(
        "session",
        help="one session: its summary, then its events replayed",
        description="One session (an id prefix of 6 characters or more will do): its summary, its calls "
        "per model, then every event of it in order with the time since its start.",
    )
    common(one, window=False)
    one.add_argument("session_id", metavar="ID")
    two = commands.add_parser(
        "compare",
        help="two sessions side by side",
        description="Two sessions side by side: each figure with the difference (B - A) and that as a "
        "% of A.",
    )
    common(two, window=False)
    two.add_argument("a", metavar="A")
    two.add_argument("b", metavar="B")
    export = commands.add_parser(
        "export",
        help="every session's summary, as JSON, CSV, Markdown or HTML",
        description="Every session's summary (of the window): JSON (a list, with the calls per model), "
        "CSV, Markdown or an HTML page (a row per session).",
    )
    common(export)
    export.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        help="(default: from the -o file's extension, .json .csv .md .html; else json)",
    )
    export.add_argument("-o", "--output", type=Path, metavar="FILE", help="write here (default: stdout)")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    # A short-lived reader of up to millions of small objects that all stay alive until the report:
    # the cyclic collector would rescan them again and again, for nothing (it doubles the time).
    gc.disable()
    folder = args.log_dir or default_log_dir()
    problems = Problems()
    try:
        window = report.parse_since(args.since, time.time()) if getattr(args, "since", None) else (None, None)
    except ConfigError as exc:
        parser.error(str(exc))
    nats = getattr(args, "nats", None)
    try:
        if nats:
            from openrtc.fleet import history as fleet_history

            ends = fleet_history.load(nats)
            args.batches = lambda: fleet_history.raw_sessions(ends, window[0], window[1])
            args.where = f"the fleet at {nats}"
        else:
            check_log_folder(folder)
            args.where = str(folder)
            args.batches = lambda: scan(folder, window[0], window[1], problems)
        code = {
            "usage": _usage,
            "history": _history,
            "session": _session,
            "compare": _compare,
            "export": _export,
        }[args.stats_command](args, folder, window, problems)
    except OpenRTCError as exc:
        print(f"openrtc stats: {exc}", file=sys.stderr)
        code = 1
    for warning in problems.warnings:
        print(f"openrtc stats: warning: {warning}", file=sys.stderr)
    return code


def check_log_folder(folder: Path) -> None:
    """An event log folder that exists and is private, or `OpenRTCError` saying what is wrong."""
    from openrtc._private import check_private_dir

    if not folder.exists():
        raise OpenRTCError(f"no event log in {folder} (the folder does not exist; pass --log-dir)")
    check_private_dir(folder, "log folder", OpenRTCError)


def _nothing(folder: Path | str, what: str) -> int:
    print(f"openrtc stats: {what} in {folder}", file=sys.stderr)
    return 1


def _out(args: argparse.Namespace, doc: Any, text: str) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    else:
        sys.stdout.write(text)


def _usage(args: argparse.Namespace, folder: Path, window: Any, problems: Problems) -> int:
    groups, total = report.group_usage(args.batches(), args.by)
    if not total.sessions:
        return _nothing(args.where, "no session matches")
    header = (f"BY {args.by.upper()}", *report.USAGE_HEADER)
    text = report.table(header, [report.usage_row(g) for g in groups] + [report.usage_row(total)])
    _out(args, {"by": args.by, "groups": [g.as_dict() for g in groups], "total": total.as_dict()}, text)
    return 0


def _history(args: argparse.Namespace, folder: Path, window: Any, problems: Problems) -> int:
    chosen = report.history(args.batches(), args.limit, args.agent, args.tenant, args.sort)
    if not chosen:
        return _nothing(args.where, "no session matches")
    if args.ids:
        text = "".join(f"{s.session_id}\n" for s in chosen)
    else:
        text = report.table(report.HISTORY_HEADER, [report.history_row(s) for s in chosen])
    _out(args, [s.as_dict() for s in chosen], text)
    return 0


def _one(folder: Path, session_id: str, problems: Problems) -> tuple[SessionSummary, list[Event]]:
    try:
        events = load_session(folder, session_id, problems)
    except LookupError as exc:
        raise OpenRTCError(str(exc)) from None
    summary = from_events(events) if events else None
    if summary is None:
        raise OpenRTCError(f"no session {session_id!r} in {folder}")
    return summary, events


def _session(args: argparse.Namespace, folder: Path, window: Any, problems: Problems) -> int:
    summary, events = _one(folder, args.session_id, problems)
    if args.json:
        print(
            json.dumps(
                {"summary": summary.as_dict(), "events": [_event_doc(e) for e in events]},
                indent=2,
                default=str,
            )
        )
        return 0
    s, t = summary, summary.totals
    lines = [
        f"session {s.session_id}",
        f"  agent      {s.agent}",
        f"  tenant     {s.tenant or '-'}",
        f"  worker     {s.worker_id or '-'}" + (f" (attempt {s.attempt})" if s.attempt > 1 else ""),
        f"  started    {report.when(s.started_at)} UTC",
        f"  state      {s.state}" + (f" ({s.reason})" if s.reason else ""),
    ]
    if s.error:
        lines.append(f"  error      {s.error}")
    lines += [
        f"  wall       {report.seconds(s.wall_s)}   loop/cpu {report.seconds(s.cpu_s)}   "
        f"llm {report.seconds(s.llm_s)}   tools {report.seconds(s.tool_s)}",
        f"  tokens     in {t.input_tokens:,} (cache read {t.cache_read_tokens:,}, "
        f"write {t.cache_write_tokens:,})   out {t.output_tokens:,} (reasoning {t.reasoning_tokens:,})   "
        f"cache hit {report.percent(t.cache_hit_rate)}",
        f"  cost       {report.dollars(t.cost_usd, t.unknown_cost_calls)}"
        + (f" ({t.unknown_cost_calls} calls with no known price)" if t.unknown_cost_calls else ""),
        "  tools      "
        + (", ".join(f"{k} {v.ok} ok {v.failed} failed" for k, v in sorted(t.tools.items())) or "none"),
        f"  blocks     {t.blocks}" + (f" ({t.block_ms:,.0f} ms)" if t.blocks else ""),
        "",
    ]
    text = "\n".join(lines) + "\n"
    if t.models:
        text += report.table(report.MODEL_HEADER, report.model_rows(t.models)) + "\n"
    start = events[0].ts if events else 0.0
    text += "\n".join(f"  +{e.ts - start:9.3f}s  {e.type:<18} {_describe(e)}".rstrip() for e in events) + "\n"
    sys.stdout.write(text)
    return 0


def _event_doc(e: Event) -> dict[str, Any]:
    return {"session_id": e.session_id, "seq": e.seq, "type": e.type, "ts": e.ts, "data": e.data}


def _describe(e: Event) -> str:
    d = e.data
    if e.type == "session.start":
        meta = json.dumps(d.get("metadata") or {}, default=str)
        return (
            f"agent={d.get('agent')} tenant={d.get('tenant') or '-'} attempt={d.get('attempt', 1)} "
            f"metadata={meta if len(meta) <= 120 else meta[:119] + '…'}"
        )
    if e.type == "llm.call":
        cache = f" (cache {d.get('cache_read_tokens') or 0:,})" if d.get("input_tokens") is not None else ""
        latency = f"  {d['latency_ms']:,.0f} ms" if d.get("latency_ms") is not None else ""
        tokens_in = "?" if d.get("input_tokens") is None else f"{d['input_tokens']:,}"
        tokens_out = "?" if d.get("output_tokens") is None else f"{d['output_tokens']:,}"
        cost = report.dollars(d.get("cost_usd"), 0 if d.get("cost_usd") is not None else 1)
        return (
            f"{d.get('provider') or '-'}/{d.get('model')}  in {tokens_in}{cache}  out {tokens_out}  "
            f"{cost} ({d.get('cost_source')}){latency}  {d.get('finish_reason') or ''}"
        )
    if e.type == "tool.call":
        status = "ok" if d.get("ok") else f"failed ({d.get('error')})"
        return f"{d.get('tool')} {status} {d.get('duration_ms', 0):,.1f} ms"
    if e.type == "block":
        return f"{d.get('ms', 0):,.0f} ms at {d.get('where')}"
    if e.type == "session.end":
        return f"{d.get('state')} reason={d.get('reason') or '-'} wall {report.seconds(d.get('wall_s'))}"
    return json.dumps(d, default=str)[:160]


def _compare(args: argparse.Namespace, folder: Path, window: Any, problems: Problems) -> int:
    a, _ = _one(folder, args.a, problems)
    b, _ = _one(folder, args.b, problems)
    rows = report.compare(a, b)

    def fmt(figure: str, value: Any, sign: str = "") -> str:
        if value is None:
            return "-"
        if figure == "cost usd":
            return ("-" if value < 0 else sign and "+") + usd(abs(value))
        if figure.endswith(" s") or figure.endswith("%"):
            return f"{value:{sign},.3f}" if figure.endswith(" s") else f"{value:{sign}.1f}"
        return f"{value:{sign},}"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value:+.1f}%"

    text = f"A {a.session_id} ({a.agent})   B {b.session_id} ({b.agent})\n" + report.table(
        ("FIGURE", "A", "B", "B - A", "% OF A"),
        [
            [f, fmt(f, r["a"]), fmt(f, r["b"]), fmt(f, r["delta"], "+"), pct(r["pct"])]
            for r in rows
            for f in [r["figure"]]
        ],
    )
    _out(args, {"a": a.session_id, "b": b.session_id, "figures": rows}, text)
    return 0


def _export(args: argparse.Namespace, folder: Path, window: Any, problems: Problems) -> int:
    summaries = load_summaries(folder, window[0], window[1], problems)
    if not summaries:
        return _nothing(folder, "no session matches")
    docs = [s.as_dict() for s in summaries]
    kind = args.format or (SUFFIXES.get(args.output.suffix.lower()) if args.output else None) or "json"
    rows = [[("" if d.get(c) is None else str(d.get(c))) for c in EXPORT_COLUMNS] for d in docs]
    if kind == "json" or args.json:
        text = json.dumps(docs, indent=2, default=str) + "\n"
    elif kind == "csv":
        text = report.csv_text(docs, EXPORT_COLUMNS)
    elif kind == "html":
        # The profile report: the sessions' wall-time and token flamegraphs, the top sessions, the
        # blocks' timeline, and the table of every session.
        from openrtc.cli.profile import blocks_of
        from openrtc.profile.report import ReportInput, html_report

        subtitle = f"{len(docs)} sessions from {folder}, exported {report.when(time.time())} UTC"
        blocks = blocks_of(folder, window, {s.session_id: s.agent for s in summaries}, problems)
        page = ReportInput(None, summaries, blocks, title="openrtc sessions", subtitle=subtitle)
        text = html_report(page, (EXPORT_COLUMNS, rows))
    else:
        text = report.markdown(EXPORT_COLUMNS, rows)
    if args.output is not None:
        args.output.write_text(text)
        print(f"{len(docs)} sessions written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
