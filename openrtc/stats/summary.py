"""Each session of the event log as one summary: what it did to the worker (wall, loop time, blocks)
and what it cost (calls per model, tokens, cache, tools, dollars), with how it ended.

A session whose log has no `session.end` is `incomplete`: its worker stopped without draining (or still
runs it); its summary is summed from the events that are there.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from openrtc.usage import index
from openrtc.usage.eventlog import FILE_NAME, INDEX_SUFFIX
from openrtc.usage.reader import (
    Event,
    Problems,
    files_between,
    find_events,
    find_session_ids,
    log_files,
    read_events,
    session_needle,
    type_needle,
)
from openrtc.usage.totals import ModelTotals, ToolTotals, Totals

INCOMPLETE = "incomplete"


ModelRow = Sequence[Any]
"""One model's calls in a session: `[key, calls, input_tokens, output_tokens, cache_read_tokens,
cache_write_tokens, reasoning_tokens, cost_usd or None, unknown_cost_calls, unknown_token_calls, llm_s]`
(the index's layout: reports sum these rows without building objects)."""
MODEL_ROW = len(index.MODEL_FIELDS) + 1
Raw = tuple[str, Sequence[Any]]
"""A session as the index holds it: (session id, SUMMARY), SUMMARY in `index.END_FIELDS` order."""
STARTED_AT, AGENT, TENANT, STATE, WALL_S, CPU_S, TOOL_S, MODELS = (
    index.END_FIELDS.index(name)
    for name in ("started_at", "agent", "tenant", "state", "wall_s", "cpu_s", "tool_s", "models")
)


class SessionSummary(NamedTuple):
    """One session, summed up. (A named tuple, not a dataclass: a report makes 100,000 of them, and a
    tuple is made several times faster.)"""

    session_id: str
    agent: str
    tenant: str | None
    worker_id: str | None
    attempt: int
    started_at: float
    """Unix time it started."""
    state: str
    """`ended`, `failed`, `cancelled`, or `incomplete` (no end in the log)."""
    reason: str | None
    error: str | None
    wall_s: float | None
    """Start to end (None when incomplete)."""
    cpu_s: float | None
    """Its loop time (coroutine mode) or its process's CPU (process mode), when measured."""
    llm_s: float
    tool_s: float
    blocks: int
    block_ms: float
    models: Sequence[ModelRow]
    """Its calls per model (`ModelRow`)."""
    tools: Sequence[Sequence[Any]]
    """Its tool calls: `[name, ok, failed, seconds]` each."""

    @property
    def totals(self) -> Totals:
        """The same, as `Totals` (built on each use: reports over many sessions read the rows)."""
        totals = Totals(blocks=self.blocks, block_ms=self.block_ms)
        for key, *values in self.models:
            totals.models[key] = ModelTotals(
                **{name: value or 0 for name, value in zip(index.MODEL_FIELDS, values, strict=True)}
            )
        for name, ok, failed, seconds in self.tools:
            totals.tools[name] = ToolTotals(ok, failed, seconds)
        return totals

    @property
    def cost_usd(self) -> float | None:
        return self.totals.cost_usd

    @property
    def unknown_cost_calls(self) -> int:
        return self.totals.unknown_cost_calls

    def as_dict(self) -> dict[str, Any]:
        t = self.totals
        return {
            "session_id": self.session_id,
            "agent": self.agent,
            "tenant": self.tenant,
            "worker_id": self.worker_id,
            "attempt": self.attempt,
            "started_at": self.started_at,
            "state": self.state,
            "reason": self.reason,
            "error": self.error,
            "wall_s": self.wall_s,
            "cpu_s": self.cpu_s,
            "llm_s": round(self.llm_s, 6),
            "tool_s": round(self.tool_s, 6),
            "calls": t.calls,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "cache_read_tokens": t.cache_read_tokens,
            "cache_write_tokens": t.cache_write_tokens,
            "reasoning_tokens": t.reasoning_tokens,
            "cache_hit_rate": round(t.cache_hit_rate, 4) if t.cache_hit_rate is not None else None,
            "cost_usd": t.cost_usd,
            "unknown_cost_calls": t.unknown_cost_calls,
            "tools_ok": sum(x.ok for x in t.tools.values()),
            "tools_failed": sum(x.failed for x in t.tools.values()),
            "blocks": t.blocks,
            "models": {k: m.as_dict() for k, m in sorted(t.models.items())},
            "tools": {k: x.as_dict() for k, x in sorted(t.tools.items())},
        }


def from_summary(session_id: str, summary: Sequence[Any], ts: float = 0.0) -> SessionSummary:
    """A complete session from its SUMMARY (`index`), read from the index or from its end line.
    `ValueError` or `TypeError` when the summary is not one."""
    (
        started_at,
        agent,
        tenant,
        worker_id,
        attempt,
        state,
        reason,
        error,
        wall_s,
        cpu_s,
        llm_s,
        tool_s,
        blocks,
        block_ms,
        models,
        tools,
    ) = summary
    if any(len(row) != MODEL_ROW for row in models) or any(len(row) != 4 for row in tools):
        raise ValueError("a model or tool row of the wrong length")
    return SessionSummary(
        str(session_id),
        str(agent or "?"),
        tenant,
        worker_id,
        int(attempt or 1),
        float(started_at or ts),
        str(state or "ended"),
        reason,
        error,
        None if wall_s is None else float(wall_s),
        None if cpu_s is None else float(cpu_s),
        float(llm_s or 0),
        float(tool_s or 0),
        int(blocks or 0),
        float(block_ms or 0),
        models,
        tools,
    )


def raw_end(end: Event) -> Raw:
    """A complete session, raw, from its `session.end` alone."""
    summary = index.summary_of(end.data)
    if summary[STARTED_AT] is None:
        summary[STARTED_AT] = end.ts
    return str(end.session_id), summary


def from_end(end: Event) -> SessionSummary:
    return from_summary(*raw_end(end))


def raw_from_events(events: Iterable[Event]) -> Raw | None:
    """A session, raw, from its events (its end, if there is one, says the rest); None without its
    start or end."""
    ordered = sorted(events, key=lambda e: e.seq)
    for event in ordered:
        if event.type == "session.end":
            return raw_end(event)
    start = next((e for e in ordered if e.type == "session.start"), None)
    if start is None:
        return None
    totals = Totals()
    for event in ordered:
        totals.add_event(event.type, event.data)
    d = start.data
    summary: dict[str, Any] = {
        "started_at": start.ts,
        "agent": d.get("agent"),
        "tenant": d.get("tenant"),
        "worker_id": d.get("worker_id"),
        "attempt": d.get("attempt"),
        "state": INCOMPLETE,
        "reason": "no end in the log: its worker stopped without draining, or still runs it",
        "llm_s": totals.llm_s,
        "tool_s": totals.tool_s,
        "totals": totals.as_dict(),
    }
    return str(start.session_id), index.summary_of(summary)


def from_events(events: Iterable[Event]) -> SessionSummary | None:
    raw = raw_from_events(events)
    return from_summary(*raw) if raw is not None else None


def scan(folder: Path, since: float | None, until: float | None, problems: Problems) -> Iterator[list[Raw]]:
    """The sessions of the log that started between `since` and `until`, raw, in batches: one per file
    (the sessions that ended in it), then one of the incomplete sessions. Each file is read from its
    index, and its JSONL past what the index covers (all of it, without an index). A batch at a time:
    a report over 100,000 sessions never holds them all."""

    def wanted(raw: Raw) -> bool:
        at = raw[1][STARTED_AT]
        return (since is None or at >= since) and (until is None or at <= until)

    ended: set[str] = set()
    started: dict[str, Path] = {}
    for path in files_between(folder, since, until):
        batch: list[Raw] = []
        covered = _from_index(path, batch, started, problems)
        for event in find_events(path, type_needle("session.end"), problems, start=covered):
            if event.type == "session.end" and event.session_id is not None:
                batch.append(raw_end(event))
        for session_id, _ in find_session_ids(path, type_needle("session.start"), problems, start=covered):
            started.setdefault(session_id, path)
        ended.update(session_id for session_id, _ in batch)
        yield [raw for raw in batch if wanted(raw)]
    missing = [sid for sid in started if sid not in ended]
    if missing:
        yield [raw for raw in _incomplete(missing, started, problems) if wanted(raw)]


def load_summaries(
    folder: Path, since: float | None, until: float | None, problems: Problems
) -> list[SessionSummary]:
    """Every session of the window, oldest first (all in memory: for a few, or for an export)."""
    out = []
    for batch in scan(folder, since, until, problems):
        for session_id, summary in batch:
            try:
                out.append(from_summary(session_id, summary))
            except (TypeError, ValueError):
                problems.warnings.append(f"session {session_id}: an unreadable summary; skipped")
    return sorted(out, key=lambda s: (s.started_at, s.session_id))


def _from_index(path: Path, batch: list[Raw], started: dict[str, Path], problems: Problems) -> int:
    """What `path`'s index holds, into `batch` and `started`; returns the bytes of `path` it covers."""
    where = path.with_suffix(INDEX_SUFFIX)
    data = _fresh_index(path, problems)
    if data is None:
        return 0
    size = path.stat().st_size
    found = index.read_index(data)
    if found.problem is not None:
        problems.notes.append(f"{where}: {found.problem}; reading the log past it")
    if found.covered > size:  # not this file's index (the file was replaced): trust none of it
        problems.notes.append(f"{where}: covers more than {path} holds; ignored")
        return 0
    for raw in found.ends:
        if len(raw[1]) == len(index.END_FIELDS):
            batch.append(raw)
        else:
            problems.warnings.append(f"{where}: a bad record for session {raw[0]}; skipped")
    for session_id in found.starts:
        started.setdefault(session_id, path)
    return found.covered


def _incomplete(ids: list[str], where: dict[str, Path], problems: Problems) -> list[Raw]:
    """Sessions with no end, from all their events: in the file they started in and in that worker's
    later files (rotation)."""
    by_file: dict[Path, set[str]] = {}
    for sid in ids:
        by_file.setdefault(where[sid], set()).add(sid)
    out = []
    for start, wanted in by_file.items():
        files = _same_worker_from(start)
        grouped: dict[str, list[Event]] = {sid: [] for sid in wanted}
        if len(wanted) <= 20:  # a few: find each in the raw bytes
            for sid in wanted:
                grouped[sid] = [
                    e
                    for path in files
                    for e in find_events(path, session_needle(sid), problems)
                    if e.session_id == sid
                ]
        else:
            for path in files:
                for event in read_events(path, problems):
                    if event.session_id in grouped:
                        grouped[event.session_id].append(event)
        for events in grouped.values():
            raw = raw_from_events(events)
            if raw is not None:
                out.append(raw)
    return out


def _same_worker_from(start: Path) -> list[Path]:
    """`start` and the files its worker wrote after it."""
    match = FILE_NAME.match(start.name)
    if match is None:
        return [start]
    later = [
        p
        for p in log_files(start.parent)
        if p >= start and (m := FILE_NAME.match(p.name)) is not None and m.group(2) == match.group(2)
    ]
    return later or [start]


def load_session(folder: Path, session_id: str, problems: Problems) -> list[Event]:
    """Every event of one session (an id prefix of 6+ characters will do), in order."""
    files = _files_holding(files_between(folder, None, None), session_id)
    exact = session_needle(session_id)
    events = [e for path in files for e in find_events(path, exact, problems) if e.session_id == session_id]
    if not events and len(session_id) >= 6:  # a prefix: the needle without its closing quote and comma
        prefix = exact[:-2]
        events = [
            e
            for path in files
            for e in find_events(path, prefix, problems)
            if (e.session_id or "").startswith(session_id)
        ]
    ids = {e.session_id for e in events}
    if len(ids) > 1:
        raise LookupError(
            f"{len(ids)} sessions start with {session_id!r}: {', '.join(sorted(map(str, ids))[:5])}"
        )
    return sorted(events, key=lambda e: e.seq)


def _files_holding(files: list[Path], session_id: str) -> list[Path]:
    """The files that may hold events of the session(s) whose id starts with `session_id`: where an
    index names it, with its worker's later files, and every file without an index. When no index
    names it (it started in the last moments of a live or crashed worker), every file: searching an
    index is ten times quicker than its log, and the answer is the same."""
    needle = session_id.encode()
    chosen: set[Path] = set()
    named = False
    for path in files:
        data = _fresh_index(path, None)
        if data is None:
            chosen.add(path)
            continue
        if needle in data:
            named = True
            chosen.update(_same_worker_from(path))
    if not named:
        return files
    return [path for path in files if path in chosen]


def _fresh_index(path: Path, problems: Problems | None) -> bytes | None:
    """The bytes of `path`'s index, or None when it has none or one older than the log itself: the
    worker writes a batch's lines, then their index records, so a log written after its index was
    edited by hand, or its worker stopped between the two writes. Either way the log says it all."""
    where = path.with_suffix(INDEX_SUFFIX)
    try:
        if where.stat().st_mtime_ns < path.stat().st_mtime_ns:
            if problems is not None:
                problems.notes.append(f"{where} is older than its log: reading the log instead")
            return None
        return where.read_bytes()
    except OSError:  # no index (an older worker's file, or it could not be written)
        return None
