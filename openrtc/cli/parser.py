"""The `openrtc` command line: every command, flag and environment twin, as one argparse parser."""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from openrtc import __version__
from openrtc.cli.env import non_negative_float, non_negative_int, port, positive_float, positive_int


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors on stderr and exit code 2 (its default), for every subcommand."""

    commands: Mapping[str, argparse.ArgumentParser]
    """The subcommands' parsers, so a usage error found later prints that command's usage."""


def _worker_flags(parser: argparse.ArgumentParser) -> None:
    from openrtc.capacity.classes import DEFAULT_TEXT as DEFAULT_CLASSES
    from openrtc.fleet.protocol import ACK_WAIT_S, MAX_DELIVER

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
    u = parser.add_argument_group("usage and the event log")
    u.add_argument(
        "--log-dir",
        type=Path,
        metavar="DIR",
        help="the event log's folder [OPENRTC_LOG_DIR] (default: $XDG_STATE_HOME/openrtc/sessions)",
    )
    u.add_argument("--no-event-log", action="store_true", help="write no event log [OPENRTC_NO_EVENT_LOG=1]")
    u.add_argument(
        "--log-retain",
        default="30d",
        metavar="AGE,SIZE",
        help="remove log files older than AGE or past SIZE in all: 30d, 12h, 2GB, 30d,2GB or forever "
        "[OPENRTC_LOG_RETAIN] (default: 30d)",
    )
    u.add_argument(
        "--pricing",
        type=Path,
        metavar="FILE",
        help="your prices (TOML, US dollars per million tokens), used before genai-prices [OPENRTC_PRICING]",
    )
    u.add_argument(
        "--record-content",
        action="store_true",
        help="keep prompts and outputs in the event log (off: never written) [OPENRTC_RECORD_CONTENT=1]",
    )
    c = parser.add_argument_group("token classes and KV cache")
    c.add_argument(
        "--classes",
        default=DEFAULT_CLASSES,
        metavar="NAME=MAX,...",
        help="classes by cumulative tokens, upper bounds inclusive, the last one open "
        f"[OPENRTC_CLASSES] (default: {DEFAULT_CLASSES},extreme)",
    )
    c.add_argument(
        "--model-arch",
        metavar="NAME|PATH",
        help="the served model, for KV-cache estimates: a built-in name (see `openrtc capacity plan "
        "--help`) or a Hugging Face config.json [OPENRTC_MODEL_ARCH] (default: no estimate)",
    )
    c.add_argument(
        "--kv-dtype",
        choices=("bf16", "fp16", "fp8", "int8", "int4"),
        default="bf16",
        help="the KV cache's type [OPENRTC_KV_DTYPE] (default: bf16)",
    )
    c.add_argument(
        "--kv-warn-gb",
        type=positive_float,
        metavar="GB",
        help="warn once when the worker's KV estimate reaches GB, clear below 90%% of it "
        "[OPENRTC_KV_WARN_GB] (default: never)",
    )
    m = parser.add_argument_group("metrics")
    m.add_argument(
        "--metrics-port",
        type=port,
        metavar="PORT",
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (0: any free port, logged) "
        "[OPENRTC_METRICS_PORT] (default: none)",
    )
    m.add_argument(
        "--metrics-addr",
        default="127.0.0.1",
        metavar="ADDR",
        help="the metrics address [OPENRTC_METRICS_ADDR] (default: 127.0.0.1, this machine only)",
    )
    f = parser.add_argument_group("fleet (NATS JetStream)")
    f.add_argument(
        "--nats",
        metavar="URL",
        help="join the fleet at URL (nats://HOST:PORT): take session requests from its stream when "
        "this worker has room [OPENRTC_NATS_URL] (default: no fleet)",
    )
    f.add_argument(
        "--max-deliver",
        type=positive_int,
        default=MAX_DELIVER,
        metavar="N",
        help="deliveries of a request before it is reported lost [OPENRTC_MAX_DELIVER] "
        f"(default: {MAX_DELIVER}; set by the first worker to create an agent's consumer)",
    )
    f.add_argument(
        "--ack-wait",
        type=positive_float,
        default=ACK_WAIT_S,
        metavar="SECONDS",
        help="how long a silent worker keeps a request before another gets it [OPENRTC_ACK_WAIT] "
        f"(default: {ACK_WAIT_S:g}; set like --max-deliver)",
    )


SUMMARIES = {
    "dev": "run a worker for development, reloading agent files on save",
    "start": "run a worker for production (no reload)",
    "dispatch": "start sessions on a running worker and print their ids",
    "list": "show the agents a folder defines and the files that fail",
    "top": "live view of every session of every local worker (--once: print one snapshot)",
    "stats": "what sessions did and cost, from the event log",
    "capacity": "plan GPUs for a workload mix",
    "profile": "CPU profile of a worker's sessions, or token / tool / wall-time profiles from the event log",
    "demo": "run a worker on agents_example/ with a steady mixed load, and top on it",
}
"""Each command's line in `openrtc --help`."""


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` runs, when its first word names one."""
    return argv[0] if argv and argv[0] in SUMMARIES else None


def build_parser(worker_defaults: dict[str, Any] | None = None, only: str | None = None) -> Parser:
    """The whole CLI; with `only`, that command's flags alone (the others are listed without theirs):
    what one run needs, without importing what every other command's flags need (`top --once` and
    `stats` start in a fresh process each time)."""
    parser = Parser(prog="openrtc", description="Run many agent sessions in one Python worker.")
    parser.add_argument("--version", action="version", version=f"openrtc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    parser.commands = sub.choices

    def command(name: str, description: str) -> Parser | None:
        if only is not None and only != name:
            sub.add_parser(name, help=SUMMARIES[name])
            return None
        new: Parser = sub.add_parser(name, help=SUMMARIES[name], description=description)
        return new

    dev = command(
        "dev",
        "Run a worker on AGENTS_DIR; a saved agent file is re-imported: new sessions "
        "use the new code, running ones finish on the old, a broken save keeps the old.",
    )
    if dev is not None:
        dev.add_argument("agents_dir", metavar="AGENTS_DIR")
        _worker_flags(dev)
        dev.set_defaults(**(worker_defaults or {}))
    start = command(
        "start",
        "Run a worker on AGENTS_DIR until SIGTERM/SIGINT, then drain and exit 0.",
    )
    if start is not None:
        start.add_argument("agents_dir", metavar="AGENTS_DIR")
        _worker_flags(start)
        start.set_defaults(**(worker_defaults or {}))

    dispatch = command(
        "dispatch",
        "Start sessions of AGENT. With several workers, picks the one with the most "
        "free capacity; --socket chooses one.",
    )
    if dispatch is not None:
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
            "--nats",
            metavar="URL",
            help="dispatch to the fleet at URL instead (nats://HOST:PORT): the requests wait in its stream "
            "for a worker with room [OPENRTC_NATS_URL]",
        )
        dispatch.add_argument(
            "--wait",
            action="store_true",
            help="with --nats: wait until every session ends and print its end state, worker and, when "
            "it ran more than once, its delivery (exit 1 when any did not end well)",
        )
        dispatch.add_argument(
            "--timeout",
            type=positive_float,
            default=10.0,
            metavar="S",
            help="seconds to wait for the worker (default: 10)",
        )

    lst = command(
        "list",
        "Import every agent file of AGENTS_DIR. Exit 0 when all load, 1 when any fails.",
    )
    if lst is not None:
        lst.add_argument("agents_dir", metavar="AGENTS_DIR")
        lst.add_argument("--json", action="store_true", help="print JSON instead of a table")
    top = command(
        "top",
        "Live view of the sessions of every worker of this user (press ? in it for the keys). "
        "--once prints one snapshot as a table (or JSON with --json) and exits: 0 on success, 1 when no "
        "worker answers. The table has no colour when stdout is not a terminal or NO_COLOR is set.",
    )
    if top is not None:
        from openrtc.introspection.selection import SORT_KEYS, STATES

        top.add_argument("--once", action="store_true", help="print one snapshot and exit")
        top.add_argument(
            "--refresh",
            type=positive_float,
            default=1.0,
            metavar="S",
            help="live view: seconds between refreshes (default: 1)",
        )
        top.add_argument("--json", action="store_true", help="with --once: print the snapshot schema as JSON")
        top.add_argument(
            "--limit",
            type=non_negative_int,
            metavar="N",
            help="with --once: at most N sessions per worker, the first in --sort order, as the worker "
            "selects them (default: 100 for the table, all for --json; 0: all)",
        )
        top.add_argument(
            "--socket", type=Path, metavar="PATH", help="one worker's socket (default: all workers)"
        )
        top.add_argument(
            "--nats",
            metavar="URL",
            help="every worker of the fleet at URL (nats://HOST:PORT), from its view bucket, instead of "
            "this machine's sockets",
        )
        top.add_argument("--sort", choices=SORT_KEYS, default="cpu", help="sort sessions by (default: cpu)")
        top.add_argument("--agent", help="only sessions of this agent")
        top.add_argument("--tenant", help="only sessions of this tenant")
        top.add_argument(
            "--class", dest="token_class", metavar="CLASS", help="only sessions of this token class"
        )
        top.add_argument("--status", choices=STATES, help="only sessions in this state")
        top.add_argument(
            "--session",
            metavar="ID",
            help="with --once: one session in full (its fields, recent blocks and their stacks); an id "
            "prefix will do",
        )

    for name in ("stats", "capacity", "profile"):  # each in a module of its own
        if only is None or only == name:
            importlib.import_module(f"openrtc.cli.{name}").add_parser(sub)
        else:
            sub.add_parser(name, help=SUMMARIES[name])

    demo = command(
        "demo",
        "Start a worker on agents_example/ in a child process, drive a steady mixed load "
        "(a few sessions misbehave) and open the live `openrtc top` on it. Quitting top (q) or Ctrl-C "
        "stops the load and drains the worker. --no-tui (or a stdout that is not a terminal) prints "
        "the `top --once` table every 5 s instead. The chat agents call a simulated LLM the demo "
        "starts on loopback (no network): their tokens and cost are made up, realistic in shape.",
    )
    if demo is not None:
        demo.add_argument(
            "--no-tui", action="store_true", help="print the table every 5 s instead of the live view"
        )
        demo.add_argument(
            "--agents", type=Path, metavar="DIR", help="agents folder (default: agents_example/)"
        )
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
        demo.add_argument(
            "--log-dir",
            type=Path,
            metavar="DIR",
            help="the worker's event log, for `openrtc stats` (default: a new folder next to its socket)",
        )
        demo.add_argument(
            "--fleet",
            action="store_true",
            help="a fleet instead (make demo-fleet): a local nats-server, three workers that join it, the "
            "load dispatched over NATS, and `top --nats` on it",
        )
    return parser
