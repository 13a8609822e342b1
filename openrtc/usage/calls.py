"""What one LLM call and one tool call are, checked, as they go into the event log. Pure.

Token counts follow OpenTelemetry's GenAI conventions: `input_tokens` includes the cache reads and
the cache writes, `output_tokens` includes the reasoning. A count may be unknown (`None`: a stream that
reported no usage), never guessed; an inconsistent record is refused with `UsageError`, and nothing of
it is recorded.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from openrtc.errors import OpenRTCError

COST_SOURCES = ("reported", "pricing_file", "genai_prices", "unknown")


class UsageError(OpenRTCError, ValueError):
    """Raised when a usage record is inconsistent (negative counts, cache parts above the input) or a
    response has a shape openrtc does not know; nothing is recorded."""


class Tokens(NamedTuple):
    """The token counts of one LLM call. (Named tuples, this and `LLMCall`, not frozen dataclasses:
    made on the loop for every call, they cost a third as much.)"""

    input: int | None
    """Input tokens, cache reads and writes included; None when unknown."""
    output: int | None
    """Output tokens, reasoning included; None when unknown."""
    cache_read: int = 0
    """Input tokens read from the provider's prompt cache."""
    cache_write: int = 0
    """Input tokens written to the provider's prompt cache."""
    reasoning: int = 0
    """Output tokens spent on reasoning (thinking)."""

    @property
    def known(self) -> bool:
        return self.input is not None and self.output is not None


def _count(name: str, value: Any, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise UsageError(f"{name} must be a whole number of tokens, got {value!r}")
    if value < 0:
        raise UsageError(f"{name} must not be negative, got {value}")
    return int(value)


def check_tokens(
    input_tokens: Any,
    output_tokens: Any,
    cache_read_tokens: Any = 0,
    cache_write_tokens: Any = 0,
    reasoning_tokens: Any = 0,
) -> Tokens:
    """The counts as `Tokens`, or `UsageError` saying what is wrong with them."""
    if (  # the common case, on the loop for every call: five ints that add up
        type(input_tokens) is int
        and type(output_tokens) is int
        and type(cache_read_tokens) is int
        and type(cache_write_tokens) is int
        and type(reasoning_tokens) is int
        and cache_read_tokens >= 0
        and cache_write_tokens >= 0
        and cache_read_tokens + cache_write_tokens <= input_tokens
        and 0 <= reasoning_tokens <= output_tokens
    ):
        return Tokens(input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens)
    tokens = Tokens(
        _count("input_tokens", input_tokens, True),
        _count("output_tokens", output_tokens, True),
        _count("cache_read_tokens", cache_read_tokens, False) or 0,
        _count("cache_write_tokens", cache_write_tokens, False) or 0,
        _count("reasoning_tokens", reasoning_tokens, False) or 0,
    )
    if tokens.input is not None and tokens.cache_read + tokens.cache_write > tokens.input:
        raise UsageError(
            f"cache_read_tokens ({tokens.cache_read}) + cache_write_tokens ({tokens.cache_write}) exceed "
            f"input_tokens ({tokens.input}); input_tokens counts the cached tokens too (OpenTelemetry's "
            "convention: for Anthropic, add cache_read_input_tokens and cache_creation_input_tokens to it)"
        )
    if tokens.output is not None and tokens.reasoning > tokens.output:
        raise UsageError(
            f"reasoning_tokens ({tokens.reasoning}) exceed output_tokens ({tokens.output}); output_tokens "
            "counts the reasoning too"
        )
    return tokens


def check_cost(cost_usd: Any) -> float | None:
    if cost_usd is None:
        return None
    if isinstance(cost_usd, bool) or not isinstance(cost_usd, int | float) or not math.isfinite(cost_usd):
        raise UsageError(f"cost_usd must be a number of US dollars or None, got {cost_usd!r}")
    if cost_usd < 0:
        raise UsageError(f"cost_usd must not be negative, got {cost_usd}")
    return float(cost_usd)


def check_latency(latency_ms: Any) -> float | None:
    if latency_ms is None:
        return None
    if isinstance(latency_ms, bool) or not isinstance(latency_ms, int | float) or not latency_ms >= 0:
        raise UsageError(f"latency_ms must be a number of milliseconds >= 0 or None, got {latency_ms!r}")
    return float(latency_ms)


class LLMCall(NamedTuple):
    """One LLM call, as recorded."""

    model: str
    """The model the provider says it used (the response's model), else the one asked for."""
    provider: str | None
    """`openai`, `anthropic`, ...; None when not known."""
    tokens: Tokens
    """Its token counts."""
    cost_usd: float | None
    """What it cost in US dollars; None when no source knows the price (never a guess, never 0)."""
    cost_source: str
    """`reported` (by the provider or the caller), `pricing_file`, `genai_prices` or `unknown`."""
    latency_ms: float | None = None
    """How long the call took, when measured."""
    finish_reason: str | None = None
    """Why the model stopped (`stop`, `length`, `tool_calls`, `end_turn`...), when reported."""
    attributes: dict[str, Any] | None = None
    """The caller's extra attributes."""
    content: dict[str, Any] | None = None
    """Prompt and output text: kept only when content recording is on."""

    def event_data(self) -> dict[str, Any]:
        """The `llm.call` event's data."""
        t = self.tokens
        data: dict[str, Any] = {
            "model": self.model,
            "provider": self.provider,
            "input_tokens": t.input,
            "output_tokens": t.output,
            "cache_read_tokens": t.cache_read,
            "cache_write_tokens": t.cache_write,
            "reasoning_tokens": t.reasoning,
            "cost_usd": self.cost_usd,
            "cost_source": self.cost_source,
            "latency_ms": self.latency_ms,
            "finish_reason": self.finish_reason,
        }
        if self.attributes:
            data["attributes"] = self.attributes
        if self.content is not None:
            data["content"] = self.content
        return data


def tool_event(name: str, duration_ms: float, error: BaseException | None) -> dict[str, Any]:
    """The `tool.call` event's data: ok, or failed with the exception's type."""
    return {
        "tool": name,
        "duration_ms": round(duration_ms, 3),
        "ok": error is None,
        "error": type(error).__name__ if error is not None else None,
    }
