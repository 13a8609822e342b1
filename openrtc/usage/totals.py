"""A session's usage totals, summed from its events: calls and tokens per model, cost with how many calls
had no known price, tools ok and failed, blocks. Pure; the live worker and `openrtc stats` sum the
same way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COST_DIGITS = 12
"""Sums of costs are rounded to a millionth of a millionth of a dollar: float noise (0.0113786999...)
goes, and the cheapest token (about $1e-8) still shows."""


def usd(cost: float) -> str:
    """A known cost as people read it: `$12.50`, `$0.0123`, `$0.000364`; a cost too small for six
    decimals is `<$0.000001`, not `$0`."""
    if cost >= 10:
        return f"${cost:,.2f}"
    if cost >= 0.01 or cost == 0:
        return f"${cost:.4f}"
    if cost < 0.000001:
        return "<$0.000001"
    return f"${cost:.6f}"


def model_key(provider: str | None, model: str) -> str:
    """How totals name a model: `provider/model`, or the model alone when the provider is unknown."""
    return f"{provider}/{model}" if provider else model


@dataclass
class ModelTotals:
    """The calls of one model."""

    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0
    """The sum of the known costs."""
    unknown_cost_calls: int = 0
    """Calls with no known price: `cost_usd` leaves them out."""
    unknown_token_calls: int = 0
    """Calls whose token counts were not reported (a stream without usage)."""
    llm_s: float = 0.0
    """Time spent in the calls that measured it."""

    def add(self, data: dict[str, Any]) -> None:
        """One `llm.call` event's data. On the loop for every call, and over logs that may hold
        anything: exact type tests (a count that is not an int is not counted), no conversions."""
        self.calls += 1
        get = data.get
        tokens_in, tokens_out = get("input_tokens"), get("output_tokens")
        if type(tokens_in) is int and type(tokens_out) is int:
            self.input_tokens += tokens_in
            self.output_tokens += tokens_out
            read, write = get("cache_read_tokens"), get("cache_write_tokens")
            reasoning = get("reasoning_tokens")
            if type(read) is int:
                self.cache_read_tokens += read
            if type(write) is int:
                self.cache_write_tokens += write
            if type(reasoning) is int:
                self.reasoning_tokens += reasoning
        else:
            self.unknown_token_calls += 1
        cost = get("cost_usd")
        if type(cost) is float or type(cost) is int:
            self.cost_usd += cost
        else:
            self.unknown_cost_calls += 1
        latency = get("latency_ms")
        if type(latency) is float or type(latency) is int:
            self.llm_s += latency / 1000

    def merge(self, other: ModelTotals) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def as_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        # null when no call had a known price: a sum of nothing known is not $0
        known = self.unknown_cost_calls < self.calls
        out["cost_usd"] = round(self.cost_usd, COST_DIGITS) if known else None
        out["llm_s"] = round(self.llm_s, 6)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelTotals:
        return cls(**{k: data.get(k, 0) or 0 for k in cls.__dataclass_fields__})


@dataclass(slots=True)
class ToolTotals:
    """The calls of one tool."""

    ok: int = 0
    failed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "failed": self.failed, "seconds": round(self.seconds, 6)}


@dataclass(slots=True)
class Totals:
    """One session's (or a group's) usage."""

    models: dict[str, ModelTotals] = field(default_factory=dict)
    tools: dict[str, ToolTotals] = field(default_factory=dict)
    blocks: int = 0
    block_ms: float = 0.0

    def add_event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "llm.call":
            key = model_key(data.get("provider"), str(data.get("model")))
            model = self.models.get(key)
            if model is None:
                model = self.models[key] = ModelTotals()
            model.add(data)
        elif kind == "tool.call":
            tool = self.tools.setdefault(str(data.get("tool")), ToolTotals())
            if data.get("ok"):
                tool.ok += 1
            else:
                tool.failed += 1
            tool.seconds += float(data.get("duration_ms") or 0) / 1000
        elif kind == "block":
            self.blocks += 1
            self.block_ms += float(data.get("ms") or 0)

    # -- sums ------------------------------------------------------------------------------------

    def _sum(self, name: str) -> Any:
        # list() first: the snapshot reads a live session's totals from the server thread while the
        # loop may add a model to them; a copy in one C call cannot see the dict change size.
        return sum(getattr(m, name) for m in list(self.models.values()))

    @property
    def calls(self) -> int:
        return int(self._sum("calls"))

    @property
    def input_tokens(self) -> int:
        return int(self._sum("input_tokens"))

    @property
    def output_tokens(self) -> int:
        return int(self._sum("output_tokens"))

    @property
    def cache_read_tokens(self) -> int:
        return int(self._sum("cache_read_tokens"))

    @property
    def cache_write_tokens(self) -> int:
        return int(self._sum("cache_write_tokens"))

    @property
    def reasoning_tokens(self) -> int:
        return int(self._sum("reasoning_tokens"))

    @property
    def unknown_cost_calls(self) -> int:
        return int(self._sum("unknown_cost_calls"))

    @property
    def cost_usd(self) -> float | None:
        """The sum of the known costs; None when every call's cost is unknown (or there was none)."""
        if not self.models or self.unknown_cost_calls == self.calls:
            return None
        return round(float(self._sum("cost_usd")), COST_DIGITS)

    @property
    def llm_s(self) -> float:
        return float(self._sum("llm_s"))

    @property
    def tool_s(self) -> float:
        return float(sum(t.seconds for t in list(self.tools.values())))

    @property
    def cache_hit_rate(self) -> float | None:
        """`cache_read_tokens / input_tokens`, None without input."""
        return self.cache_read_tokens / self.input_tokens if self.input_tokens else None

    def as_dict(self) -> dict[str, Any]:
        """The `totals` of a `session.end` event."""
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "models": {k: m.as_dict() for k, m in sorted(self.models.items())},
            "tools": {k: t.as_dict() for k, t in sorted(self.tools.items())},
            "blocks": self.blocks,
            "block_ms": round(self.block_ms, 3),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Totals:
        totals = cls()
        for key, model in (data.get("models") or {}).items():
            if isinstance(model, dict):
                totals.models[str(key)] = ModelTotals.from_dict(model)
        for key, tool in (data.get("tools") or {}).items():
            if isinstance(tool, dict):
                totals.tools[str(key)] = ToolTotals(
                    int(tool.get("ok") or 0), int(tool.get("failed") or 0), float(tool.get("seconds") or 0)
                )
        totals.blocks = int(data.get("blocks") or 0)
        totals.block_ms = float(data.get("block_ms") or 0)
        return totals

    def merge(self, other: Totals) -> None:
        # Copies first: `other` may be a live session's, which the loop adds to while this reads.
        for key, model in list(other.models.items()):
            self.models.setdefault(key, ModelTotals()).merge(model)
        for key, tool in list(other.tools.items()):
            mine = self.tools.setdefault(key, ToolTotals())
            mine.ok, mine.failed, mine.seconds = (
                mine.ok + tool.ok,
                mine.failed + tool.failed,
                mine.seconds + tool.seconds,
            )
        self.blocks += other.blocks
        self.block_ms += other.block_ms
