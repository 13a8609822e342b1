"""The event log: one JSON object per line, written off the event loop, crash-safe.

    {"session_id":"9a641b35067c","seq":3,"type":"llm.call","ts":1764671400.123,"data":{...}}

`seq` starts at 0 for each session and has no gaps; `session_id` is null for the worker's own events.
The keys come in that order, with no spaces, so a reader can find a type or a session in the raw
bytes before it parses anything (`reader`).

Files: `<folder>/<UTC start, YYYYMMDDTHHMMSSZ>-<worker id>-<n>.jsonl`, one worker per file (several
workers share a folder without interleaving), a new file past `ROTATE_BYTES`; beside each, its index
(`.idx`, see `index`: a cache of the sessions' starts and ends, for fast reports). The folder is made 0700
(a symlinked or open one is refused), the files 0600.

The loop thread only appends to a queue (`write`); a writer thread turns the queue into lines and
writes them every `FLUSH_S` with one `write` call per batch, to a file opened `O_APPEND`: once `write`
returns, the lines are the kernel's, and a `kill -9` of the worker loses only what was still queued,
at most `FLUSH_S` of events. A crash in the middle of a `write` can leave one torn last line, which
readers skip. The queue is bounded (`QUEUE_MAX`): past it, events are dropped and counted, never
blocking the loop. Retention (`Retention`) removes old files at start and every hour.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrtc._private import ensure_private_dir
from openrtc.errors import ConfigError
from openrtc.usage import index

log = logging.getLogger("openrtc.usage")

FLUSH_S = 0.05
"""How often the writer writes what was queued: the most a `kill -9` can lose."""
QUEUE_MAX = 200_000
"""Events waiting at most; past it they are dropped (and counted)."""
CHUNK = 32
"""Events formatted and written at a time, between which the writer lets the loop thread run."""
ROTATE_BYTES = 64 << 20
"""A file past this size is closed and a new one started."""
RETENTION_EVERY_S = 3600.0
INDEX_SUFFIX = ".idx"
INDEXED = frozenset(("session.start", "session.end"))
FILE_NAME = re.compile(r"^(\d{8}T\d{6}Z)-([0-9A-Za-z_.-]+)-(\d+)\.jsonl$")


def default_log_dir(environ: Mapping[str, str] | None = None) -> Path:
    """`$XDG_STATE_HOME/openrtc/sessions`, else `~/.local/state/openrtc/sessions`."""
    env = os.environ if environ is None else environ
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "openrtc" / "sessions"


def private_log_dir(folder: Path) -> Path:
    """The log folder, made 0700 when missing; a symlinked, foreign or open one raises `ConfigError`."""
    return ensure_private_dir(folder, "log folder", ConfigError)


@dataclass(frozen=True)
class Retention:
    """How long the event log keeps its files: by age, by total size, or both (None: no limit)."""

    max_age_s: float | None = 30 * 86400.0
    """Files last written longer ago than this are removed (default 30 days)."""
    max_bytes: int | None = None
    """Past this many bytes in all, the oldest files are removed."""

    @classmethod
    def parse(cls, text: str) -> Retention:
        """`30d`, `12h`, `2GB`, `500MB`, `30d,2GB`, or `forever`."""
        if text.strip().lower() in ("forever", "none", "off"):
            return cls(None, None)
        age: float | None = None
        size: int | None = None
        for part in (p.strip().lower() for p in text.split(",")):
            match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(d|h|m|kb|mb|gb|tb)", part)
            if match is None:
                raise ConfigError(f"retention {text!r}: expected an age (30d, 12h) or a size (2GB, 500MB)")
            value, unit = float(match.group(1)), match.group(2)
            if unit in ("d", "h", "m"):
                age = value * {"d": 86400, "h": 3600, "m": 60}[unit]
            else:
                size = int(value * {"kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}[unit])
        return cls(age, size)


def apply_retention(
    folder: Path, retention: Retention, keep: Path | None = None, now: float | None = None
) -> int:
    """Remove the log files `retention` no longer keeps (never `keep`, the file being written).
    Returns how many were removed."""
    now = time.time() if now is None else now
    files = []
    for path in folder.iterdir():
        if FILE_NAME.match(path.name) and path != keep:
            with contextlib.suppress(FileNotFoundError):
                st = path.stat()
                files.append((st.st_mtime, st.st_size, path))
    files.sort()
    removed = 0
    total = sum(size for _, size, _ in files) + (keep.stat().st_size if keep and keep.exists() else 0)
    for mtime, size, path in files:
        too_old = retention.max_age_s is not None and now - mtime > retention.max_age_s
        too_big = retention.max_bytes is not None and total > retention.max_bytes
        if not (too_old or too_big):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed += 1
            total -= size
        with contextlib.suppress(FileNotFoundError):
            path.with_suffix(INDEX_SUFFIX).unlink()  # its index goes with it (sizes count the logs only)
    return removed


class EventLog:
    """Writes events to the log folder from a thread of its own (see the module)."""

    def __init__(
        self,
        folder: Path,
        worker_id: str,
        retention: Retention = Retention(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.folder = folder
        self.worker_id = worker_id
        self.retention = retention
        self._clock = clock
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()
        """One flush at a time: the writer thread's, or `flush`'s caller's."""
        self._fd = -1
        self._index_fd = -1
        self.path: Path | None = None
        self._file_no = 0
        self._size = 0
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.written = 0
        """Events written since start."""
        self.dropped = 0
        """Events dropped because the queue was full (the disk or the writer could not keep up)."""
        self.errors = 0
        self.last_error: str | None = None

    def start(self) -> None:
        private_log_dir(self.folder)
        apply_retention(self.folder, self.retention)
        self._open()
        self._thread = threading.Thread(target=self._run, name="openrtc-event-log", daemon=True)
        self._thread.start()

    def write(self, session_id: str | None, seq: int, kind: str, ts: float, data: dict[str, Any]) -> None:
        """Queue one event (loop thread: one append)."""
        if len(self._queue) >= QUEUE_MAX:
            self.dropped += 1
            return
        self._queue.append((session_id, seq, kind, ts, data))

    def flush(self) -> None:
        """Write what is queued now (any thread; the writer thread does it every `FLUSH_S`)."""
        with self._lock:
            self._flush()

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10.0)
            self._thread = None
        with self._lock:
            self._flush()
            self._close_files()
        if self.dropped:
            log.warning("event log: %d events were dropped (the writer could not keep up)", self.dropped)

    def _close_files(self) -> None:
        for fd in (self._fd, self._index_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._index_fd = -1

    def _open(self) -> None:
        self._close_files()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        while True:
            self._file_no += 1
            path = self.folder / f"{stamp}-{self.worker_id}-{self._file_no}.jsonl"
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
            except FileExistsError:
                continue
            break
        self.path, self._size = path, 0
        try:  # the index is a cache (`index`): without one, readers scan the JSONL instead
            self._index_fd = os.open(
                path.with_suffix(INDEX_SUFFIX), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600
            )
            os.write(self._index_fd, index.header())
        except OSError as exc:
            self._error(f"cannot write the index of {path}: {exc.strerror or exc}")

    def _run(self) -> None:
        next_retention = time.monotonic() + RETENTION_EVERY_S
        while not self._stop.wait(FLUSH_S):
            try:
                self.flush()
            except Exception as exc:  # the writer must outlive a bug: the next batch is still written
                self._error(f"{type(exc).__name__}: {exc}")
            if time.monotonic() >= next_retention:
                next_retention += RETENTION_EVERY_S
                try:
                    apply_retention(self.folder, self.retention, keep=self.path)
                except OSError as exc:
                    self._error(f"retention: {exc}")

    def _flush(self) -> None:
        # In chunks, with the GIL let go between them: a busy writer thread would otherwise hold it
        # for up to the interpreter's switch interval (5 ms) at a time, and the loop thread wait.
        queue = self._queue
        while queue and self._fd >= 0:
            lines = []
            records = []
            end = self._size
            for _ in range(min(len(queue), CHUNK)):
                session_id, seq, kind, ts, data = queue.popleft()
                line = format_line(session_id, seq, kind, ts, data).encode()
                lines.append(line)
                end += len(line)
                if kind in INDEXED:
                    found = index.record(kind, session_id, end, ts, data)
                    if found is not None:
                        records.append(found)
            self._write(b"".join(lines), len(lines), end, records)
            time.sleep(0)

    def _write(self, chunk: bytes, count: int, end: int, records: list[bytes]) -> None:
        try:
            os.write(self._fd, chunk)
        except OSError as exc:
            self._error(f"cannot write {self.path}: {exc.strerror or exc}")
            return
        self.written += count
        self._size = end
        if self._index_fd >= 0:
            try:
                if records:
                    os.write(self._index_fd, b"".join(records))
                else:  # readers trust an index no older than its log (`stats.summary`)
                    os.utime(self._index_fd)
            except OSError as exc:
                self._error(f"cannot write the index of {self.path}: {exc.strerror or exc}")
        if self._size >= ROTATE_BYTES:
            self._open()

    def _error(self, message: str) -> None:
        self.errors += 1
        if message != self.last_error:
            log.error("event log: %s", message)
        self.last_error = message


_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=repr).encode


def format_line(session_id: str | None, seq: int, kind: str, ts: float, data: dict[str, Any]) -> str:
    event = {"session_id": session_id, "seq": seq, "type": kind, "ts": round(ts, 6), "data": data}
    try:
        return _encode(event) + "\n"
    # NaN or infinity in the data (a caller's metadata, say), or a caller's dict changed while written
    except (ValueError, RuntimeError) as exc:
        event["data"] = {"unwritable": f"{type(exc).__name__}: {exc}"}
        return json.dumps(event, separators=(",", ":")) + "\n"
