"""The index beside each log file is a cache: reports read from it equal reports read from the log
alone, whatever state the index is in (missing, torn, stale, behind the log)."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import pytest

from openrtc.stats import report
from openrtc.stats.summary import load_session, load_summaries, scan
from openrtc.usage import index
from openrtc.usage.eventlog import EventLog, Retention
from openrtc.usage.reader import Problems
from openrtc.usage.totals import Totals

MODELS = [("openai", "gpt-4o-mini", 0.0002), ("acme", "house-model", None)]


def write_log(folder: Path, sessions: int, hang: int = 2, seed: int = 3) -> list[str]:
    """`sessions` sessions through the worker's own writer; the last `hang` never end."""
    rng = random.Random(seed)
    log = EventLog(folder, "w1", Retention(None, None), clock=lambda: 1_764_000_000.0)
    log.start()
    ids = []
    for n in range(sessions):
        sid = f"{n:04d}{rng.getrandbits(32):08x}"
        ids.append(sid)
        at = 1_764_000_000.0 + n
        agent = rng.choice(["chat", "voice"])
        log.write(sid, 0, "session.start", at, {"agent": agent, "tenant": rng.choice(["a", "b", None])})
        totals = Totals()
        for seq in range(1, 4):
            provider, model, cost = rng.choice(MODELS)
            call = {
                "model": model,
                "provider": provider,
                "input_tokens": rng.randint(100, 900),
                "output_tokens": 50,
                "cache_read_tokens": 64,
                "cost_usd": cost,
                "latency_ms": 100.0,
            }
            log.write(sid, seq, "llm.call", at + seq, call)
            totals.add_event("llm.call", call)
        if n < sessions - hang:
            end = {
                "state": "ended",
                "wall_s": 4.0,
                "cpu_s": 0.01,
                "llm_s": totals.llm_s,
                "tool_s": 0.0,
                "totals": totals.as_dict(),
                "agent": agent,
                "tenant": None,
                "started_at": at,
                "worker_id": "w1",
                "attempt": 1,
            }
            log.write(sid, 4, "session.end", at + 4, end)
        if n % 7 == 0:
            log.flush()
    log.close()
    return ids


def reports(folder: Path) -> dict[str, Any]:
    problems = Problems()
    groups, total = report.group_usage(scan(folder, None, None, problems), "model")
    summaries = load_summaries(folder, None, None, problems)
    return {
        "groups": [g.as_dict() for g in groups],
        "total": total.as_dict(),
        "sessions": [s.as_dict() for s in summaries],
        "warnings": problems.warnings,
    }


@pytest.fixture
def logged(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path / "log"
    write_log(folder, 60)
    (idx,) = folder.glob("*.idx")
    truth = folder.parent / "truth"
    truth.mkdir(mode=0o700)
    for path in folder.glob("*.jsonl"):  # the same log without its index: read from the JSONL alone
        (truth / path.name).write_bytes(path.read_bytes())
    expected = reports(truth)
    assert expected["total"]["sessions"] == 60 and expected["total"]["incomplete"] == 2
    assert idx.stat().st_size > 0
    return folder, expected


def test_the_index_gives_the_same_reports_as_the_log(logged: tuple[Path, dict[str, Any]]) -> None:
    folder, expected = logged
    assert reports(folder) == expected
    found = index.read_index(next(folder.glob("*.idx")).read_bytes())
    assert len(found.ends) == 58 and len(found.starts) == 60 and found.problem is None


def test_a_torn_index_is_read_up_to_the_tear_and_the_log_past_it(logged: tuple[Path, dict[str, Any]]) -> None:
    folder, expected = logged
    idx = next(folder.glob("*.idx"))
    data = idx.read_bytes()
    idx.write_bytes(data[: len(data) // 2 + 3])  # cut inside a record
    assert reports(folder) == expected


def test_garbage_in_the_index_loses_nothing(logged: tuple[Path, dict[str, Any]]) -> None:
    folder, expected = logged
    idx = next(folder.glob("*.idx"))
    data = bytearray(idx.read_bytes())
    data[len(data) // 3 : len(data) // 3 + 40] = b"\xc1" * 40  # bytes msgpack never uses
    idx.write_bytes(bytes(data))
    got = reports(folder)
    assert got["total"] == expected["total"] and got["sessions"] == expected["sessions"]


def test_an_index_older_than_its_log_is_not_trusted(logged: tuple[Path, dict[str, Any]]) -> None:
    folder, expected = logged
    idx, log = next(folder.glob("*.idx")), next(folder.glob("*.jsonl"))
    stale = log.stat().st_mtime_ns - 1_000_000_000
    os.utime(idx, ns=(stale, stale))  # as if the log had been edited after: the log wins
    problems = Problems()
    assert load_summaries(folder, None, None, problems) and "older than its log" in problems.notes[0]
    assert reports(folder) == expected


def test_lines_past_the_index_are_read_from_the_log(tmp_path: Path) -> None:
    """A worker stopped between writing a batch's lines and their index records."""
    folder = tmp_path / "log"
    write_log(folder, 20, hang=0)
    log, idx = next(folder.glob("*.jsonl")), next(folder.glob("*.idx"))
    lines = log.read_bytes().splitlines(keepends=True)
    cut = sum(len(line) for line in lines[:50])  # the index stops at line 50 (mid-session 10)
    data = index.header() + b"".join(
        index.record(e["type"], e["session_id"], end, e["ts"], e["data"]) or b""
        for e, end in _events_with_ends(lines)
        if end <= cut
    )
    idx.write_bytes(data)
    found = index.read_index(data)
    assert 0 < found.covered <= cut and len(found.ends) < 20
    problems = Problems()
    summaries = load_summaries(folder, None, None, problems)
    assert len(summaries) == 20 and {s.state for s in summaries} == {"ended"}
    assert not problems.notes and not problems.warnings


def test_a_session_is_found_through_the_index(logged: tuple[Path, dict[str, Any]]) -> None:
    folder, _ = logged
    sid = load_summaries(folder, None, None, Problems())[5].session_id
    events = load_session(folder, sid[:8], Problems())
    assert [e.type for e in events] == ["session.start", "llm.call", "llm.call", "llm.call", "session.end"]


def _events_with_ends(lines: list[bytes]) -> list[tuple[dict[str, Any], int]]:
    import json

    out, end = [], 0
    for line in lines:
        end += len(line)
        out.append((json.loads(line), end))
    return out
