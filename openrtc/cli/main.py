"""`openrtc`: run workers, dispatch sessions, list agents, show them (`top`), run the demo.

Exit codes: 0 ok, 1 runtime error, 2 usage error; a worker also exits 3 when its drain's hard deadline
passed (`runtime.signals`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openrtc.cli.env import STATS_TWINS, WORKER_TWINS, env_defaults
from openrtc.cli.parser import build_parser, command_of
from openrtc.errors import ConfigError, OpenRTCError, RemoteError, WorkerNotFound

log = logging.getLogger("openrtc.cli")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`openrtc stats history | head`): not an error; say nothing more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    only = command_of(args_list)
    parser = build_parser(only=only)
    args = parser.parse_args(args_list)
    if args.command in ("dev", "start"):
        try:
            defaults = env_defaults(WORKER_TWINS, os.environ)
        except ConfigError as exc:
            parser.commands[args.command].error(str(exc))
        # Flags beat the environment: re-parse with the environment as defaults.
        parser = build_parser(worker_defaults=defaults, only=only)
        args = parser.parse_args(args_list)
        return _run_worker(parser.commands[args.command], args, reload=args.command == "dev")
    if args.command == "stats":
        from openrtc.cli.stats import run as run_stats

        try:
            stats_defaults = env_defaults(STATS_TWINS, os.environ)
        except ConfigError as exc:
            parser.commands["stats"].error(str(exc))
        if args.log_dir is None and "log_dir" in stats_defaults:
            args.log_dir = stats_defaults["log_dir"]
        return run_stats(parser.commands["stats"], args)
    if args.command == "capacity":
        from openrtc.cli.capacity import run as run_capacity

        return run_capacity(args.command_parser, args)
    if args.command == "profile":
        from openrtc.cli.profile import run as run_profile

        return run_profile(parser.commands["profile"], args)
    if args.command == "dispatch":
        return _dispatch(parser.commands["dispatch"], args)
    if args.command == "list":
        return _list(args)
    if args.command == "top":
        return _top(parser.commands["top"], args)
    if args.command == "demo" and args.fleet:
        if args.log_dir:
            parser.commands["demo"].error(
                "--log-dir and --fleet: each worker of the fleet demo has its own log"
            )
        from openrtc.cli.demo_fleet import run_fleet_demo

        return run_fleet_demo(args.agents, args.duration, args.rate, tui=not args.no_tui)
    if args.command == "demo":
        from openrtc.cli.demo import run_demo

        return run_demo(args.agents, args.duration, args.rate, tui=not args.no_tui, log_dir=args.log_dir)
    parser.error(f"unknown command {args.command!r}")
    return 2


def _run_worker(parser: argparse.ArgumentParser, args: argparse.Namespace, reload: bool) -> int:
    import asyncio

    from openrtc.cli.logs import configure_logging
    from openrtc.pool import AgentPool
    from openrtc.runtime.loops import loop_factory
    from openrtc.runtime.pool import run_worker_loop
    from openrtc.runtime.reload import Reloader
    from openrtc.usage.eventlog import Retention, default_log_dir
    from openrtc.usage.hook import UsageConfig

    configure_logging(args.log_level, args.log_format)
    try:
        usage = UsageConfig(
            log_dir=None if args.no_event_log else (args.log_dir or default_log_dir()),
            pricing_file=args.pricing,
            record_content=args.record_content,
            retention=Retention.parse(args.log_retain),
        )
        fleet = _fleet_hook(args)
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
            usage=usage,
            hooks=[*_plug_ins(args), *([fleet] if fleet is not None else [])],
        )
        if fleet is not None and pool.introspection is not None:
            fleet.snapshot = _fleet_view(pool.introspection)
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


def _fleet_hook(args: argparse.Namespace) -> Any:
    """The fleet's hook with `--nats`, else None."""
    if not args.nats:
        return None
    from openrtc.fleet import FleetError
    from openrtc.fleet.worker import FleetConfig, FleetHook

    try:
        return FleetHook(FleetConfig(args.nats, args.ack_wait, args.max_deliver))
    except FleetError as exc:
        raise ConfigError(f"--nats: {exc}") from None


def _fleet_view(introspection: Any) -> Any:
    """What the worker puts in the fleet view: the socket's snapshot, its first `VIEW_ROWS` rows."""
    from openrtc.fleet.protocol import VIEW_ROWS
    from openrtc.introspection.selection import Selection

    view = Selection("cpu", VIEW_ROWS)
    return lambda: introspection.snapshot(view)


def _plug_ins(args: argparse.Namespace) -> list[Any]:
    """The hooks the flags ask for, each from its own package."""
    from openrtc.capacity import CapacityConfig, CapacityHook, Classes
    from openrtc.capacity.arch import load

    arch = load(args.model_arch) if args.model_arch else None
    hooks: list[Any] = [
        CapacityHook(CapacityConfig(Classes.parse(args.classes), arch, args.kv_dtype, args.kv_warn_gb))
    ]
    if args.metrics_port is not None:
        from openrtc.metrics import MetricsConfig, MetricsHook

        hooks.append(MetricsHook(MetricsConfig(args.metrics_port, args.metrics_addr)))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        try:
            import opentelemetry.sdk  # noqa: F401  (the extra is there)

            from openrtc.otel import OtelHook
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but OpenTelemetry is not installed "
                "(pip install 'openrtc[otel]'): no OpenTelemetry export"
            )
        else:
            hooks.append(OtelHook())
    return hooks


def _dispatch(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from openrtc.introspection.client import WorkerClient, find_workers

    try:
        metadata = json.loads(args.metadata)
    except json.JSONDecodeError as exc:
        parser.error(f"--metadata is not valid JSON: {exc}")
    if not isinstance(metadata, dict):
        parser.error('--metadata must be a JSON object, e.g. \'{"caller": "alice"}\'')
    nats_url = args.nats or os.environ.get("OPENRTC_NATS_URL")
    if args.wait and not nats_url:
        parser.error("--wait needs --nats (or OPENRTC_NATS_URL)")
    if nats_url:
        if args.socket:
            parser.error("--socket and --nats: choose one")
        return _dispatch_fleet(args, nats_url, metadata)
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


def _dispatch_fleet(args: argparse.Namespace, url: str, metadata: dict[str, Any]) -> int:
    import asyncio

    from openrtc.fleet.client import dispatch_many

    try:
        ids, ends = asyncio.run(
            dispatch_many(url, args.agent, args.count, tenant=args.tenant, metadata=metadata, wait=args.wait)
        )
    except OpenRTCError as exc:
        print(f"openrtc dispatch: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if not args.wait:
        for session_id in ids:
            print(session_id)
        return 0
    for session_id in ids:
        end = ends[session_id]
        again = f" (delivery {end.attempt})" if end.attempt > 1 else ""
        print(
            f"{session_id} {end.state}"
            + (f" {end.reason}" if end.reason else "")
            + f" on worker {end.worker_id}{again}"
        )
    return 0 if all(ends[i].state == "ended" for i in ids) else 1


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
    from openrtc.introspection.selection import Filters
    from openrtc.top.once import run_once

    if args.json and not args.once:
        parser.error("--json needs --once")
    if args.limit is not None and not args.once:
        parser.error("--limit needs --once (the live view asks for the rows on screen)")
    if args.session and not args.once:
        parser.error("--session needs --once (in the live view, press enter on a row)")
    filters = Filters(agent=args.agent, tenant=args.tenant, status=args.status, token_class=args.token_class)
    if args.nats and args.socket:
        parser.error("--socket and --nats: choose one")
    if args.nats and args.once:
        from openrtc.top.once import run_once_fleet

        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        return run_once_fleet(args.nats, args.json, filters, args.sort, color=color, session=args.session)
    if args.nats:
        from openrtc.top.app import make_app
        from openrtc.top.fleet import FleetSource

        source = FleetSource(args.nats)
        try:
            make_app(source, args.refresh, args.sort, filters).run()
        finally:
            source.close()
        return 0
    if args.once:
        color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
        return run_once(
            args.socket, args.json, filters, args.sort, color=color, session=args.session, limit=args.limit
        )
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
