"""Reading the event log back: tolerant, and fast where a report over many sessions needs it.

A line that is not a JSON event is skipped with a warning naming its file and line; the rest of that
file, and every other file, is still read (one bad file never fails a report). A last line without
its newline is what a worker killed mid-write leaves: skipped, and said, but not as an error.

Reports over many sessions read one line per session, the `session.end` (it repeats what a summary
needs), found in the raw bytes (`mmap.find` on `"type":"session.end"`) before anything is parsed; a
session's own events are found the same way, by their `{"session_id":"..."` prefix. The writer's fixed
key order (`eventlog`) is what makes this safe; each line found is still parsed and checked in full.
"""

from __future__ import annotations

import calendar
import json
import mmap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openrtc.usage.eventlog import FILE_NAME


@dataclass(frozen=True)
class Event:
    """One line of the log."""

    session_id: str | None
    seq: int
    type: str
    ts: float
    data: dict[str, Any]
    file: Path
    line: int


@dataclass
class Problems:
    """What could not be read, in words (`file:line: why`)."""

    warnings: list[str] = field(default_factory=list)
    """Lines skipped for being corrupt."""
    notes: list[str] = field(default_factory=list)
    """Torn last lines (a worker stopped mid-write): normal after a crash."""

    def warn(self, path: Path, line: int, why: str) -> None:
        self.warnings.append(f"{path}:{line}: {why}; skipped")


def log_files(folder: Path) -> list[Path]:
    """The log's files, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if FILE_NAME.match(p.name))


def file_span(path: Path) -> tuple[float, float]:
    """(first event at most, last event at least): the file's start from its name, its mtime."""
    match = FILE_NAME.match(path.name)
    start = calendar.timegm(time.strptime(match.group(1), "%Y%m%dT%H%M%SZ")) if match else 0.0
    try:
        end = path.stat().st_mtime
    except FileNotFoundError:
        end = start
    return float(start), max(float(start), end)


def files_between(folder: Path, since: float | None, until: float | None) -> list[Path]:
    """The files that may hold events between `since` and `until` (unix seconds, None: open)."""
    out = []
    for path in log_files(folder):
        start, end = file_span(path)
        if (since is None or end >= since) and (until is None or start <= until):
            out.append(path)
    return out


def parse_line(raw: bytes, path: Path, line: int, problems: Problems) -> Event | None:
    """One event, or None (with a warning) when the line is not one."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        problems.warn(path, line, f"not JSON ({exc})")
        return None
    if not isinstance(doc, dict):
        problems.warn(path, line, "not a JSON object")
        return None
    session_id, seq, kind, ts, data = (doc.get(k) for k in ("session_id", "seq", "type", "ts", "data"))
    if (
        not (session_id is None or isinstance(session_id, str))
        or not isinstance(seq, int)
        or not isinstance(kind, str)
        or not isinstance(ts, int | float)
        or not isinstance(data, dict)
    ):
        problems.warn(path, line, "not an event (session_id, seq, type, ts, data)")
        return None
    return Event(session_id, seq, kind, float(ts), data, path, line)


def read_events(path: Path, problems: Problems) -> Iterator[Event]:
    """Every event of one file, in order."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        problems.warn(path, 0, f"cannot be read ({exc.strerror or exc})")
        return
    with handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.endswith(b"\n"):
                problems.notes.append(
                    f"{path}:{number}: the last line is incomplete (its worker stopped mid-write)"
                )
                return
            if raw.strip():
                event = parse_line(raw, path, number, problems)
                if event is not None:
                    yield event


def _mapped(path: Path, problems: Problems) -> mmap.mmap | None:
    try:
        with path.open("rb") as handle:
            if path.stat().st_size == 0:
                return None
            return mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as exc:
        problems.warn(path, 0, f"cannot be read ({exc.strerror or exc})")
        return None


def find_events(path: Path, needle: bytes, problems: Problems, start: int = 0) -> Iterator[Event]:
    """The events of one file whose line contains `needle`, found in the raw bytes, then parsed; from
    byte `start` (a line's start) on."""
    mapped = _mapped(path, problems)
    if mapped is None:
        return
    with mapped:
        pos = start
        while (hit := mapped.find(needle, pos)) >= 0:
            begin = mapped.rfind(b"\n", 0, hit) + 1
            end = mapped.find(b"\n", hit)
            if end < 0:
                problems.notes.append(f"{path}: the last line is incomplete (its worker stopped mid-write)")
                return
            raw = mapped[begin:end]
            pos = end + 1
            event = parse_line(raw, path, 0, problems)
            if event is None:  # say where: count the lines only for a bad one
                number = mapped[:begin].count(b"\n") + 1
                problems.warnings[-1] = problems.warnings[-1].replace(f"{path}:0:", f"{path}:{number}:")
                continue
            yield event


def find_session_ids(
    path: Path, needle: bytes, problems: Problems, start: int = 0
) -> Iterator[tuple[str, int]]:
    """(session id, byte offset of its line) of each line containing `needle`, without parsing it: the id
    is read off the line's fixed prefix. For finding which sessions a file starts, fast. From byte
    `start` (a line's start) on."""
    mapped = _mapped(path, problems)
    if mapped is None:
        return
    prefix = b'{"session_id":"'
    with mapped:
        pos = start
        while (hit := mapped.find(needle, pos)) >= 0:
            begin = mapped.rfind(b"\n", 0, hit) + 1
            end = mapped.find(b"\n", hit)
            if end < 0:
                return
            pos = end + 1
            if mapped[begin : begin + len(prefix)] == prefix:
                close = mapped.find(b'"', begin + len(prefix), end)
                if close > 0:
                    yield mapped[begin + len(prefix) : close].decode(errors="replace"), begin


def type_needle(kind: str) -> bytes:
    return f'"type":"{kind}"'.encode()


def session_needle(session_id: str) -> bytes:
    return b'{"session_id":' + json.dumps(session_id).encode() + b","
