"""The real `openrtc` command: usage errors, list, dispatch, start/dev workers, drain on signals."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from tests.cli.worker import Worker, run_cli
from tests.helpers import write_agent

POLITE = """\
async def entrypoint(session):
    session.log.info("polite turn caller=%s", session.metadata.get("caller"))
    await session.draining.wait()
"""
STUBBORN = """\
import asyncio

async def entrypoint(session):
    await asyncio.sleep(3600)
"""
BOOM = """\
async def entrypoint(session):
    raise RuntimeError("agent bug")
"""
VERSIONED = """\
VERSION = {v}

async def entrypoint(session):
    session.log.info("running version %d", VERSION)
"""


@pytest.fixture
def example_agents(agents_dir: Path) -> Path:
    write_agent(agents_dir, "polite", POLITE)
    write_agent(agents_dir, "stubborn", STUBBORN)
    write_agent(agents_dir, "boom", BOOM)
    return agents_dir


def test_help_and_version() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("dev", "start", "dispatch", "list"):
        assert command in out.stdout
    assert run_cli("--version").stdout.startswith("openrtc ")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["start"], {}, "required: AGENTS_DIR"),
        (["start", ".", "--max-sessions", "zero"], {}, "--max-sessions"),
        (["start", ".", "--loop", "tokio"], {}, "invalid choice"),
        (["start", "."], {"OPENRTC_MAX_SESSIONS": "-3"}, "OPENRTC_MAX_SESSIONS='-3'"),
        (["dev", "."], {"OPENRTC_LOG_FORMAT": "xml"}, "OPENRTC_LOG_FORMAT"),
        (["start", ".", "--isolation", "thread"], {}, "invalid choice"),
        (["start", "/no/such/folder"], {}, "does not exist"),
        (["dev", "/no/such/folder"], {}, "does not exist"),
        (["dispatch", "a", "--metadata", "{bad"], {}, "not valid JSON"),
        (["dispatch", "a", "--metadata", "[1]"], {}, "must be a JSON object"),
        (["frobnicate"], {}, "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args: list[str], env: dict[str, str], message: str, sock_home: Path) -> None:
    import os

    out = run_cli(*args, env={**os.environ, **env})
    assert out.returncode == 2, out
    assert message in out.stderr
    # The usage printed is the command's own, not the top-level one.
    command = args[0] if args[0] in ("start", "dev", "dispatch") else None
    assert out.stderr.startswith(f"usage: openrtc {command} " if command else "usage: openrtc [-h]"), (
        out.stderr
    )


def test_list_shows_agents_and_failures(example_agents: Path) -> None:
    write_agent(example_agents, "broken", "x = 1\nimport nope_nothing\n")
    out = run_cli("list", str(example_agents))
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "SOURCE"]
    assert [line.split()[0] for line in lines[1:4]] == ["boom", "polite", "stubborn"]
    assert f"FAILED  {example_agents.resolve()}/broken.py:2: import failed: ModuleNotFoundError" in out.stdout

    data = json.loads(run_cli("list", str(example_agents), "--json").stdout)
    assert [a["name"] for a in data["agents"]] == ["boom", "polite", "stubborn"]
    assert data["errors"][0]["line"] == 2 and data["errors"][0]["path"].endswith("broken.py")


def test_list_all_good_exits_0(agents_dir: Path) -> None:
    write_agent(agents_dir, "polite", POLITE)
    assert run_cli("list", str(agents_dir)).returncode == 0


def test_dispatch_without_worker_names_the_folder(sock_home: Path) -> None:
    import os

    out = run_cli("dispatch", "polite", env={**os.environ, "XDG_RUNTIME_DIR": str(sock_home)})
    assert out.returncode == 1
    assert f"{sock_home}/openrtc" in out.stderr and "no worker running" in out.stderr


def test_worker_dispatch_and_sigterm_drain(
    example_agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    worker = Worker("start", example_agents, sock_home, "--drain-timeout", "1", "--max-sessions", "50")
    workers.append(worker)
    worker.ready()
    assert worker.socket.exists() and worker.socket.stat().st_mode & 0o777 == 0o600

    polite = worker.dispatch(
        "polite", "--count", "5", "--tenant", "acme", "--metadata", '{"caller": "alice"}'
    )
    assert polite.returncode == 0, polite.stderr
    stubborn = worker.dispatch("stubborn", "--count", "3")
    boom = worker.dispatch("boom")
    ids = polite.stdout.split() + stubborn.stdout.split() + boom.stdout.split()
    assert len(ids) == 9 and len(set(ids)) == 9

    unknown = worker.dispatch("ghost")
    assert unknown.returncode == 1
    assert "unknown agent 'ghost'; known agents: boom, polite, stubborn" in unknown.stderr

    turns = worker.wait_for_log("polite turn caller=alice", count=5)
    assert {r["session_id"] for r in turns} == set(polite.stdout.split())
    assert all(r["agent"] == "polite" for r in turns)
    failed = worker.wait_for_log("session raised RuntimeError")
    assert failed[0]["session_id"] == boom.stdout.strip() and "agent bug" in failed[0]["exc"]

    started = time.monotonic()
    assert worker.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 8
    outcome = {
        r["session_id"]: r["message"]
        for r in worker.records()
        if r["message"].startswith("session ") and r["message"].split()[1] in ("ended", "failed", "cancelled")
    }
    assert set(outcome) == set(ids)  # every dispatched session is accounted for
    assert all(outcome[i].startswith("session ended") for i in polite.stdout.split())
    assert all(
        outcome[i].startswith("session cancelled reason=drain_timeout") for i in stubborn.stdout.split()
    )
    assert outcome[boom.stdout.strip()].startswith("session failed reason=exception")
    assert not worker.socket.exists()


def test_sigint_drains_too(example_agents: Path, sock_home: Path, workers: list[Worker]) -> None:
    worker = Worker("start", example_agents, sock_home)
    workers.append(worker)
    worker.ready()
    (sid,) = worker.dispatch("polite").stdout.split()
    worker.wait_for_log("polite turn")
    assert worker.stop(signal.SIGINT) == 0
    assert any(r["session_id"] == sid and r["message"].startswith("session ended") for r in worker.records())


def test_refused_dispatch_prints_started_ids_and_the_cap(
    example_agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    worker = Worker("start", example_agents, sock_home, "--max-sessions-per-agent", "2")
    workers.append(worker)
    worker.ready()
    out = worker.dispatch("polite", "--count", "3")
    assert out.returncode == 1
    assert len(out.stdout.split()) == 2
    assert "max_sessions_per_agent=2" in out.stderr


def test_dispatch_picks_the_worker_with_most_free_capacity(
    example_agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    small = Worker("start", example_agents, sock_home, "--max-sessions", "2")
    big = Worker("start", example_agents, sock_home, "--max-sessions", "10")
    workers += [small, big]
    small.ready(), big.ready()
    for _ in range(3):
        out = small.dispatch("polite")
        assert out.returncode == 0, out.stderr
    assert len(big.wait_for_log("polite turn", count=3)) == 3
    assert not [r for r in small.records() if "polite turn" in r["message"]]
    pinned = small.dispatch("polite", "--socket", str(small.socket))
    assert pinned.returncode == 0
    small.wait_for_log("polite turn")


def test_no_introspection_opens_no_socket(
    example_agents: Path, sock_home: Path, workers: list[Worker]
) -> None:
    worker = Worker("start", example_agents, sock_home, "--no-introspection")
    workers.append(worker)
    worker.wait_for_log("worker started")
    assert not list(sock_home.rglob("*.sock"))
    assert worker.stop() == 0


def test_env_twins_configure_the_worker(example_agents: Path, sock_home: Path, workers: list[Worker]) -> None:
    worker = Worker(
        "start", example_agents, sock_home, env={"OPENRTC_MAX_SESSIONS": "1", "OPENRTC_LOOP": "asyncio"}
    )
    workers.append(worker)
    worker.ready()
    assert worker.dispatch("polite").returncode == 0
    refused = worker.dispatch("polite")
    assert refused.returncode == 1 and "max_sessions=1" in refused.stderr
    # a flag beats its environment twin
    flagged = Worker(
        "start", example_agents, sock_home, "--max-sessions", "3", env={"OPENRTC_MAX_SESSIONS": "1"}
    )
    workers.append(flagged)
    flagged.ready()
    assert flagged.dispatch("polite", "--count", "3", "--socket", str(flagged.socket)).returncode == 0


def test_start_with_no_loadable_agent_exits_1(agents_dir: Path, sock_home: Path) -> None:
    import os

    write_agent(agents_dir, "broken", "raise ImportError('x')\n")
    out = run_cli("start", str(agents_dir), env={**os.environ, "XDG_RUNTIME_DIR": str(sock_home)})
    assert out.returncode == 1
    assert "broken.py:1" in out.stderr and "no agent loaded" in out.stderr


def test_dev_reloads_saved_files(agents_dir: Path, sock_home: Path, workers: list[Worker]) -> None:
    path = write_agent(agents_dir, "talk", VERSIONED.format(v=1))
    worker = Worker("dev", agents_dir, sock_home)
    workers.append(worker)
    worker.ready()
    worker.dispatch("talk")
    worker.wait_for_log("running version 1")

    write_agent(agents_dir, "talk", VERSIONED.format(v=2))
    worker.wait_for_log("agent 'talk' reloaded")
    worker.dispatch("talk")
    worker.wait_for_log("running version 2")

    path.write_text("VERSION = 3\nasync def entrypoint(session:\n")
    broken = worker.wait_for_log("reload failed, keeping the previous version")
    assert f"{path.resolve()}:2: syntax error" in broken[0]["message"]
    worker.dispatch("talk")
    worker.wait_for_log("running version 2", count=2)
    assert worker.stop() == 0


HELPED = """\
import asyncio

from _helpers import lookup


async def entrypoint(session):
    await asyncio.sleep(0.01)
    session.log.info("looked up %s", lookup())
"""
HELPER = """\
import time


def lookup():
    time.sleep({sleep})
    return "sleep={sleep}"
"""


@pytest.mark.parametrize("isolation", ["coroutine", "process"])
def test_dev_reloads_the_agents_importing_a_saved_helper(
    agents_dir: Path, sock_home: Path, workers: list[Worker], isolation: str
) -> None:
    write_agent(agents_dir, "blocker", HELPED)
    write_agent(agents_dir, "_helpers", HELPER.format(sleep=0.4))
    write_agent(agents_dir, "polite", POLITE)
    worker = Worker("dev", agents_dir, sock_home, "--isolation", isolation)
    workers.append(worker)
    worker.ready()
    worker.dispatch("blocker")
    worker.wait_for_log("looked up sleep=0.4")

    write_agent(agents_dir, "_helpers", HELPER.format(sleep=0.0))
    (line,) = worker.wait_for_log("helper _helpers.py changed")
    assert line["message"] == "helper _helpers.py changed: reloading 'blocker'"
    worker.wait_for_log("agent 'blocker' reloaded from blocker.py (_helpers.py changed)")
    worker.dispatch("blocker")
    worker.wait_for_log("looked up sleep=0.0")
    assert not any("'polite'" in r["message"] for r in worker.records())
    assert worker.stop() == 0


BLOCKER = """\
import asyncio
import time


async def entrypoint(session):
    await asyncio.sleep(0.05)
    time.sleep(0.2)  # BLOCKS
    await session.draining.wait()
"""


def test_top_once_text_and_json(
    example_agents: Path, sock_home: Path, workers: list[Worker], tmp_path: Path
) -> None:
    import os

    write_agent(example_agents, "blocker", BLOCKER)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # Started from another directory: `where` names the file from the agents folder's parent all the same.
    worker = Worker("start", example_agents, sock_home, cwd=elsewhere)
    workers.append(worker)
    worker.ready()
    (blocker,) = worker.dispatch("blocker").stdout.split()
    polite = worker.dispatch("polite", "--count", "2", "--tenant", "acme").stdout.split()
    (boom,) = worker.dispatch("boom").stdout.split()
    worker.wait_for_log("[slow-session]")
    worker.wait_for_log("session failed")
    env = {**os.environ, "XDG_RUNTIME_DIR": str(sock_home)}

    text = run_cli("top", "--once", env=env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"worker {__import__('socket').gethostname()}:{worker.proc.pid} ")
    assert f"{blocker[:8]}  blocker" in text.stdout and "agents/blocker.py:7 in entrypoint" in text.stdout
    (boom_line,) = [line for line in text.stdout.splitlines() if line.startswith(boom[:8])]
    assert " failed " in boom_line and boom_line.endswith("RuntimeError: agent bug")
    assert "\x1b[" not in text.stdout  # no colour when not a TTY

    data = json.loads(run_cli("top", "--once", "--json", "--agent", "polite", env=env).stdout)
    assert data["schema_version"] == 1 and data["worker"]["pid"] == worker.proc.pid
    assert sorted(r["session_id"] for r in data["sessions"]) == sorted(polite)
    assert all(r["tenant"] == "acme" for r in data["sessions"])
    (block,) = [b for b in data["blocks"] if b["kind"] == "session"]
    assert block["session_id"] == blocker and block["where"] == "agents/blocker.py:7 in entrypoint"
    assert 190 < block["ms"] < 400

    detail = run_cli("top", "--once", "--session", blocker[:6], env=env)
    assert detail.returncode == 0, detail.stderr
    lines = detail.stdout.splitlines()
    assert lines[0] == f"session {blocker}" and "recent blocks (1 in the worker's last 100)" in lines
    assert lines[-1] == "      agents/blocker.py:7 in entrypoint"  # the stack, innermost last
    one = json.loads(run_cli("top", "--once", "--json", "--session", boom, env=env).stdout)
    assert one["session"]["error"] == "RuntimeError: agent bug" and one["blocks"] == []
    missing = run_cli("top", "--once", "--session", "zz", env=env)
    assert missing.returncode == 1 and "no session with an id starting 'zz'" in missing.stderr


def test_top_once_without_worker_exits_1(sock_home: Path) -> None:
    import os

    out = run_cli("top", "--once", env={**os.environ, "XDG_RUNTIME_DIR": str(sock_home)})
    assert out.returncode == 1 and "no worker running" in out.stderr and out.stdout == ""


def test_demo_runs_and_leaves_nothing_behind(sock_home: Path) -> None:
    import os

    import psutil

    from openrtc.cli.demo import LOAD_MIX

    out = run_cli(
        "demo",
        "--duration",
        "6",
        "--rate",
        "10",
        env={**os.environ, "XDG_RUNTIME_DIR": str(sock_home)},
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "demo worker pid" in out.stdout and "SESSION   AGENT" in out.stdout
    rows = [
        line.split() for line in out.stdout.splitlines() if line.split()[1:2] and line.split()[1] in LOAD_MIX
    ]
    assert rows and {r[2] for r in rows} <= {"acme", "globex", "initech"}  # every session has a tenant
    pid = int(out.stdout.split("demo worker pid ")[1].split()[0])
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not list((sock_home / "openrtc").glob("*.sock"))
    # The chat agents called the simulated LLM: tokens and cost live, then in the event log.
    assert " tokens in " in out.stdout and " cost $" in out.stdout
    events = out.stdout.split("--log-dir ")[-1].strip()
    stats = run_cli("stats", "usage", "--by", "agent", "--json", "--log-dir", events)
    assert stats.returncode == 0, stats.stderr
    chat = next(g for g in json.loads(stats.stdout)["groups"] if g["name"] == "chat")
    assert chat["calls"] > 0 and chat["input_tokens"] > 0 and chat["cost_usd"] > 0
