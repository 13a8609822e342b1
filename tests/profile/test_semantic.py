"""Token, tool and wall-time stacks from session summaries (pure)."""

from __future__ import annotations

from openrtc.profile import semantic
from openrtc.stats.summary import SessionSummary


def summary(session_id: str, wall_s: float | None, cpu_s: float, models: list, tools: list) -> SessionSummary:
    return SessionSummary(
        session_id,
        "chat",
        None,
        "w1",
        1,
        0.0,
        "ended",
        None,
        None,
        wall_s,
        cpu_s,
        0.0,
        0.0,
        0,
        0.0,
        models,
        tools,
    )


# [key, calls, input, output, cache_read, cache_write, reasoning, cost, unknown_cost, unknown_tokens, llm_s]
ROW = ["openai/gpt-4o", 2, 1000, 40, 800, 0, 10, 0.01, 0, 0, 1.5]


def test_cached_input_counts_once_and_the_tag_replaces_the_id() -> None:
    profile = semantic.tokens([summary("s1", 3.0, 0.1, [ROW], [])], tags={"s1": "billing"})
    head = ("agent:chat", "tag:billing", "call:llm/openai/gpt-4o")
    assert profile.stacks == {
        (*head, "kind:input"): 200,
        (*head, "kind:cache_read"): 800,
        (*head, "kind:output"): 40,
    }
    assert profile.total == 1040  # 1000 input (its 800 cached included) + 40 output: nothing twice


def test_wall_time_splits_into_loop_calls_tools_and_awaiting_never_negative() -> None:
    s = summary("s1", 3.0, 0.2, [ROW], [["search", 2, 0, 0.5]])
    stacks = semantic.wall([s]).stacks
    assert stacks[("agent:chat", "session:s1", "loop")] == 200
    assert stacks[("agent:chat", "session:s1", "call:llm/openai/gpt-4o")] == 1500
    assert stacks[("agent:chat", "session:s1", "call:tool/search")] == 500
    assert round(stacks[("agent:chat", "session:s1", "awaiting")], 6) == 800
    overlapping = summary("s2", 1.0, 0.2, [ROW], [])  # 1.5 s of LLM calls in 1 s: they overlapped
    assert ("agent:chat", "session:s2", "awaiting") not in semantic.wall([overlapping]).stacks
    incomplete = summary("s3", None, 0.2, [], [])
    assert list(semantic.wall([incomplete]).stacks) == [("agent:chat", "session:s3", "loop")]


def test_tools_by_calls_and_by_ms() -> None:
    s = summary("s1", 3.0, 0.2, [], [["search", 2, 1, 0.5]])
    calls = semantic.tools([s]).stacks
    assert calls == {
        ("agent:chat", "session:s1", "call:tool/search", "status:ok"): 2,
        ("agent:chat", "session:s1", "call:tool/search", "status:error"): 1,
    }
    events = [
        ("s1", {"tool": "search", "duration_ms": 12.5, "ok": True}),
        ("s1", {"tool": "search", "ok": False}),
    ]
    events.append(("other", {"tool": "x", "duration_ms": 1, "ok": True}))
    ms = semantic.tools([s], events, by="ms").stacks
    assert ms == {("agent:chat", "session:s1", "call:tool/search", "status:ok"): 12.5}
