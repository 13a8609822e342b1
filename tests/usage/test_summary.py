"""Summaries from the log's files: ended sessions from their end line alone, incomplete ones from all
their lines, across a worker's rotated files."""

from __future__ import annotations

from pathlib import Path

import pytest

from openrtc.stats.summary import load_session, load_summaries
from openrtc.usage import eventlog
from openrtc.usage.eventlog import EventLog
from openrtc.usage.reader import Problems, log_files


def call(tokens: int) -> dict[str, object]:
    return {"model": "m", "provider": "p", "input_tokens": tokens, "output_tokens": 1, "cost_usd": None}


def test_an_incomplete_session_is_summed_across_rotated_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(eventlog, "ROTATE_BYTES", 1)  # a new file after every flush
    folder = tmp_path / "log"
    log = EventLog(folder, "w1")
    log.start()
    log._stop.set()  # this test flushes, not the writer thread
    assert log._thread is not None
    log._thread.join()
    log.write("s1", 0, "session.start", 100.0, {"agent": "a", "started_at": 100.0})
    log._flush()
    for seq in range(1, 4):
        log.write("s1", seq, "llm.call", 100.0 + seq, call(10 * seq))
        log._flush()
    log.close()
    assert len(log_files(folder)) >= 4
    problems = Problems()
    (summary,) = load_summaries(folder, None, None, problems)
    assert summary.state == "incomplete" and summary.totals.input_tokens == 60
    assert [e.seq for e in load_session(folder, "s1", problems)] == [0, 1, 2, 3]
    assert not problems.warnings


def test_an_id_prefix_finds_one_session_and_says_when_it_is_ambiguous(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    log = EventLog(folder, "w1")
    log.start()
    for sid in ("abcdef01", "abcdef02", "ffffff01"):
        log.write(sid, 0, "session.start", 1.0, {"agent": "a"})
    log.close()
    problems = Problems()
    assert [e.session_id for e in load_session(folder, "ffffff", problems)] == ["ffffff01"]
    with pytest.raises(LookupError, match="2 sessions start with 'abcdef'"):
        load_session(folder, "abcdef", problems)
    assert load_session(folder, "abc", problems) == []  # too short to be a prefix


def test_a_column_of_figures_is_right_aligned_with_its_blanks_and_header() -> None:
    from openrtc.stats.report import table

    text = table(
        ("AGENT", "SESSIONS", "COST"),
        [["chat", "1,981 (49 inc.)", "$1.5250"], ["blocking", "77", "-"], ["parser", "5", "?"]],
    )
    assert text.splitlines() == [
        "AGENT            SESSIONS     COST",
        "chat      1,981 (49 inc.)  $1.5250",
        "blocking               77        -",
        "parser                  5        ?",
    ]
