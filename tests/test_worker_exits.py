"""How a real worker ends: every signal an orchestrator or a terminal sends, an agent that stops the
loop, a drain whose loop is blocked, and a worker that dies without draining (its sessions are then
reported lost, not silently gone)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from openrtc.introspection.client import WorkerClient
from openrtc.introspection.ledger import parse_ledger
from openrtc.runtime.signals import EXIT_DRAIN_DEADLINE
from openrtc.top.source import LiveSource
from tests.cli.worker import Worker, run_cli
from tests.helpers import write_agent

POLITE = """\
async def entrypoint(session):
    await session.draining.wait()
"""
DEAF = """\
import asyncio

async def entrypoint(session):
    await asyncio.sleep(3600)
"""
STOPPER = """\
import asyncio

async def entrypoint(session):
    await asyncio.sleep(0.05)
    asyncio.get_event_loop().stop()
    session.log.info("still here after loop.stop()")
    await session.draining.wait()
"""
SLEEPER = """\
import asyncio
import time

async def entrypoint(session):
    await asyncio.sleep(0.05)
    time.sleep(30)  # STUCK
"""
SELF_TERM = """\
import asyncio
import os
import signal

async def entrypoint(session):
    await asyncio.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs here, inside this session's code
    await asyncio.sleep(0.1)
"""
EXITER = """\
import asyncio
import os

async def entrypoint(session):
    await asyncio.sleep(0.3)
    os._exit(9)
"""


def ends(worker: Worker) -> dict[str, str]:
    """session id -> its end line, for every session that got one."""
    out = {}
    for record in worker.records():
        message = record.get("message", "")
        if message.startswith("session ") and message.split()[1] in ("ended", "failed", "cancelled", "lost"):
            out[record["session_id"]] = message
    return out


@pytest.fixture
def agents(agents_dir: Path) -> Path:
    for name, source in {"polite": POLITE, "deaf": DEAF, "stopper": STOPPER, "sleeper": SLEEPER}.items():
        write_agent(agents_dir, name, source)
    write_agent(agents_dir, "exiter", EXITER)
    write_agent(agents_dir, "self_term", SELF_TERM)
    return agents_dir


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_each_drain_signal_drains_and_every_session_gets_its_end_line(
    agents: Path, sock_home: Path, workers: list[Worker], sig: signal.Signals
) -> None:
    worker = Worker("start", agents, sock_home, "--drain-timeout", "0.5")
    workers.append(worker)
    worker.ready()
    polite = worker.dispatch("polite", "--count", "5").stdout.split()
    deaf = worker.dispatch("deaf", "--count", "5").stdout.split()
    assert worker.stop(sig) == 0
    lines = ends(worker)
    assert all(lines[i].startswith("session ended") for i in polite)
    assert all(lines[i].startswith("session cancelled reason=drain_timeout") for i in deaf)
    assert not worker.socket.exists() and not list(worker.socket.parent.glob("*.sessions"))


def test_a_signal_that_lands_inside_a_session_still_drains_the_worker(
    agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    """The drain must not belong to the session the signal interrupted (it would be cancelled with it)."""
    worker = Worker("start", agents, sock_home, "--drain-timeout", "2")
    workers.append(worker)
    worker.ready()
    polite = worker.dispatch("polite").stdout.strip()
    (culprit,) = worker.dispatch("self_term").stdout.split()
    assert worker.proc.wait(20) == 0, worker.log_path.read_text()
    lines = ends(worker)
    assert lines[culprit].startswith("session ended") and lines[polite].startswith("session ended")


def test_sigquit_stops_at_once_and_a_second_signal_cuts_the_drain_short(
    agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    quick = Worker("start", agents, sock_home, "--drain-timeout", "60")
    workers.append(quick)
    quick.ready()
    ids = quick.dispatch("deaf", "--count", "3").stdout.split()
    started = time.monotonic()
    assert quick.stop(signal.SIGQUIT) == 0
    assert time.monotonic() - started < 10  # not the 60 s drain timeout
    assert all(ends(quick)[i].startswith("session cancelled reason=signal") for i in ids)

    twice = Worker("start", agents, sock_home, "--drain-timeout", "60")
    workers.append(twice)
    twice.ready()
    ids = twice.dispatch("deaf", "--count", "3").stdout.split()
    twice.proc.send_signal(signal.SIGTERM)
    twice.wait_for_log("draining 3 sessions")
    started = time.monotonic()
    assert twice.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 10
    assert all(ends(twice)[i].startswith("session cancelled reason=signal") for i in ids)


def test_an_agent_stopping_the_loop_is_refused_and_named(
    agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    worker = Worker("start", agents, sock_home, "--drain-timeout", "1")
    workers.append(worker)
    worker.ready()
    (stopper,) = worker.dispatch("stopper").stdout.split()
    polite = worker.dispatch("polite").stdout.strip()
    (refused,) = worker.wait_for_log("called loop.stop(): ignored")
    assert refused["session_id"] == stopper and refused["agent"] == "stopper"
    worker.wait_for_log("still here after loop.stop()")
    assert worker.dispatch("polite").returncode == 0  # the worker still serves
    assert worker.stop(signal.SIGTERM) == 0
    lines = ends(worker)
    assert lines[stopper].startswith("session ended") and lines[polite].startswith("session ended")


def test_the_drain_deadline_holds_while_the_loop_is_blocked(
    agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    worker = Worker("start", agents, sock_home, "--drain-timeout", "1")
    workers.append(worker)
    worker.ready()
    polite = worker.dispatch("polite", "--count", "3").stdout.split()
    (stuck,) = worker.dispatch("sleeper").stdout.split()
    with WorkerClient(worker.socket) as client:  # wait until the loop is inside time.sleep(30)
        deadline = time.monotonic() + 10
        while not any(b["ongoing"] for b in client.request("snapshot")["blocks"]):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    started = time.monotonic()
    code = worker.stop(signal.SIGTERM, timeout=20)
    took = time.monotonic() - started
    assert code == EXIT_DRAIN_DEADLINE, worker.log_path.read_text()
    assert took < 6, took  # drain timeout 1 s + grace 1 s + a ping; not the 29 s left of the sleep
    lines = ends(worker)
    assert set(lines) >= {*polite, stuck}
    for session_id in (*polite, stuck):
        line = lines[session_id]
        assert line.startswith("session cancelled reason=loop_blocked"), line
        assert f"held by session {stuck} (sleeper) at agents/sleeper.py:6 in entrypoint" in line, line
    assert not worker.socket.exists() and not list(worker.socket.parent.glob("*.sessions"))


def test_a_worker_that_dies_leaves_its_sessions_reported_lost(
    agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    first = Worker("start", agents, sock_home)
    workers.append(first)
    first.ready()
    polite = first.dispatch("polite", "--count", "3").stdout.split()
    (exiter,) = first.dispatch("exiter").stdout.split()
    assert first.proc.wait(10) == 9  # os._exit in a session: nothing in the worker can catch that
    ledger = first.socket.with_suffix(".sessions")
    assert {s.session_id for s in parse_ledger(ledger.read_text())} == {*polite, exiter}

    once = run_cli("top", "--once", env=first.env)
    assert once.returncode == 1
    assert f"worker {first.proc.pid} exited without draining: 4 sessions lost" in once.stderr, once.stderr
    (view,) = LiveSource(folder=first.socket.parent).fetch().workers  # the live view lists it too
    assert view.gone and view.error is not None and "4 sessions lost" in view.error

    second = Worker("start", agents, sock_home)  # the next worker in the folder reports them, once
    workers.append(second)
    second.ready()
    lost = {
        r["session_id"]: r["message"] for r in second.records() if r["message"].startswith("session lost")
    }
    assert set(lost) == {*polite, exiter}
    assert all("reason=worker_died" in m and str(first.proc.pid) in m for m in lost.values())
    assert not ledger.exists()
    assert "exited without draining" not in run_cli("top", "--once", env=second.env).stderr
    assert second.stop() == 0


def test_kill_9_is_reported_the_same_way(agents: Path, sock_home: Path, workers: list[Worker]) -> None:
    first = Worker("start", agents, sock_home)
    workers.append(first)
    first.ready()
    ids = first.dispatch("polite", "--count", "2").stdout.split()
    deadline = time.monotonic() + 5
    ledger = first.socket.with_suffix(".sessions")
    while len(parse_ledger(ledger.read_text())) < 2:  # written off the loop within moments
        assert time.monotonic() < deadline
        time.sleep(0.02)
    first.proc.kill()
    first.proc.wait()
    once = run_cli("top", "--once", "--json", env=first.env)
    assert once.returncode == 1 and "2 sessions lost" in once.stderr
    assert all(i in once.stderr for i in ids)


def test_ledger_lines_are_parsed_whatever_is_torn() -> None:
    text = "+ a1 chat acme 1.5\n+ b2 voice - 2.0\n- a1\n+ c3 chat - 3.0\n+ d4 ch"  # torn last line
    lost = parse_ledger(text)
    assert [(s.session_id, s.agent, s.tenant, s.started_at) for s in lost] == [
        ("b2", "voice", None, 2.0),
        ("c3", "chat", None, 3.0),
    ]
    assert parse_ledger("garbage\n- x\n+ y a b notanumber\n") == []
