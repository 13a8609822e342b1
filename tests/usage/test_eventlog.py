"""The event log: its line format, a private folder, retention, and readers that survive bad lines."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from openrtc.errors import ConfigError
from openrtc.usage.eventlog import EventLog, Retention, apply_retention, private_log_dir
from openrtc.usage.reader import Problems, find_events, log_files, read_events, type_needle


def written(folder: Path, *events: tuple[str | None, int, str, dict[str, object]]) -> Path:
    log = EventLog(folder, "w1", clock=lambda: 1_764_672_000.0)
    log.start()
    for session_id, seq, kind, data in events:
        log.write(session_id, seq, kind, 1_764_672_000.5, data)
    log.close()
    assert log.path is not None
    return log.path


def test_one_compact_json_object_per_line_keys_in_a_fixed_order(tmp_path: Path) -> None:
    path = written(
        tmp_path / "log",
        ("abc", 0, "session.start", {"agent": "chat"}),
        ("abc", 1, "llm.call", {"model": "gpt-4o-mini", "note": "é"}),
        (None, 0, "worker.note", {"nan": float("nan")}),
    )
    assert path.name == "20251202T104000Z-w1-1.jsonl"
    lines = path.read_text().splitlines()
    assert lines[0] == (
        '{"session_id":"abc","seq":0,"type":"session.start","ts":1764672000.5,"data":{"agent":"chat"}}'
    )
    assert json.loads(lines[1])["data"]["note"] == "é"
    # a value JSON cannot hold does not lose the line: it says why
    (why,) = json.loads(lines[2])["data"].values()  # Python 3.12 adds the value to the message
    assert list(json.loads(lines[2])["data"]) == ["unwritable"]
    assert why.startswith("ValueError: Out of range float values are not JSON compliant")


def test_the_folder_is_private_and_the_files_too(tmp_path: Path) -> None:
    path = written(tmp_path / "new" / "log", ("abc", 0, "session.start", {}))
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_symlinked_or_open_folder_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match=r"log folder .* is a symlink; refusing it"):
        private_log_dir(link)
    real.chmod(0o755)
    with pytest.raises(ConfigError, match=r"log folder .* has mode 755; it must be 0700 \(chmod 700 "):
        private_log_dir(real)


def test_retention_by_age_and_by_size_never_the_file_being_written(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    folder.mkdir(mode=0o700)
    now = time.time()
    for n, age_days in enumerate((40, 20, 10, 0)):
        path = folder / f"2026010{n + 1}T000000Z-w1-1.jsonl"
        path.write_bytes(b"x" * 1000)
        os.utime(path, (now - age_days * 86400, now - age_days * 86400))
    files = log_files(folder)
    assert apply_retention(folder, Retention(max_age_s=30 * 86400, max_bytes=None), now=now) == 1
    assert log_files(folder) == files[1:]
    # 3000 bytes, at most 2000: the oldest goes first
    assert apply_retention(folder, Retention(None, 2000), now=now) == 1
    assert log_files(folder) == files[2:]
    # at most 1 byte, and 1 second old: everything goes but the file being written, and what is not ours
    (folder / "notes.txt").write_text("not ours")
    assert apply_retention(folder, Retention(1.0, 1), keep=files[3], now=now) == 1
    assert log_files(folder) == [files[3]] and (folder / "notes.txt").exists()


@pytest.mark.parametrize(
    ("text", "age", "size"),
    [
        ("30d", 30 * 86400, None),
        ("12h", 12 * 3600, None),
        ("2GB", None, 2 << 30),
        ("7d,500MB", 7 * 86400, 500 << 20),
    ],
)
def test_retention_parses_ages_and_sizes(text: str, age: float | None, size: int | None) -> None:
    assert Retention.parse(text) == Retention(age, size)


def test_retention_says_what_it_expects() -> None:
    assert Retention.parse("forever") == Retention(None, None)
    with pytest.raises(ConfigError, match=r"expected an age \(30d, 12h\) or a size \(2GB, 500MB\)"):
        Retention.parse("a week")


def test_a_corrupt_line_is_skipped_with_its_file_and_line_and_the_rest_is_read(tmp_path: Path) -> None:
    path = written(tmp_path / "log", *((f"s{n}", 0, "session.start", {"n": n}) for n in range(4)))
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = '{"session_id":"s1","seq":0,"type":"sess\n'  # hand-corrupted
    lines[2] = '{"session_id":"s2","seq":0,"type":"session.start","ts":"noon","data":{}}\n'
    path.write_text("".join(lines))
    problems = Problems()
    assert [e.data["n"] for e in read_events(path, problems)] == [0, 3]
    assert problems.warnings[0].startswith(f"{path}:2: not JSON")
    assert problems.warnings[1] == f"{path}:3: not an event (session_id, seq, type, ts, data); skipped"
    problems = Problems()
    assert [e.data["n"] for e in find_events(path, type_needle("session.start"), problems)] == [0, 3]
    # found by its type in the raw bytes (line 2 has no whole type left): still named by its line
    assert problems.warnings == [f"{path}:3: not an event (session_id, seq, type, ts, data); skipped"]


def test_a_torn_last_line_is_skipped_quietly(tmp_path: Path) -> None:
    path = written(tmp_path / "log", ("a", 0, "session.start", {}), ("b", 0, "session.start", {}))
    with path.open("ab") as handle:
        handle.write(b'{"session_id":"c","seq":0,"ty')  # the crash came mid-write
    problems = Problems()
    assert [e.session_id for e in read_events(path, problems)] == ["a", "b"]
    assert not problems.warnings and "the last line is incomplete" in problems.notes[0]


def test_several_workers_share_a_folder_in_files_of_their_own(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    first = EventLog(folder, "w1")
    second = EventLog(folder, "w2")
    first.start()
    second.start()
    for n in range(100):
        first.write("a", n, "tick", 0.0, {})
        second.write("b", n, "tick", 0.0, {})
    first.close()
    second.close()
    assert first.path != second.path
    for log, session in ((first, "a"), (second, "b")):
        assert log.path is not None
        events = list(read_events(log.path, Problems()))
        assert [e.seq for e in events] == list(range(100)) and {e.session_id for e in events} == {session}


def test_the_writer_keeps_up_and_counts_what_it_drops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openrtc.usage import eventlog

    monkeypatch.setattr(eventlog, "QUEUE_MAX", 10)
    log = EventLog(tmp_path / "log", "w1")
    log.start()
    log._stop.set()  # the writer is stopped: the queue fills
    assert log._thread is not None
    log._thread.join()
    for n in range(15):
        log.write("a", n, "tick", 0.0, {})
    log.close()
    assert (log.written, log.dropped) == (10, 5)
