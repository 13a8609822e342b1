"""What the metrics count, kept as plain numbers on the loop thread. Pure: no prometheus_client here.

Each family is a dict from a label tuple to a number, or to a histogram's bucket counts. The loop
thread adds (a dict update or two per event); the exporter reads a copy at scrape time, from its own
thread. Labels are bounded by agents x models x tools, never a session id; past `MAX_SERIES` label
sets a family lumps the rest into `_other`, so a caller naming models from user input cannot grow a
scrape without end.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

MAX_SERIES = 2000
"""Label sets per family; the rest are counted under `_other`."""
OTHER = "_other"

TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cache_read", "cache_read_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
)
"""(the `kind` label, the `llm.call` field): input counts the cache reads and writes, output the
reasoning, as the event log does."""

LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""Loop lag, seconds: from a healthy loop's fraction of a millisecond to a stalled one."""
BLOCK_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Blocks (steps over the slow-session threshold, 50 ms by default), seconds."""


@dataclass
class Histogram:
    """Bucket counts (not cumulative) and their sum."""

    bounds: Sequence[float]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def read(self) -> tuple[list[tuple[str, float]], float]:
        """((`le`, observations at or under it) with +Inf last, as the exposition format has them;
        the sum). From any thread: the counts are copied at once, so the +Inf bucket is the count."""
        counts, total = list(self.counts), self.total
        buckets, running = [], 0
        for bound, count in zip(self.bounds, counts, strict=False):
            running += count
            buckets.append((repr(float(bound)), float(running)))
        buckets.append(("+Inf", float(running + counts[-1])))
        return buckets, total


class Family:
    """One counter family: label values -> a number, bounded in size."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...], amount: float = 1.0) -> None:
        values = self.values
        if labels in values:
            values[labels] += amount
        elif len(values) < MAX_SERIES:
            values[labels] = amount
        else:
            other = (OTHER,) * len(labels)
            values[other] = values.get(other, 0.0) + amount

    def copy(self) -> dict[tuple[str, ...], float]:
        return dict(self.values)


class Tally:
    """Everything the worker's metrics count, fed by the metrics hook."""

    def __init__(self) -> None:
        self.started = Family()  # (agent,)
        self.ended = Family()  # (agent, state, reason)
        self.calls = Family()  # (agent, model)
        self.tokens = Family()  # (agent, model, kind)
        self.cost = Family()  # (agent, model)
        self.unknown_cost = Family()  # (agent, model)
        self.tools = Family()  # (agent, tool, ok)
        self.cpu = Family()  # (agent,)
        self.blocks = Family()  # (agent, kind)
        self.lag = Histogram(LAG_BUCKETS)
        self.block_seconds = Histogram(BLOCK_BUCKETS)

    def llm_call(self, agent: str, data: dict[str, Any]) -> None:
        provider, model = data.get("provider"), data.get("model")
        name = f"{provider}/{model}" if provider else str(model)
        key = (agent, name)
        self.calls.add(key)
        for kind, source in TOKEN_KINDS:
            count = data.get(source)
            if type(count) is int and count:
                self.tokens.add((agent, name, kind), count)
        cost = data.get("cost_usd")
        if type(cost) is float or type(cost) is int:
            self.cost.add(key, cost)
        else:
            self.unknown_cost.add(key)  # never a 0 added for a price nobody knows

    def tool_call(self, agent: str, data: dict[str, Any]) -> None:
        self.tools.add((agent, str(data.get("tool")), "true" if data.get("ok") else "false"))

    def block(self, agent: str, data: dict[str, Any]) -> None:
        ms = data.get("ms")
        self.blocks.add((agent, str(data.get("kind") or "session")))
        if type(ms) is float or type(ms) is int:
            self.block_seconds.observe(ms / 1000)

    def ended_session(self, agent: str, state: str, reason: str | None, cpu_s: float | None) -> None:
        self.ended.add((agent, state, reason or "none"))
        if cpu_s:
            self.cpu.add((agent,), cpu_s)
