"""Reliability under faults, with real worker processes: drain of 500 sessions, kill -9, 200 concurrent
clients, and agents that misbehave on purpose. The long churn run is `make soak` (benchmarks/soak.py)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

from openrtc.introspection.client import WorkerClient
from openrtc.runtime.pool import CANCEL_GRACE_S, LEFTOVER_GRACE_S
from openrtc.top.source import LiveSource
from tests.cli.worker import Worker, run_cli
from tests.helpers import write_agent

POLITE = """\
import asyncio

async def entrypoint(session):
    await session.draining.wait()
    await asyncio.sleep(0.01 * (hash(session.id) % 20))
"""
STUBBORN = """\
import asyncio

async def entrypoint(session):
    await asyncio.sleep(3600)
"""
NEVER_RETURNS = """\
import asyncio

async def entrypoint(session):
    while True:  # never returns from cancel: catches it and waits again, forever
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            session.log.warning("cancel ignored")
"""
SWALLOWS = """\
import asyncio

async def entrypoint(session):
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        session.log.warning("cancel swallowed; returning normally")
"""
ESCAPES = """\
import asyncio, contextvars

async def forever():
    while True:
        await asyncio.sleep(0.05)

async def entrypoint(session):
    loop = asyncio.get_running_loop()
    # A task in a fresh context: not tagged with the session, not cancelled when it ends.
    loop.create_task(forever(), context=contextvars.Context())
    loop.call_soon(lambda: None, context=contextvars.Context())
    await asyncio.sleep(0.05)
"""
EXITS = """\
import sys

async def entrypoint(session):
    sys.exit(2)
"""


def start(agents: Path, home: Path, workers: list[Worker], *flags: str) -> Worker:
    worker = Worker("start", agents, home, *flags)
    workers.append(worker)
    return worker.ready()


def outcomes(worker: Worker) -> dict[str, str]:
    return {
        r["session_id"]: r["message"]
        for r in worker.records()
        if r["message"].startswith("session ") and r["message"].split()[1] in ("ended", "failed", "cancelled")
    }


def test_drain_of_500_sessions_accounts_for_every_one(
    agents_dir: Path, sock_home: Path, workers: list[Worker]
) -> None:
    write_agent(agents_dir, "polite", POLITE)
    write_agent(agents_dir, "stubborn", STUBBORN)
    worker = start(agents_dir, sock_home, workers, "--drain-timeout", "3")
    polite = worker.dispatch("polite", "--count", "400").stdout.split()
    stubborn = worker.dispatch("stubborn", "--count", "100").stdout.split()
    assert len(set(polite + stubborn)) == 500
    with WorkerClient(worker.socket) as client:
        client.request("drain")
        time.sleep(0.5)
        during = client.request("snapshot")  # the last snapshot: taken while it drains
    assert during["worker"]["draining"]
    states = {r["session_id"]: r["state"] for r in during["sessions"]}
    assert set(states) == set(polite + stubborn)  # live or recently ended: none missing
    started = time.monotonic()
    assert worker.proc.wait(15) == 0
    assert time.monotonic() - started < 3 + 5 + 1  # drain timeout + cancel grace + margin
    ends = outcomes(worker)
    assert set(ends) == set(polite + stubborn)
    assert all(ends[i].startswith("session ended") for i in polite)
    assert all(ends[i].startswith("session cancelled reason=drain_timeout") for i in stubborn)


def test_kill_9_top_reports_it_gone_and_a_new_worker_starts_cleanly(
    agents_dir: Path, sock_home: Path, workers: list[Worker]
) -> None:
    write_agent(agents_dir, "polite", POLITE)
    first = start(agents_dir, sock_home, workers)
    first.dispatch("polite", "--count", "5")
    source = LiveSource()
    assert [v.gone for v in source.fetch().workers] == [False]
    first.proc.kill()
    first.proc.wait()
    assert first.socket.exists()  # nobody cleaned it: the process died
    (view,) = source.fetch().workers
    assert view.gone and view.snapshot is not None and view.snapshot.worker.pid == first.proc.pid
    assert not first.socket.exists()  # removed after a refused connect
    once = run_cli("top", "--once", env=first.env)
    assert once.returncode == 1 and "no worker running" in once.stderr
    second = start(agents_dir, sock_home, workers)
    assert second.dispatch("polite").returncode == 0
    once = run_cli("top", "--once", "--json", env=second.env)
    assert once.returncode == 0 and f'"pid": {second.proc.pid}' in once.stdout


def test_200_concurrent_clients_against_1000_sessions(
    agents_dir: Path, sock_home: Path, workers: list[Worker]
) -> None:
    write_agent(agents_dir, "polite", POLITE)
    worker = start(agents_dir, sock_home, workers)
    assert len(worker.dispatch("polite", "--count", "1000").stdout.split()) == 1000
    with WorkerClient(worker.socket) as client:
        # Wait for a full window of heartbeats with the sessions in place (by the worker's clock).
        since = client.request("hello")["started_at"]
        placed = time.time() - since
        while (first := client.request("snapshot"))["worker"]["uptime_s"] < placed + 5.5:
            time.sleep(0.5)
        before = first["worker"]["loop_lag_ms"]["p99"]
    answers: list[int] = []
    errors: list[BaseException] = []
    gate = threading.Barrier(200)

    def one() -> None:
        try:
            with WorkerClient(worker.socket, timeout=60) as client:
                gate.wait()
                answers.append(len(client.request("snapshot")["sessions"]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(200)]
    burst_started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    burst_s = time.monotonic() - burst_started
    assert not errors and answers == [1000] * 200
    with WorkerClient(worker.socket) as client:
        after: dict[str, Any] = client.request("snapshot")["worker"]
    # The heartbeat window (5 s) now covers the burst. The 2 ms goal is measured by
    # benchmarks/bench_clients.py (repeated, on a quiet machine); here: no seconds-long GIL convoy
    # (a loaded CI machine alone gave a 69 ms lag once, so the bound is a quarter second).
    assert burst_s < 5, burst_s
    assert after["loop_lag_ms"]["p99"] <= before + 250.0, (before, after["loop_lag_ms"], burst_s)
    assert after["introspection"]["errors"] == 0


def test_misbehaving_agents_are_contained_and_the_worker_still_drains(
    agents_dir: Path, sock_home: Path, workers: list[Worker]
) -> None:
    for name, source in {
        "never_returns": NEVER_RETURNS,
        "swallows": SWALLOWS,
        "escapes": ESCAPES,
        "exits": EXITS,
        "polite": POLITE,
    }.items():
        write_agent(agents_dir, name, source)
    worker = start(agents_dir, sock_home, workers, "--drain-timeout", "1")
    ids = {
        name: worker.dispatch(name).stdout.strip()
        for name in ("never_returns", "swallows", "escapes", "exits")
    }
    worker.wait_for_log("session failed reason=sys_exit")
    worker.wait_for_log("session ended", count=1)  # escapes: its own part ends, its stray task lives on
    cancelled = run_cli("dispatch", "polite", env=worker.env).stdout.strip()
    assert cancelled and worker.dispatch("polite").returncode == 0  # still serving
    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    # The drain's timeout, the grace for what it cancels, the grace for leftover tasks, and a margin
    # for a loaded machine (7.0 s quiet here; 8.07 s seen once in CI against the old bound of 8).
    assert time.monotonic() - started < 1 + CANCEL_GRACE_S + LEFTOVER_GRACE_S + 2
    ends = outcomes(worker)
    assert ends[ids["exits"]].startswith("session failed reason=sys_exit")
    assert ends[ids["escapes"]].startswith("session ended")
    assert ends[ids["swallows"]].startswith("session ended")  # it chose to return: that is an end
    assert ends[ids["never_returns"]].startswith("session cancelled reason=drain_timeout")
    messages = [r["message"] for r in worker.records()]
    assert any("ignored cancellation" in m for m in messages)  # never_returns, abandoned and reported
    assert "cancel swallowed; returning normally" in messages
