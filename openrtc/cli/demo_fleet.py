"""`openrtc demo --fleet` (`make demo-fleet`): a NATS server with JetStream, three workers on
`agents_example/` that join it, the demo's steady mixed load dispatched to the fleet, and the fleet's
live `openrtc top --nats`. Quitting `top` (or Ctrl-C) stops the load, drains the workers, then stops
the server. `--no-tui` prints `top --once --nats` every few seconds instead.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from openrtc.cli.demo import LOAD_MIX, TENANTS, demo_agents
from openrtc.cli.llmsim import SimulatedLLM
from openrtc.errors import OpenRTCError
from openrtc.introspection.paths import ensure_private_dir, socket_dir

WORKERS = 3
MAX_SESSIONS = 25


def run_fleet_demo(
    agents: Path | None, duration: float | None, rate: float, tui: bool = True, status_every: float = 5.0
) -> int:
    from openrtc.fleet.localserver import LocalNats

    folder = demo_agents(agents)
    if folder is None:
        return 1
    tui = tui and sys.stdout.isatty()
    base = ensure_private_dir(socket_dir()) / f"demo-fleet-{os.getpid()}"
    try:
        server = LocalNats(base / "nats").start()
    except OpenRTCError as exc:
        print(f"openrtc demo: {exc}", file=sys.stderr)
        return 1
    llm = SimulatedLLM().start()
    env = {**os.environ, "OPENAI_BASE_URL": llm.base_url, "OPENAI_API_KEY": "demo-no-key"}
    logs: list[IO[bytes]] = []
    workers: list[subprocess.Popen[bytes]] = []
    stop = threading.Event()
    try:
        for i in range(WORKERS):
            log_file = open(base / f"worker-{i}.log", "wb")  # noqa: SIM115 - closed in `finally`
            logs.append(log_file)
            args = [sys.executable, "-m", "openrtc.cli.main", "start", str(folder), "--nats", server.url]
            args += ["--max-sessions", str(MAX_SESSIONS), "--drain-timeout", "3", "--log-level", "warning"]
            args += ["--log-dir", str(base / f"events-{i}")]
            workers.append(subprocess.Popen(args, stderr=log_file, env=env))
        print(
            f"demo fleet: nats-server {server.url}, {WORKERS} workers (pids "
            f"{', '.join(str(w.pid) for w in workers)}), {rate:g} sessions/s; Ctrl-C stops it",
            flush=True,
        )
        load = threading.Thread(
            target=_drive, args=(server.url, duration, rate, stop), name="openrtc-demo-load", daemon=True
        )
        load.start()
        if tui:
            _live_view(server.url, load, stop)
        else:
            _print_every(server.url, duration, status_every, stop)
        stop.set()
        load.join(5)
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)  # the drain (3 s), its sessions' unwinding (5 s), the fleet's close
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        server.stop()
        llm.close()
        for log in logs:
            log.close()
    codes = ", ".join(str(w.returncode) for w in workers)
    print(f"demo fleet stopped; workers exited with {codes}; their logs: {base}/worker-*.log", flush=True)
    return 0


def _live_view(url: str, load: threading.Thread, stop: threading.Event) -> None:
    from openrtc.top.app import make_app
    from openrtc.top.fleet import FleetSource

    source = FleetSource(url)
    app = make_app(source, refresh_s=1.0)

    def watch() -> None:  # the load ended (its duration): close the view
        load.join()
        if not stop.is_set():
            app.call_from_thread(app.exit)

    threading.Thread(target=watch, name="openrtc-demo-watch", daemon=True).start()
    try:
        app.run()
    finally:
        source.close()


def _print_every(url: str, duration: float | None, every: float, stop: threading.Event) -> None:
    from openrtc.introspection.selection import Filters
    from openrtc.top.once import run_once_fleet

    started = time.monotonic()
    while not stop.wait(every):
        print(f"\n--- t={time.monotonic() - started:.0f}s ---", flush=True)
        run_once_fleet(url, False, Filters(), "cpu")
        sys.stdout.flush()
        if duration is not None and time.monotonic() - started >= duration:
            return


def _drive(url: str, duration: float | None, rate: float, stop: threading.Event) -> None:
    """Dispatch sessions of the demo's mix to the fleet at `rate` per second (see `demo._drive`)."""
    from openrtc.fleet.client import connect, ensure_stream, publish

    async def main() -> None:
        nc = await connect(url, name="openrtc-demo")
        try:
            js = nc.jetstream()
            await ensure_stream(js)
            agents, weights = list(LOAD_MIX), list(LOAD_MIX.values())
            tenants, shares = list(TENANTS), list(TENANTS.values())
            started = time.monotonic()
            next_start, count = started, 0
            while not stop.is_set():
                if duration is not None and time.monotonic() - started >= duration:
                    return
                count += 1
                metadata = {
                    "caller": f"caller-{random.randrange(1000)}",
                    "turns": random.randint(5, 25),
                    "frames": random.randint(250, 1500),
                    "clock_in_prompt": count % 4 == 3,
                }
                agent = random.choices(agents, weights)[0]
                await publish(js, agent, tenant=random.choices(tenants, shares)[0], metadata=metadata)
                next_start += 1.0 / rate
                await asyncio.sleep(max(0.0, next_start - time.monotonic()))
        finally:
            await nc.close()

    try:
        asyncio.run(main())
    except Exception as exc:  # the server went away: the view says the rest
        print(f"openrtc demo: the load stopped: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
