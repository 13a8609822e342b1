"""`openrtc profile` end to end: a real worker process, its socket and its event log, every format, the
report in a real headless Chromium, and the errors a user can meet."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from openrtc.profile.stacks import parse_folded
from tests.cli.worker import Worker, run_cli
from tests.helpers import write_agent

AGENT = """
import asyncio
import time

from openrtc import Agent, Session


def crunch(ms):
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        pass


class Busy(Agent):
    name = "busy"

    async def run(self, session: Session) -> None:
        session.usage.record(
            "gpt-4o-mini", provider="openai", input_tokens=1000, output_tokens=50,
            cache_read_tokens=600, cache_write_tokens=100,
            content={"input": "my invoice is wrong, please refund", "output": "refund issued"},
        )
        with session.usage.tool("lookup"):
            await asyncio.sleep(0.05)
        try:
            with session.usage.tool("charge"):
                raise ValueError("declined")
        except ValueError:
            pass
        time.sleep(0.12)  # a block
        for _ in range(int(session.metadata.get("turns", 150))):
            crunch(2)
            await asyncio.sleep(0.002)
"""


def wait_ended(log: Path, count: int, timeout: float = 20.0) -> None:
    """Until the event log holds `count` session ends (its writer flushes every 50 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = "".join(p.read_text() for p in log.glob("*.jsonl"))
        if text.count('"type":"session.end"') >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} session ends in {log}")


@pytest.fixture
def worker(tmp_path: Path, sock_home: Path, workers: list[Worker]) -> Worker:
    agents = tmp_path / "agents"
    agents.mkdir()
    write_agent(agents, "busy", AGENT)
    w = Worker(
        "start",
        agents,
        sock_home,
        "--log-dir",
        str(tmp_path / "log"),
        "--record-content",
        "--drain-timeout",
        "2",
    )
    workers.append(w)
    return w.ready()


def test_cpu_profile_of_a_running_worker_in_every_format(worker: Worker, tmp_path: Path) -> None:
    long = ("--metadata", '{"turns": 2000}')  # a few seconds: still running when the recording ends
    assert worker.dispatch("busy", "--count", "2", *long, "--socket", str(worker.socket)).returncode == 0
    out = tmp_path / "cpu.folded"
    done = run_cli(
        "profile", "--socket", str(worker.socket), "--seconds", "1.5", "-o", str(out), env=worker.env
    )
    assert done.returncode == 0, done.stderr
    assert "samples in" in done.stdout and f"profile written to {out}" in done.stderr
    assert "hottest frames (self time):" in done.stdout and ".crunch (agents/busy.py:" in done.stdout
    profile = parse_folded(out.read_text())
    crunching = [s for s in profile.stacks if any(".crunch (agents/busy.py:" in f for f in s)]
    assert crunching, out.read_text()
    assert all(s[:2] == ("worker", "agent:busy") and s[2].startswith("session:") for s in crunching)
    assert any("agents/busy.py:" in f for s in crunching for f in s)  # named from the agents folder's parent
    for name in ("cpu.svg", "cpu.speedscope.json", "cpu.pprof.gz"):
        path = tmp_path / name
        done = run_cli(
            "profile", "--socket", str(worker.socket), "--seconds", "0.5", "-o", str(path), env=worker.env
        )
        assert done.returncode == 0, done.stderr
        assert path.stat().st_size > 100


def test_one_session_only_by_id_prefix(worker: Worker, tmp_path: Path) -> None:
    ids = worker.dispatch("busy", "--count", "2", "--metadata", '{"turns": 2000}').stdout.split()
    out = tmp_path / "one.folded"
    done = run_cli("profile", "--session", ids[0][:8], "--seconds", "1", "-o", str(out), env=worker.env)
    assert done.returncode == 0, done.stderr
    sessions = {s[2] for s in parse_folded(out.read_text()).stacks}
    assert sessions == {f"session:{ids[0]}"}


def test_token_tool_and_wall_profiles_from_the_event_log(worker: Worker, tmp_path: Path) -> None:
    ids = worker.dispatch("busy", "--count", "2", "--metadata", '{"turns": 1}').stdout.split()
    wait_ended(tmp_path / "log", 2)
    log = str(tmp_path / "log")
    tokens = tmp_path / "t.folded"
    assert run_cli("profile", "tokens", "--log-dir", log, "-o", str(tokens)).returncode == 0
    stacks = parse_folded(tokens.read_text()).stacks
    call = ("agent:busy", f"session:{ids[0]}", "call:llm/openai/gpt-4o-mini")
    # input_tokens (1000) includes the cache reads (600) and writes (100): counted once each here.
    assert stacks[(*call, "kind:input")] == 300
    assert stacks[(*call, "kind:cache_read")] == 600
    assert stacks[(*call, "kind:cache_write")] == 100
    assert stacks[(*call, "kind:output")] == 50
    tools = tmp_path / "tools.folded"
    assert run_cli("profile", "tools", "--log-dir", log, "-o", str(tools)).returncode == 0
    stacks = parse_folded(tools.read_text()).stacks
    assert stacks[("agent:busy", f"session:{ids[0]}", "call:tool/lookup", "status:ok")] == 1
    assert stacks[("agent:busy", f"session:{ids[0]}", "call:tool/charge", "status:error")] == 1
    assert run_cli("profile", "tools", "--by", "ms", "--log-dir", log, "-o", str(tools)).returncode == 0
    lookup = parse_folded(tools.read_text()).stacks[
        ("agent:busy", f"session:{ids[0]}", "call:tool/lookup", "status:ok")
    ]
    assert 45 <= lookup < 5000
    wall = tmp_path / "w.folded"
    assert run_cli("profile", "wall", "--log-dir", log, "--agent", "busy", "-o", str(wall)).returncode == 0
    stacks = parse_folded(wall.read_text()).stacks
    mine = {s[2]: w for s, w in stacks.items() if s[1] == f"session:{ids[0]}"}
    assert set(mine) >= {"loop", "call:llm/openai/gpt-4o-mini", "call:tool/lookup", "awaiting"} - {
        "call:llm/openai/gpt-4o-mini"
    }
    assert mine["loop"] >= 100  # the 120 ms block ran on the loop
    assert mine["call:tool/lookup"] >= 45


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None, reason="needs Debian's chromium for the HTML report test: apt-get install chromium"
)
def test_the_html_report_renders_in_chromium_without_a_script_error(worker: Worker, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    worker.dispatch("busy", "--count", "2", "--metadata", '{"turns": 1}')
    wait_ended(tmp_path / "log", 2)
    worker.dispatch("busy", "--count", "2")
    log = str(tmp_path / "log")
    report = tmp_path / "report.html"
    done = run_cli("profile", "--seconds", "1", "--log-dir", log, "-o", str(report), env=worker.env)
    assert done.returncode == 0, done.stderr
    exported = tmp_path / "export.html"
    assert run_cli("stats", "export", "--log-dir", log, "-o", str(exported)).returncode == 0
    for page, flames in ((report, 5), (exported, 2)):
        text = page.read_text()
        assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # self-contained
        dom, console = render(page, tmp_path)
        assert "Uncaught" not in console and "Error" not in console.replace("ERROR:", ""), console
        # The script marks each flamegraph it wired up: every one of them, so it ran to its end.
        ready = len(re.findall(r'<svg[^>]*class="openrtc-flame"[^>]*data-ready="1"', dom))
        assert dom.count("openrtc-flame") >= flames and ready == text.count('class="openrtc-flame"'), dom[
            :2000
        ]
        assert dom.count("<table>") >= 3
        assert "Timeline of blocks" in dom and 'class="block"' in dom


def render(page: Path, tmp: Path) -> tuple[str, str]:
    """The page's DOM after its scripts ran, and what the page wrote to the console."""
    assert CHROMIUM is not None
    profile_dir = tmp / f"chromium-{time.monotonic_ns()}"
    done = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile_dir}",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    console = "\n".join(line for line in done.stderr.splitlines() if "CONSOLE" in line)
    return done.stdout, console


def test_usage_errors_and_failures_are_clear(tmp_path: Path, sock_home: Path) -> None:
    bad_name = run_cli("profile", "-o", str(tmp_path / "x.txt"))
    assert bad_name.returncode == 2 and "must end in one of .folded, .svg" in bad_name.stderr
    assert "usage: openrtc profile" in bad_name.stderr
    no_worker = run_cli("profile", "--socket", str(tmp_path / "none.sock"), "-o", str(tmp_path / "x.svg"))
    assert no_worker.returncode == 1 and "openrtc profile:" in no_worker.stderr
    no_log = run_cli(
        "profile", "tokens", "--log-dir", str(tmp_path / "nope"), "-o", str(tmp_path / "t.folded")
    )
    assert no_log.returncode == 1 and "does not exist" in no_log.stderr
    mixed = run_cli("profile", "tokens", "--session", "abc", "-o", str(tmp_path / "t.folded"))
    assert mixed.returncode == 2 and "cpu profiles" in mixed.stderr
    assert not (tmp_path / "x.svg").exists()


def test_tagging_without_a_server_fails_with_exit_1(worker: Worker, tmp_path: Path) -> None:
    worker.dispatch("busy", "--metadata", '{"turns": 1}')
    wait_ended(tmp_path / "log", 1)
    out = tmp_path / "t.folded"
    done = run_cli(
        "profile",
        "tokens",
        "--log-dir",
        str(tmp_path / "log"),
        "--tag-with",
        "http://127.0.0.1:9",
        "-o",
        str(out),
    )
    assert done.returncode == 1 and "no tagger at http://127.0.0.1:9" in done.stderr
    assert not out.exists()


def test_tagged_token_profile_names_sessions_by_their_word(worker: Worker, tmp_path: Path) -> None:
    from tests.profile.test_tagger import FakeLLM

    worker.dispatch("busy", "--count", "2", "--metadata", '{"turns": 1}')
    wait_ended(tmp_path / "log", 2)
    llm = FakeLLM()
    try:
        llm.answers = ["refund"]
        out = tmp_path / "t.folded"
        log = str(tmp_path / "log")
        done = run_cli("profile", "tokens", "--log-dir", log, "--tag-with", llm.url, "-o", str(out))
        assert done.returncode == 0, done.stderr
        # Both sessions recorded the same content: one question, then the cache.
        assert len(llm.requests) == 1 and "tagged 2 sessions (1 questions" in done.stderr
        frames = {s[1] for s in parse_folded(out.read_text()).stacks}
        assert frames == {"tag:refund"}
        assert json.loads((tmp_path / "log" / "tags.json").read_text())
    finally:
        llm.close()


def test_a_session_in_its_own_process_is_sampled_there(
    tmp_path: Path, sock_home: Path, workers: list[Worker]
) -> None:
    agents = tmp_path / "agents"
    agents.mkdir()
    write_agent(agents, "busy", AGENT)
    worker = Worker(
        "start",
        agents,
        sock_home,
        "--isolation",
        "process",
        "--log-dir",
        str(tmp_path / "log"),
        "--drain-timeout",
        "2",
    )
    workers.append(worker)
    worker.ready()
    (session_id,) = worker.dispatch("busy", "--metadata", '{"turns": 2000}').stdout.split()
    out = tmp_path / "child.folded"
    done = run_cli("profile", "--session", session_id, "--seconds", "1.5", "-o", str(out), env=worker.env)
    assert done.returncode == 0, done.stderr
    stacks = parse_folded(out.read_text()).stacks
    crunching = sum(w for s, w in stacks.items() if any(".crunch (agents/busy.py:" in f for f in s))
    assert crunching >= 0.3 * sum(stacks.values()), out.read_text()  # about half its time crunches
    assert all(s[:3] == ("worker", "agent:busy", f"session:{session_id}") for s in stacks if len(s) > 3)
    # The whole worker, in process mode: its own loop (where the sessions are proxies) and, recorded at
    # the same time, every session's own process, each under its session (its idle time too).
    whole = tmp_path / "worker.folded"
    done = run_cli(
        "profile", "--socket", str(worker.socket), "--seconds", "1", "-o", str(whole), env=worker.env
    )
    assert done.returncode == 0, done.stderr
    stacks = parse_folded(whole.read_text()).stacks
    mine = ("worker", "agent:busy", f"session:{session_id}")
    assert any(s[:3] == mine and ".crunch (agents/busy.py:" in s[-1] for s in stacks), whole.read_text()
    assert any(s[1] in ("idle", "outside") for s in stacks)  # the worker's own loop
    assert all(s[:3] == mine or s[1] in ("idle", "outside", "gc", "cpu-wait") for s in stacks), (
        whole.read_text()
    )
