"""Profiles from the event log: where a session's tokens, tool calls and wall time went. Pure (the
summaries and events come from `openrtc.stats` and `openrtc.usage.reader`).

- tokens: `agent:A;session:S;call:llm/MODEL;kind:K`, K one of `input` (not cached), `cache_read`,
  `cache_write`, `output`, weighted by tokens. The log's `input_tokens` includes the cache reads and
  writes (OpenTelemetry's convention), so `input` here is what is left: a cached token counts once.
- tools: `agent:A;session:S;call:tool/NAME;status:ok|error`, weighted by calls or by milliseconds.
- wall: `agent:A;session:S;` then `loop` (its steps on the event loop, or its process's CPU),
  `call:llm/MODEL`, `call:tool/NAME` and `awaiting` (the rest of its wall time: sleeps, I/O, other
  sessions' turns), weighted by milliseconds. LLM and tool calls that overlap each count in full;
  `awaiting` is never negative, so a session with overlapping calls sums to more than its wall time.

`tags` maps a session id to a one-word tag (`tagger`); a tagged session's frame is `tag:WORD`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openrtc.profile.stacks import Profile, Stack, add
from openrtc.stats.summary import SessionSummary

# A model row: [key, calls, input, output, cache_read, cache_write, reasoning, cost, ..., llm_s]
_INPUT, _OUTPUT, _CACHE_READ, _CACHE_WRITE = 2, 3, 4, 5


def session_frame(session_id: str, tags: Mapping[str, str] | None) -> str:
    tag = tags.get(session_id) if tags else None
    return f"tag:{tag}" if tag else f"session:{session_id}"


def _head(s: SessionSummary, tags: Mapping[str, str] | None) -> Stack:
    return (f"agent:{s.agent}", session_frame(s.session_id, tags))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def tokens(summaries: Iterable[SessionSummary], tags: Mapping[str, str] | None = None) -> Profile:
    stacks: dict[Stack, float] = {}
    for s in summaries:
        head = _head(s, tags)
        for row in s.models:
            call = (*head, f"call:llm/{row[0]}")
            cache_read, cache_write = _count(row[_CACHE_READ]), _count(row[_CACHE_WRITE])
            add(stacks, (*call, "kind:input"), max(0, _count(row[_INPUT]) - cache_read - cache_write))
            add(stacks, (*call, "kind:cache_read"), cache_read)
            add(stacks, (*call, "kind:cache_write"), cache_write)
            add(stacks, (*call, "kind:output"), _count(row[_OUTPUT]))
    return Profile(stacks, "tokens", "Tokens", session_depth=1)


def tools(
    summaries: Iterable[SessionSummary],
    calls: Iterable[tuple[str, Mapping[str, Any]]] = (),
    *,
    by: str = "calls",
    tags: Mapping[str, str] | None = None,
) -> Profile:
    """By `calls`, from the summaries; by `ms`, from the `tool.call` events `calls` (session id, data)."""
    stacks: dict[Stack, float] = {}
    summaries = list(summaries)
    heads = {s.session_id: _head(s, tags) for s in summaries}
    if by == "calls":
        for s in summaries:
            for name, ok, failed, _seconds in s.tools:
                add(stacks, (*heads[s.session_id], f"call:tool/{name}", "status:ok"), _count(ok))
                add(stacks, (*heads[s.session_id], f"call:tool/{name}", "status:error"), _count(failed))
        return Profile(stacks, "calls", "Tool calls", session_depth=1)
    for session_id, data in calls:
        head = heads.get(session_id)
        ms = data.get("duration_ms")
        if head is None or not isinstance(ms, int | float) or isinstance(ms, bool):
            continue
        status = "status:ok" if data.get("ok") is True else "status:error"
        add(stacks, (*head, f"call:tool/{data.get('tool')}", status), float(ms))
    return Profile(stacks, "ms", "Tool time", session_depth=1)


def wall(summaries: Iterable[SessionSummary], tags: Mapping[str, str] | None = None) -> Profile:
    stacks: dict[Stack, float] = {}
    for s in summaries:
        head = _head(s, tags)
        loop_ms = (s.cpu_s or 0.0) * 1000
        add(stacks, (*head, "loop"), loop_ms)
        spent = loop_ms
        for row in s.models:
            llm_ms = float(row[-1] or 0.0) * 1000
            add(stacks, (*head, f"call:llm/{row[0]}"), llm_ms)
            spent += llm_ms
        for name, _ok, _failed, seconds in s.tools:
            add(stacks, (*head, f"call:tool/{name}"), float(seconds or 0.0) * 1000)
            spent += float(seconds or 0.0) * 1000
        if s.wall_s is not None:
            add(stacks, (*head, "awaiting"), s.wall_s * 1000 - spent)
    return Profile(stacks, "ms", "Wall time", session_depth=1)
