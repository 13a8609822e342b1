"""`openrtc stats` on the logs of real workers: one killed with `kill -9` mid-session, a hand-corrupted
line, every command and its exit codes."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from tests.cli.worker import Worker, run_cli
from tests.helpers import write_agent

AGENT = """
import asyncio

from openrtc import Agent, Session


class Caller(Agent):
    name = "caller"

    async def run(self, session: Session) -> None:
        calls = int(session.metadata.get("calls", 2))
        model = session.metadata.get("model", "gpt-4o-mini")
        for n in range(calls):
            session.usage.record(
                model, provider="openai", input_tokens=1000 * (n + 1), output_tokens=100,
                cache_read_tokens=500 * n, latency_ms=200,
            )
        async with session.usage.tool("lookup"):
            await asyncio.sleep(0)
        if session.metadata.get("hang"):
            await asyncio.sleep(3600)
"""


def stats(log_dir: Path, *args: str) -> Any:
    out = run_cli("stats", *args, "--log-dir", str(log_dir), "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def wait_for_events(log_dir: Path, needle: str, count: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = "".join(p.read_text() for p in log_dir.glob("*.jsonl"))
        if text.count(needle) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"{needle!r} x{count} never reached {log_dir}")


@pytest.fixture
def logged(agents_dir: Path, sock_home: Path, tmp_path: Path, workers: list[Worker]) -> dict[str, Any]:
    """One worker's sessions that ended, then one mid-session when its worker is killed with `kill -9`."""
    write_agent(agents_dir, "caller", AGENT)
    log_dir = tmp_path / "events"
    worker = Worker("start", agents_dir, sock_home, "--log-dir", str(log_dir))
    workers.append(worker)
    worker.ready()
    for calls, tenant, model in (
        (2, "acme", "gpt-4o-mini"),
        (3, "globex", "gpt-4o-mini"),
        (1, "acme", "acme-x"),
    ):
        meta = json.dumps({"calls": calls, "model": model})
        assert worker.dispatch("caller", "--tenant", tenant, "--metadata", meta).returncode == 0
    wait_for_events(log_dir, '"type":"session.end"', 3)
    meta = json.dumps({"calls": 2, "hang": True})
    assert worker.dispatch("caller", "--tenant", "acme", "--metadata", meta).returncode == 0
    wait_for_events(log_dir, '"type":"tool.call"', 4)  # the hanging session's last record is written
    worker.proc.send_signal(signal.SIGKILL)
    worker.proc.wait(10)
    return {"log_dir": log_dir}


def test_stats_reads_the_logs_of_a_worker_killed_mid_session(logged: dict[str, Any]) -> None:
    log_dir = logged["log_dir"]
    history = stats(log_dir, "history")
    assert [s["state"] for s in history] == ["incomplete", "ended", "ended", "ended"]  # newest first
    hung = history[0]
    assert hung["calls"] == 2 and hung["input_tokens"] == 3000 and hung["tools_ok"] == 1
    # What it recorded before the kill is there; when it ended is not known.
    assert hung["wall_s"] is None and hung["cost_usd"] == pytest.approx(
        (2500 * 0.15 + 500 * 0.075 + 200 * 0.6) / 1e6
    )

    text = run_cli("stats", "history", "--log-dir", str(log_dir))
    assert text.returncode == 0 and "incomplete" in text.stdout.splitlines()[1]
    one = run_cli("stats", "session", hung["session_id"][:8], "--log-dir", str(log_dir))
    assert one.returncode == 0, one.stderr
    assert "state      incomplete" in one.stdout and "session.end" not in one.stdout
    assert one.stdout.count("llm.call") == 2 and "tool.call" in one.stdout


def test_usage_grouped_with_unknown_prices_counted(logged: dict[str, Any]) -> None:
    log_dir = logged["log_dir"]
    by_tenant = stats(log_dir, "usage", "--by", "tenant")
    groups = {g["name"]: g for g in by_tenant["groups"]}
    assert set(groups) == {"acme", "globex"}
    # globex: one session, 3 calls: 1000 + 2000 + 3000 in, 0 + 500 + 1000 read from the cache, 300 out
    g = groups["globex"]
    assert (g["sessions"], g["calls"], g["input_tokens"], g["cache_read_tokens"]) == (1, 3, 6000, 1500)
    assert g["cost_usd"] == round((4500 * 0.15 + 1500 * 0.075 + 300 * 0.6) / 1e6, 12)
    assert g["cache_hit_rate"] == 0.25 and g["unknown_cost_calls"] == 0
    # acme: the ended session, the killed one, and a call to a model nobody prices
    a = groups["acme"]
    assert (a["sessions"], a["incomplete"], a["calls"], a["unknown_cost_calls"]) == (3, 1, 5, 1)
    by_model = {g["name"]: g for g in stats(log_dir, "usage", "--by", "model")["groups"]}
    assert (
        by_model["openai/acme-x"]["cost_usd"] is None and by_model["openai/acme-x"]["unknown_cost_calls"] == 1
    )
    text = run_cli("stats", "usage", "--by", "model", "--log-dir", str(log_dir)).stdout
    row = next(line for line in text.splitlines() if line.startswith("openai/acme-x"))
    assert row.split()[-1] == "?"  # unknown, not $0


def test_compare_and_export(logged: dict[str, Any], tmp_path: Path) -> None:
    log_dir = logged["log_dir"]
    ended = [s for s in stats(log_dir, "history", "--tenant", "acme") if s["state"] == "ended"]
    globex = stats(log_dir, "history", "--tenant", "globex")[0]
    two = stats(log_dir, "compare", ended[-1]["session_id"], globex["session_id"])
    figures = {f["figure"]: f for f in two["figures"]}
    assert figures["calls"] == {"figure": "calls", "a": 2, "b": 3, "delta": 1, "pct": 50.0}
    assert figures["input tokens"]["pct"] == 100.0  # 3000 -> 6000
    ids = (ended[-1]["session_id"], globex["session_id"])
    text = run_cli("stats", "compare", *ids, "--log-dir", str(log_dir)).stdout.splitlines()
    assert text[1].split()[:3] == ["FIGURE", "A", "B"]
    row = {line[:18].strip(): line[18:].split() for line in text[2:]}  # the FIGURE column is 18 wide
    assert row["calls"] == ["2", "3", "+1", "+50.0%"]
    assert row["input tokens"] == ["3,000", "6,000", "+3,000", "+100.0%"]
    out = tmp_path / "sessions.csv"
    done = run_cli("stats", "export", "--format", "csv", "-o", str(out), "--log-dir", str(log_dir))
    assert done.returncode == 0 and "4 sessions written" in done.stderr
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 4 and {r["state"] for r in rows} == {"ended", "incomplete"}
    md = run_cli("stats", "export", "--format", "markdown", "--log-dir", str(log_dir)).stdout
    assert md.startswith("| session_id | agent |") and md.count("\n") == 6
    page = tmp_path / "sessions.html"  # the format from the extension
    assert run_cli("stats", "export", "-o", str(page), "--log-dir", str(log_dir)).returncode == 0
    parsed = HTMLCells()
    parsed.feed(page.read_text())
    # The page is the profile report (tests/profile); its last table holds every session.
    every = next(i for i, row in enumerate(parsed.cells) if row[:2] == ["session_id", "agent"])
    assert len(parsed.cells) - every == 1 + 4
    assert {row[0] for row in parsed.cells[every + 1 :]} == {r["session_id"] for r in rows}


class HTMLCells(HTMLParser):
    """The text of each table row's cells."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[list[str]] = []

    def handle_starttag(self, tag: str, attrs: Any) -> None:
        if tag == "tr":
            self.cells.append([])
        elif tag in ("td", "th"):
            self.cells[-1].append("")

    def handle_data(self, data: str) -> None:
        if self.cells and self.cells[-1]:
            self.cells[-1][-1] += data


def test_a_corrupt_line_is_skipped_with_its_file_and_line(logged: dict[str, Any]) -> None:
    log_dir = logged["log_dir"]
    path = next(log_dir.glob("*.jsonl"))
    lines = path.read_text().splitlines(keepends=True)
    end = next(n for n, line in enumerate(lines) if '"type":"session.end"' in line)
    lines[end] = lines[end][:60] + "#garbage#\n"
    path.write_text("".join(lines))
    out = run_cli("stats", "history", "--log-dir", str(log_dir), "--json")
    assert out.returncode == 0
    assert f"warning: {path}:{end + 1}: not JSON" in out.stderr
    # that session's end is lost: it shows as incomplete, from its other lines; the rest as before
    states = [s["state"] for s in json.loads(out.stdout)]
    assert sorted(states) == ["ended", "ended", "incomplete", "incomplete"]


def test_exit_codes_and_what_was_searched(tmp_path: Path, logged: dict[str, Any]) -> None:
    log_dir = logged["log_dir"]
    missing = run_cli("stats", "usage", "--log-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and f"no event log in {tmp_path / 'nowhere'}" in missing.stderr
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    nothing = run_cli("stats", "history", "--log-dir", str(empty))
    assert nothing.returncode == 1 and f"no session matches in {empty}" in nothing.stderr
    future = run_cli("stats", "usage", "--since", "2999-01-01", "--log-dir", str(log_dir))
    assert future.returncode == 1 and str(log_dir) in future.stderr
    unknown = run_cli("stats", "session", "ffffffffffff", "--log-dir", str(log_dir))
    assert unknown.returncode == 1 and "no session" in unknown.stderr
    for bad in (
        ("usage", "--by", "color"),
        ("usage", "--since", "last tuesday"),
        ("history", "--limit", "0"),
        ("export", "--format", "xml"),
        ("fly",),
    ):
        out = run_cli("stats", *bad, "--log-dir", str(log_dir))
        assert out.returncode == 2 and out.stdout == "", (bad, out.stderr)
    log_dir.chmod(0o755)
    try:
        open_dir = run_cli("stats", "usage", "--log-dir", str(log_dir))
        assert open_dir.returncode == 1 and "it must be 0700" in open_dir.stderr
    finally:
        log_dir.chmod(0o700)


def test_a_worker_refuses_an_unsafe_log_folder(agents_dir: Path, sock_home: Path, tmp_path: Path) -> None:
    write_agent(agents_dir, "caller", AGENT)
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    out = run_cli(
        "start",
        str(agents_dir),
        "--log-dir",
        str(link),
        env={**os.environ, "XDG_RUNTIME_DIR": str(sock_home)},
    )
    assert out.returncode == 1 and f"log folder {link} is a symlink" in out.stderr


@pytest.mark.parametrize("command", ["usage", "history", "session", "compare", "export"])
def test_every_stats_command_has_help(command: str) -> None:
    out = run_cli("stats", command, "--help")
    assert out.returncode == 0 and "--log-dir" in out.stdout and "--json" in out.stdout
