"""`openrtc`: run workers, dispatch sessions, list agents.

Exit codes: 0 ok, 1 runtime error, 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from openrtc import __version__
from openrtc.cli.env import WORKER_TWINS, env_defaults, non_negative_float, positive_float, positive_int
from openrtc.errors import ConfigError, OpenRTCError, RemoteError, WorkerNotFound
from openrtc.top.view import SORT_KEYS, STATES

log = logging.getLogger("openrtc.cli")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors on stderr and exit code 2 (its default), for every subcommand."""

    commands: Mapping[str, argparse.ArgumentParser]
    """The subcommands' parsers, so a usage error found later prints that command's usage."""


def _worker_flags(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("worker options (each has an OPENRTC_* environment twin)")
    g.add_argument(
        "--isolation",
        choices=("coroutine", "process"),
        default="coroutine",
        help="coroutine: sessions share the worker's loop; process: one child process per session "
        "[OPENRTC_ISOLATION] (default: coroutine)",
    )
    g.add_argument(
        "--max-sessions",
        type=positive_int,
        metavar="N",
        help="cap on concurrent sessions [OPENRTC_MAX_SESSIONS]",
    )
    g.add_argument(
        "--max-sessions-per-agent",
        type=positive_int,
        metavar="N",
        help="cap per agent [OPENRTC_MAX_SESSIONS_PER_AGENT]",
    )
    g.add_argument(
        "--max-sessions-per-tenant",
        type=positive_int,
        metavar="N",
        help="cap per tenant [OPENRTC_MAX_SESSIONS_PER_TENANT]",
    )
    g.add_argument(
        "--slow-threshold-ms",
        type=positive_float,
        default=50.0,
        metavar="MS",
        help="loop stall that counts as a block [OPENRTC_SLOW_THRESHOLD_MS] (default: 50)",
    )
    g.add_argument(
        "--memory-warn-mb",
        type=positive_float,
        metavar="MB",
        help="warn once per crossing of this RSS [OPENRTC_MEMORY_WARN_MB]",
    )
    g.add_argument(
        "--memory-limit-mb",
        type=positive_float,
        metavar="MB",
        help="refuse new sessions above this RSS [OPENRTC_MEMORY_LIMIT_MB]",
    )
    g.add_argument(
        "--drain-timeout",
        type=non_negative_float,
        default=30.0,
        metavar="S",
        help="seconds a drain waits before cancelling sessions [OPENRTC_DRAIN_TIMEOUT] (default: 30)",
    )
    g.add_argument(
        "--no-introspection",
        action="store_true",
        help="no daemon thread, socket, task factory or timer [OPENRTC_NO_INTROSPECTION=1]",
    )
    g.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop; auto prefers uvloop [OPENRTC_LOOP] (default: auto)",
    )
    g.add_argument(
        "--socket", metavar="PATH", help="listen here instead of <socket folder>/<pid>.sock [OPENRTC_SOCKET]"
    )
    g.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="[OPENRTC_LOG_LEVEL] (default: info)",
    )
    g.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="[OPENRTC_LOG_FORMAT] (default: text)"
    )


def build_parser(worker_defaults: dict[str, Any] | None = None) -> _Parser:
    parser = _Parser(prog="openrtc", description="Run many agent sessions in one Python worker.")
    parser.add_argument("--version", action="version", version=f"openrtc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)
    parser.commands = sub.choices

    dev = sub.add_parser(
        "dev",
        help="run a worker for development, reloading agent files on save",
        description="Run a worker on AGENTS_DIR; a saved agent file is re-imported: new sessions "
        "use the new code, running ones finish on the old, a broken save keeps the old.",
    )
    dev.add_argument("agents_dir", metavar="AGENTS_DIR")
    _worker_flags(dev)
    dev.set_defaults(**(worker_defaults or {}))
    start = sub.add_parser(
        "start",
        help="run a worker for production (no reload)",
        description="Run a worker on AGENTS_DIR until SIGTERM/SIGINT, then drain and exit 0.",
    )
    start.add_argument("agents_dir", metavar="AGENTS_DIR")
    _worker_flags(start)
    start.set_defaults(**(worker_defaults or {}))

    dispatch = sub.add_parser(
        "dispatch",
        help="start sessions on a running worker and print their ids",
        description="Start sessions of AGENT. With several workers, picks the one with the most "
        "free capacity; --socket chooses one.",
    )
    dispatch.add_argument("agent", metavar="AGENT")
    dispatch.add_argument("--tenant", help="tenant of the sessions")
    dispatch.add_argument(
        "--metadata", default="{}", metavar="JSON", help="a JSON object given to each session"
    )
    dispatch.add_argument(
        "--count", type=positive_int, default=1, metavar="N", help="how many sessions (default: 1)"
    )
    dispatch.add_argument("--socket", metavar="PATH", help="the worker's socket (default: pick one)")
    dispatch.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="seconds to wait for the worker (default: 10)",
    )

    lst = sub.add_parser(
        "list",
        help="show the agents a folder defines and the files that fail",
        description="Import every agent file of AGENTS_DIR. Exit 0 when all load, 1 when any fails.",
    )
    lst.add_argument("agents_dir", metavar="AGENTS_DIR")
    lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    top = sub.add_parser(
        "top",
        help="live view of every session of every local worker (--once: print one snapshot)",
        description="Live view of the sessions of every worker of this user (press ? in it for the keys). "
        "--once prints one snapshot as a table (or JSON with --json) and exits: 0 on success, 1 when no "
        "worker answers. The table has no colour when stdout is not a terminal or NO_COLOR is set.",
    )
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.add_argument(
        "--refresh",
        type=positive_float,
        default=1.0,
        metavar="S",
        help="live view: seconds between refreshes (default: 1)",
    )
    top.add_argument("--json", action="store_true", help="with --once: print the snapshot schema as JSON")
    top.add_argument("--socket", type=Path, metavar="PATH", help="one worker's socket (default: all workers)")
    top.add_argument("--sort", choices=SORT_KEYS, default="cpu", help="sort sessions by (default: cpu)")
    top.add_argument("--agent", help="only sessions of this agent")
    top.add_argument("--tenant", help="only sessions of this tenant")
    top.add_argument("--status", choices=STATES, help="only sessions in this state")
    top.add_argument(
        "--session",
        metavar="ID",
        help="with --once: one session in full (its fields, recent blocks and their stacks); an id "
        "prefix will do",
    )

    demo = sub.add_parser(
        "demo",
        help="run a worker on agents_example/ with a steady mixed load, and top on it",
        description="Start a worker on agents_example/ in a child process, drive a steady mixed load "
        "(a few sessions misbehave) and open the live `openrtc top` on it. Quitting top (q) or Ctrl-C "
        "stops the load and drains the worker. --no-tui (or a stdout that is not a terminal) prints "
        "the `top --once` table every 5 s instead.",
    )
    demo.add_argument(
        "--no-tui", action="store_true", help="print the table every 5 s instead of the live view"
    )
    demo.add_argument("--agents", type=Path, metavar="DIR", help="agents folder (default: agents_example/)")
    demo.add_argument(
        "--duration", type=positive_float, metavar="S", help="stop after S seconds (default: never)"
    )
    demo.add_argument(
        "--rate",
        type=positive_float,
        default=5.0,
        metavar="N",
        help="sessions started per second (default: 5)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(args_list)
    if args.command in ("dev", "start"):
        try:
            defaults = env_defaults(WORKER_TWINS, os.environ)
        except ConfigError as exc:
            parser.commands[args.command].error(str(exc))
        # Flags beat the environment: re-parse with the environment as defaults.
        parser = build_parser(worker_defaults=defaults)
        args = parser.parse_args(args_list)
        return _run_worker(parser.commands[args.command], args, reload=args.command == "dev")
    if args.command == "dispatch":
        return _dispatch(parser.commands["dispatch"], args)
    if args.command == "list":
        return _list(args)
    if args.command == "top":
        return _top(parser.commands["top"], args)
    if args.command == "demo":
        from openrtc.cli.demo import run_demo

        return run_demo(args.agents, args.duration, args.rate, tui=not args.no_tui)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _run_worker(parser: argparse.ArgumentParser, args: argparse.Namespace, reload: bool) -> int:
    from openrtc.cli.logs import configure_logging
    from openrtc.pool import AgentPool
    from openrtc.runtime.loops import loop_factory
    from openrtc.runtime.pool import run_worker_loop
    from openrtc.runtime.reload import Reloader

    configure_logging(args.log_level, args.log_format)
    try:
        pool = AgentPool(
            isolation=args.isolation,
            enable_introspection=not args.no_introspection,
            slow_session_threshold_ms=args.slow_threshold_ms,
            max_sessions=args.max_sessions,
            max_sessions_per_agent=args.max_sessions_per_agent,
            max_sessions_per_tenant=args.max_sessions_per_tenant,
            memory_warn_mb=args.memory_warn_mb,
            memory_limit_mb=args.memory_limit_mb,
            drain_timeout_s=args.drain_timeout,
            socket_path=args.socket,
        )
        factory = loop_factory(args.loop)
        found = pool.discover(args.agents_dir)
    except ConfigError as exc:
        parser.error(str(exc))
    if not found.agents and not reload:
        log.error("no agent loaded from %s; nothing to run", Path(args.agents_dir).resolve())
        return 1
    reloader = Reloader(pool, args.agents_dir) if reload else None

    async def serve() -> None:
        watcher = None
        if reloader is not None:
            reloader.prime()
            watcher = asyncio.get_running_loop().create_task(reloader.run(), name="openrtc-reload")
        try:
            await pool.serve()
        finally:
            if watcher is not None:
                watcher.cancel()

    try:
        run_worker_loop(serve(), factory)
    except OpenRTCError as exc:
        log.error("%s", exc)
        return 1
    return 0


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from openrtc.introspection.client import WorkerClient, find_workers

    try:
        metadata = json.loads(args.metadata)
    except json.JSONDecodeError as exc:
        parser.error(f"--metadata is not valid JSON: {exc}")
    if not isinstance(metadata, dict):
        parser.error('--metadata must be a JSON object, e.g. \'{"caller": "alice"}\'')
    try:
        path = Path(args.socket) if args.socket else _pick_worker(find_workers(timeout=args.timeout))
        with WorkerClient(path, timeout=args.timeout) as client:
            data = client.request(
                "dispatch", agent=args.agent, tenant=args.tenant, metadata=metadata, count=args.count
            )
    except RemoteError as exc:
        started = exc.details.get("started")
        for session_id in started if isinstance(started, list) else []:
            print(session_id)
        print(f"openrtc dispatch: {exc}", file=sys.stderr)
        return 1
    except OpenRTCError as exc:
        print(f"openrtc dispatch: {exc}", file=sys.stderr)
        return 1
    for session_id in data["session_ids"]:
        print(session_id)
    return 0


def _pick_worker(workers: Sequence[Any]) -> Path:
    """The accepting worker with the most free slots (no cap counts as infinite); ties go to the idler."""

    def free(worker: Any) -> tuple[float, int]:
        hello = worker.hello
        cap = hello.get("max_sessions")
        active = int(hello.get("sessions_active", 0))
        return (float("inf") if cap is None else cap - active, -active)

    accepting = [w for w in workers if not w.hello.get("draining")]
    if not accepting:
        raise WorkerNotFound("every running worker is draining")
    best: Path = max(accepting, key=free).socket_path
    return best


def _top(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from openrtc.top.once import run_once
    from openrtc.top.view import Filters

    if args.json and not args.once:
        parser.error("--json needs --once")
    if args.session and not args.once:
        parser.error("--session needs --once (in the live view, press enter on a row)")
    filters = Filters(agent=args.agent, tenant=args.tenant, status=args.status)
    if args.once:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        return run_once(args.socket, args.json, filters, args.sort, color=color, session=args.session)
    from openrtc.top.app import make_app
    from openrtc.top.source import LiveSource

    make_app(LiveSource(args.socket), args.refresh, args.sort, filters).run()
    return 0


def _list(args: argparse.Namespace) -> int:
    from openrtc.runtime.discovery import discover

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    try:
        found = discover(args.agents_dir)
    except ConfigError as exc:
        print(f"openrtc list: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(
            json.dumps(
                {
                    "agents": [
                        {"name": a.name, "source": a.source, "line": a.line, "prewarm": a.prewarm is not None}
                        for a in found.agents
                    ],
                    "errors": [{"path": e.path, "line": e.line, "message": e.message} for e in found.errors],
                },
                indent=2,
            )
        )
    else:
        if found.agents:
            width = max(5, *(len(a.name) for a in found.agents))
            print(f"{'AGENT'.ljust(width)}  SOURCE")
            for agent in found.agents:
                suffix = "  (prewarm)" if agent.prewarm else ""
                print(f"{agent.name.ljust(width)}  {agent.source}:{agent.line}{suffix}")
        else:
            print(f"no agent found in {Path(args.agents_dir).resolve()}")
        for error in found.errors:
            print(f"FAILED  {error}")
    return 1 if found.errors else 0


if __name__ == "__main__":
    sys.exit(main())
