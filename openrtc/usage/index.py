"""The event log's index: beside each `X.jsonl`, an `X.idx` of one compact record per session start and
end, so `openrtc stats` reads 100,000 sessions without parsing their JSON. Pure (bytes in, bytes out).

The JSONL file is the truth; the index is a cache of it. The writer appends a batch's records right
after the batch's lines, so after a crash the index may lack the last few; each record says where its
line ends in the JSONL (`end`), and a reader scans the JSONL past the last indexed line for what the
index lacks. A missing, torn or unreadable index only makes the reader slower, never wrong.

The file: a msgpack stream. First `["openrtc-index", 1]`, then records:

    ["s", session_id, end, started_at]
    ["e", session_id, end, SUMMARY]

SUMMARY is the `session.end` event's data as a flat list (`END_FIELDS`), with `totals.models` as rows
`[key, calls, input, output, cache_read, cache_write, reasoning, cost_usd|None, unknown_cost_calls,
unknown_token_calls, llm_s]` and `totals.tools` as rows `[name, ok, failed, seconds]`. The format has
its version in the header: a reader that meets another version ignores the index and scans the JSONL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

MAGIC = "openrtc-index"
VERSION = 1
END_FIELDS = (
    "started_at",
    "agent",
    "tenant",
    "worker_id",
    "attempt",
    "state",
    "reason",
    "error",
    "wall_s",
    "cpu_s",
    "llm_s",
    "tool_s",
    "blocks",
    "block_ms",
    "models",
    "tools",
)
MODEL_FIELDS = (
    "calls",
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost_usd",
    "unknown_cost_calls",
    "unknown_token_calls",
    "llm_s",
)


def header() -> bytes:
    return msgpack.packb([MAGIC, VERSION])  # type: ignore[no-any-return]


def summary_of(data: dict[str, Any]) -> list[Any]:
    """SUMMARY (see the module) of a `session.end` event's data."""
    totals = data.get("totals") or {}
    models = [
        [key, *(m.get(name) for name in MODEL_FIELDS)]
        for key, m in (totals.get("models") or {}).items()
        if isinstance(m, dict)
    ]
    tools = [
        [name, t.get("ok", 0), t.get("failed", 0), t.get("seconds", 0.0)]
        for name, t in (totals.get("tools") or {}).items()
        if isinstance(t, dict)
    ]
    values = {**data, "blocks": totals.get("blocks", 0), "block_ms": totals.get("block_ms", 0.0)}
    values["models"], values["tools"] = models, tools
    return [values.get(name) for name in END_FIELDS]


def record(kind: str, session_id: str | None, end: int, ts: float, data: dict[str, Any]) -> bytes | None:
    """The index record of one event (at `ts`) whose line ends at byte `end` of its file; None for the events
    the index does not hold (all but `session.start` and `session.end` of a session)."""
    if session_id is None:
        return None
    if kind == "session.start":
        return msgpack.packb(["s", session_id, end, ts])  # type: ignore[no-any-return]
    if kind != "session.end":
        return None
    return msgpack.packb(["e", session_id, end, summary_of(data)], default=repr)  # type: ignore[no-any-return]


@dataclass
class Index:
    """What one index file holds."""

    starts: dict[str, float | None] = field(default_factory=dict)
    """Session id -> its start time, for each session that started in this file."""
    ends: list[tuple[str, Sequence[Any]]] = field(default_factory=list)
    """(session id, SUMMARY) of each session that ended in this file, in order."""
    covered: int = 0
    """Where the last indexed line ends in the JSONL file: past it, the reader must scan."""
    problem: str | None = None
    """Why the index was not (wholly) usable, when it was not."""


def read_index(data: bytes) -> Index:
    """Parse an index file's bytes; what it could not read is in `problem`, the rest is kept."""
    out = Index()
    # Tuples, not lists: made faster, and smaller (100,000 sessions' worth at a time).
    unpacker = msgpack.Unpacker(raw=False, use_list=False, strict_map_key=False)
    unpacker.feed(data)
    try:
        first = next(unpacker, None)
        if first != (MAGIC, VERSION):
            out.problem = f"not an index of version {VERSION} ({str(first)[:40]})"
            return out
        starts, ends = out.starts, out.ends
        for kind, session_id, end, value in unpacker:
            if kind == "e":
                ends.append((session_id, value))
            elif kind == "s":
                starts[session_id] = value
            out.covered = end  # records come in the order of their lines
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
        out.problem = f"unreadable past byte {out.covered} ({type(exc).__name__})"
    return out
