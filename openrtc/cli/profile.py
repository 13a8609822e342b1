"""`openrtc profile`: a CPU profile of a running worker, or a token, tool or wall-time profile from the
event log, written in the format the output's name asks for."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrtc.cli.env import positive_float
from openrtc.cli.parser import SUMMARIES
from openrtc.errors import ConfigError, OpenRTCError

KINDS = ("cpu", "tokens", "tools", "wall")
DEFAULT_TAGGER = "http://127.0.0.1:8080"
"""llama.cpp's `llama-server` on its default port (`openrtc.profile.tagger.DEFAULT_URL`; not imported
here: `--help` stays fast)."""
REPORT_WINDOW_S = 3600.0
"""A CPU report's event-log part: the sessions of this last stretch, unless --since says otherwise."""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = sub.add_parser(
        "profile",
        help=SUMMARIES["profile"],
        description="cpu (the default): record the loop thread of a running worker for --seconds and "
        "stamp each sample with the session whose step runs (idle, outside, gc and cpu-wait for the "
        "rest); in process isolation each session's own process samples itself at the same time. "
        "tokens, tools, wall: profiles of the event log's sessions, as stacks weighted by tokens, tool "
        "calls (or ms) and milliseconds of wall time. The output's name picks the format: .folded "
        "(flamegraph.pl), .svg (interactive flamegraph), .speedscope.json, .pprof.gz, .html (the "
        "report; for tokens, tools and wall it is the event log's report). Exit 0; 1 on an error "
        "(no worker, nothing recorded, no tagger); 2 for bad flags.",
    )
    p.add_argument("kind", nargs="?", choices=KINDS, default="cpu", help="what to profile (default: cpu)")
    # `-o` alone: with a long twin, Python 3.13's help reads `-o, --output FILE` and 3.11's
    # `-o FILE, --output FILE`, and the README's generated reference must be the same on both.
    p.add_argument(
        "-o",
        dest="output",
        type=Path,
        required=True,
        metavar="FILE",
        help="where to write; its name picks the format",
    )
    cpu = p.add_argument_group("cpu")
    cpu.add_argument(
        "--socket", type=Path, metavar="PATH", help="the worker's socket (default: the only worker)"
    )
    cpu.add_argument("--session", metavar="ID", help="only this session (an id prefix will do)")
    cpu.add_argument(
        "--seconds", type=positive_float, default=10.0, metavar="S", help="how long to record (default: 10)"
    )
    cpu.add_argument(
        "--hz",
        type=positive_float,
        default=100.0,
        metavar="N",
        help="samples per second, at most 1000 (default: 100)",
    )
    log = p.add_argument_group("event log (tokens, tools, wall, and a cpu .html report)")
    log.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="the event log's folder [OPENRTC_LOG_DIR] (default: $XDG_STATE_HOME/openrtc/sessions)",
    )
    log.add_argument(
        "--since",
        metavar="WHEN",
        help="today, 7d, 30d, YYYY-MM-DD or YYYY-MM-DD..YYYY-MM-DD, in UTC (default: everything; for a "
        "cpu report: the last hour)",
    )
    log.add_argument("--by", choices=("calls", "ms"), default="calls", help="tools: weigh by calls or ms")
    p.add_argument("--agent", help="only sessions of this agent")
    tags = p.add_argument_group("tags (a one-word tag per session in place of its id)")
    tags.add_argument(
        "--tag-with",
        nargs="?",
        const=DEFAULT_TAGGER,
        metavar="URL",
        help="an OpenAI-compatible server that names each session in one word from its recorded content "
        f"(alone: llama.cpp's llama-server at {DEFAULT_TAGGER})",
    )
    tags.add_argument("--tag-model", metavar="NAME", help="the model to ask for (default: the server's)")
    tags.add_argument(
        "--tags-file", type=Path, metavar="FILE", help="the tag cache (default: tags.json in the log folder)"
    )
    return p


def run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from openrtc.profile.formats import format_of
    from openrtc.profile.stacks import ProfileError

    try:
        suffix = format_of(args.output)
    except ProfileError as exc:
        parser.error(str(exc))
    if args.kind != "cpu" and (args.socket or args.session):
        parser.error(f"--socket and --session are for cpu profiles, not {args.kind}")
    if args.log_dir is None and os.environ.get("OPENRTC_LOG_DIR"):
        args.log_dir = Path(os.environ["OPENRTC_LOG_DIR"])
    try:
        if args.kind == "cpu":
            data = _cpu(args, suffix)
        else:
            data = _from_log(parser, args, suffix)
        args.output.write_bytes(data)
    except (OpenRTCError, OSError) as exc:
        print(f"openrtc profile: {exc}", file=sys.stderr)
        return 1
    print(f"profile written to {args.output}", file=sys.stderr)
    return 0


def _cpu(args: argparse.Namespace, suffix: str) -> bytes:
    from openrtc.introspection.client import WorkerClient
    from openrtc.profile.formats import render
    from openrtc.profile.stacks import from_wire, hottest

    path, session_id = _worker_for(args.socket, args.session)
    request: dict[str, Any] = {"seconds": args.seconds, "hz": args.hz}
    if session_id:
        request["session_id"] = session_id
    if args.agent:
        request["agent"] = args.agent
    print(f"recording {args.seconds:g} s at {args.hz:g} Hz from {path}...", file=sys.stderr)
    with WorkerClient(path, timeout=args.seconds + 15) as client:
        profile = from_wire(client.request("profile", **request)["profile"])
    meta = profile.meta
    # What was recorded, on stdout (the file is the profile; this is its gist, for a reader or a grep).
    print(
        f"{meta.get('samples')} samples in {meta.get('seconds')} s ({meta.get('hz_achieved')} Hz achieved, "
        f"{args.hz:g} asked; lateness p99 {meta.get('lateness_ms_p99')} ms)"
    )
    print("hottest frames (self time):")
    for frame, share in hottest(profile):
        print(f"  {100 * share:5.1f}%  {frame}")
    if suffix != ".html":
        return render(profile, suffix)
    from openrtc.profile.report import ReportInput, html_report

    folder, window = _log_window(args, default_since=time.time() - REPORT_WINDOW_S)
    summaries, blocks = _log_parts(folder, window, args.agent) if folder.exists() else ([], [])
    tags = _tags(args, folder, summaries, window) if args.tag_with else {}
    if tags:
        profile = _retag(profile, tags)
    subtitle = f"CPU recorded from {path} at {_when(meta.get('started_at'))}; event log {folder}"
    return html_report(ReportInput(profile, summaries, blocks, tags, "openrtc profile", subtitle)).encode()


def _from_log(parser: argparse.ArgumentParser, args: argparse.Namespace, suffix: str) -> bytes:
    from openrtc.profile import semantic
    from openrtc.profile.formats import render
    from openrtc.profile.report import ReportInput, html_report

    try:
        folder, window = _log_window(args)
    except ConfigError as exc:
        parser.error(str(exc))
    from openrtc.cli.stats import check_log_folder

    check_log_folder(folder)
    summaries, blocks = _log_parts(folder, window, args.agent)
    if not summaries:
        raise OpenRTCError(f"no session matches in {folder}")
    tags = _tags(args, folder, summaries, window) if args.tag_with else {}
    if suffix == ".html":
        return html_report(
            ReportInput(
                None, summaries, blocks, tags, "openrtc sessions", f"{len(summaries)} sessions from {folder}"
            )
        ).encode()
    if args.kind == "tokens":
        profile = semantic.tokens(summaries, tags)
    elif args.kind == "wall":
        profile = semantic.wall(summaries, tags)
    elif args.by == "ms":
        profile = semantic.tools(summaries, _tool_calls(folder, window), by="ms", tags=tags)
    else:
        profile = semantic.tools(summaries, by="calls", tags=tags)
    if not profile.stacks:
        raise OpenRTCError(
            f"the {len(summaries)} sessions in {folder} recorded nothing for a {args.kind} profile"
        )
    return render(profile, suffix)


def _log_window(args: argparse.Namespace, default_since: float | None = None) -> tuple[Path, Any]:
    from openrtc.stats import report
    from openrtc.usage.eventlog import default_log_dir

    folder = args.log_dir or default_log_dir()
    window = report.parse_since(args.since, time.time()) if args.since else (default_since, None)
    return folder, window


def _log_parts(folder: Path, window: Any, agent: str | None) -> tuple[list[Any], list[Any]]:
    from openrtc.stats.summary import load_summaries
    from openrtc.usage.reader import Problems

    problems = Problems()
    summaries = load_summaries(folder, window[0], window[1], problems)
    summaries = [s for s in summaries if not agent or s.agent == agent]
    blocks = blocks_of(folder, window, {s.session_id: s.agent for s in summaries}, problems)
    for warning in problems.warnings:
        print(f"openrtc profile: warning: {warning}", file=sys.stderr)
    return summaries, blocks


def blocks_of(folder: Path, window: Any, agents: dict[str, str], problems: Any) -> list[Any]:
    """The blocks of the log's window: the worker's own, and those of the sessions in `agents`."""
    from openrtc.profile.report import BlockMark
    from openrtc.usage.reader import files_between, find_events, type_needle

    blocks = []
    for path in files_between(folder, window[0], window[1]):
        for e in find_events(path, type_needle("block"), problems):
            if e.session_id is not None and e.session_id not in agents:
                continue
            ms, where = e.data.get("ms"), e.data.get("where")
            if isinstance(ms, int | float) and not isinstance(ms, bool):
                agent = agents.get(e.session_id) if e.session_id else None
                blocks.append(BlockMark(e.ts - ms / 1000, e.session_id, agent, float(ms), str(where)))
    return blocks


def _tool_calls(folder: Path, window: Any) -> list[tuple[str, dict[str, Any]]]:
    from openrtc.usage.reader import Problems, files_between, find_events, type_needle

    problems = Problems()
    return [
        (e.session_id, e.data)
        for path in files_between(folder, window[0], window[1])
        for e in find_events(path, type_needle("tool.call"), problems)
        if e.session_id is not None
    ]


def _tags(args: argparse.Namespace, folder: Path, summaries: Sequence[Any], window: Any) -> dict[str, str]:
    """A tag per session from its recorded content; `ProfileError` when one cannot be tagged."""
    from openrtc.profile.stacks import ProfileError
    from openrtc.profile.tagger import Tagger, content_text
    from openrtc.usage.reader import Problems, files_between, find_events, type_needle

    contents: dict[str, list[Any]] = {}
    problems = Problems()
    for path in files_between(folder, window[0], window[1]):
        for e in find_events(path, type_needle("llm.call"), problems):
            if e.session_id is not None and "content" in e.data:
                contents.setdefault(e.session_id, []).append(e.data["content"])
    tagger = Tagger(args.tag_with, args.tags_file or folder / "tags.json", args.tag_model)
    tags = {}
    for s in summaries:
        text = content_text(contents.get(s.session_id, ()))
        if not text:
            raise ProfileError(
                f"session {s.session_id} has no recorded content to tag: start the worker with "
                "--record-content (or UsageConfig(record_content=True)), or leave out --tag-with"
            )
        tags[s.session_id] = tagger.tag(text)
    print(f"tagged {len(tags)} sessions ({tagger.asked} questions to {args.tag_with})", file=sys.stderr)
    return tags


def _retag(profile: Any, tags: dict[str, str]) -> Any:
    from openrtc.profile.stacks import Profile, add

    stacks: dict[tuple[str, ...], float] = {}
    for stack, weight in profile.stacks.items():
        add(
            stacks,
            [f"tag:{tags[f[8:]]}" if f.startswith("session:") and f[8:] in tags else f for f in stack],
            weight,
        )
    return Profile(
        stacks, profile.unit, profile.title, profile.session_depth, profile.sample_ms, profile.meta
    )


def _worker_for(socket: Path | None, session: str | None) -> tuple[Path, str | None]:
    """The worker to record and the full session id: --socket, else the one worker that answers (or,
    with --session, the one that runs that session)."""
    from openrtc.errors import WorkerNotFound
    from openrtc.introspection.client import WorkerClient, find_workers

    if socket is not None and session is None:
        return socket, None
    candidates = [socket] if socket is not None else [w.socket_path for w in find_workers()]
    if not candidates:
        raise WorkerNotFound("no worker answers on this machine (start one with `openrtc start AGENTS_DIR`)")
    if session is None:
        if len(candidates) > 1:
            listing = ", ".join(str(c) for c in candidates)
            raise OpenRTCError(f"{len(candidates)} workers answer ({listing}); choose one with --socket")
        return candidates[0], None
    matches = []
    for path in candidates:
        with WorkerClient(path) as client:
            rows = client.request("snapshot").get("sessions", [])
        matches += [(path, r["session_id"]) for r in rows if str(r.get("session_id", "")).startswith(session)]
    if len(matches) != 1:
        found = "no active session" if not matches else f"{len(matches)} sessions"
        raise OpenRTCError(f"{found} matching {session!r} (an id prefix must name exactly one)")
    return matches[0]


def _when(ts: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if isinstance(ts, int | float) else "?"
