"""`session.usage`: what a session records of its LLM calls and its tools, from any of its tasks.

    session.usage.record("gpt-4o-mini", provider="openai", input_tokens=1200, output_tokens=80,
                         cache_read_tokens=1024, latency_ms=640)
    session.usage.record_response(completion)           # an OpenAI or Anthropic response, object or dict
    async with session.usage.tool("lookup_order"):      # or `with`: timed, ok or failed
        ...

Each record is checked (an inconsistent one raises `UsageError` and records nothing), priced
(`pricing`), and sent as an event (`llm.call`, `tool.call`) to the pool's hooks: the usage hook sums it
into the session's totals and writes it to the event log. In a session's own process (process
isolation) the event goes to the worker first. Recording costs the loop a few microseconds; nothing
here does I/O.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from openrtc.runtime.session import Session
from openrtc.usage.calls import (
    LLMCall,
    Tokens,
    UsageError,
    check_cost,
    check_latency,
    check_tokens,
    tool_event,
)
from openrtc.usage.pricing import Pricing
from openrtc.usage.shapes import parse_response
from openrtc.usage.totals import Totals

__all__ = ["SessionUsage", "UsageError"]


class SessionUsage:
    """The recording API of one session (`session.usage`)."""

    __slots__ = ("_clock", "_pricing", "_session", "next_seq", "record_content", "totals")

    def __init__(
        self,
        session: Session,
        pricing: Pricing,
        record_content: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._pricing = pricing
        self.record_content = record_content
        """Whether prompts and outputs passed as `content` are kept (off unless the worker turns it on)."""
        self._clock = clock
        self.totals = Totals()
        """What the session recorded so far (summed by the usage hook from the events, in the worker)."""
        self.next_seq = 0
        """The `seq` of the session's next event in the log (kept by the usage hook)."""

    def record(
        self,
        model: str,
        *,
        provider: str | None = None,
        input_tokens: int | None,
        output_tokens: int | None,
        cache_read_tokens: int = 0,
        cache_write_tokens: int = 0,
        reasoning_tokens: int = 0,
        cost_usd: float | None = None,
        latency_ms: float | None = None,
        finish_reason: str | None = None,
        content: dict[str, Any] | None = None,
        **attributes: Any,
    ) -> LLMCall:
        """Record one LLM call. `input_tokens` counts the cache reads and writes too, `output_tokens` the
        reasoning (OpenTelemetry's way); None for a count the provider did not report. `cost_usd` is the
        provider's own figure, when it gives one; else the price is looked up (see `pricing`)."""
        if not isinstance(model, str) or not model:
            raise UsageError(f"model must be a non-empty string, got {model!r}")
        tokens = check_tokens(
            input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, reasoning_tokens
        )
        return self._record(
            model,
            provider,
            tokens,
            check_cost(cost_usd),
            check_latency(latency_ms),
            finish_reason,
            content,
            attributes,
        )

    def _record(
        self,
        model: str,
        provider: str | None,
        tokens: Tokens,
        reported: float | None,
        latency: float | None,
        finish_reason: str | None,
        content: dict[str, Any] | None,
        attributes: dict[str, Any] | None,
    ) -> LLMCall:
        """Price, then send a checked call."""
        cost, source = self._pricing.cost(provider, model, tokens, reported, self._clock())
        call = LLMCall(
            model,
            provider,
            tokens,
            cost,
            source,
            latency,
            finish_reason,
            attributes,
            content if self.record_content else None,
        )
        self._session.emit("llm.call", call.event_data())
        return call

    def record_response(
        self,
        response: Any,
        *,
        provider: str | None = None,
        model: str | None = None,
        latency_ms: float | None = None,
        finish_reason: str | None = None,
        content: dict[str, Any] | None = None,
        **attributes: Any,
    ) -> LLMCall:
        """Record the call behind an SDK response: OpenAI Chat Completions (or its last streamed chunk,
        with `stream_options={"include_usage": True}`), OpenAI Responses, Anthropic Messages; the objects
        or their dict forms (`shapes`)."""
        parsed = parse_response(response)  # its tokens are checked there
        name = parsed.model or model
        if not isinstance(name, str) or not name:
            raise UsageError("the response names no model: pass model=...")
        return self._record(
            name,
            provider or parsed.provider,
            parsed.tokens,
            check_cost(parsed.reported_cost_usd),
            check_latency(latency_ms),
            parsed.finish_reason or finish_reason,
            content,
            attributes,
        )

    def tool(self, name: str) -> ToolTimer:
        """Time one tool call (`with` or `async with`): ok, or failed with the exception's type."""
        if not isinstance(name, str) or not name:
            raise UsageError(f"a tool's name must be a non-empty string, got {name!r}")
        return ToolTimer(self._session, name)


class ToolTimer:
    """A sync and async context manager around one tool call."""

    __slots__ = ("_name", "_session", "_started")

    def __init__(self, session: Session, name: str) -> None:
        self._session = session
        self._name = name
        self._started = 0.0

    def __enter__(self) -> ToolTimer:
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        elapsed = (time.perf_counter() - self._started) * 1000
        self._session.emit("tool.call", tool_event(self._name, elapsed, error))

    async def __aenter__(self) -> ToolTimer:
        return self.__enter__()

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, error, tb)


_child_pricing: dict[str | None, Pricing] = {}


def attach_in_child(session: Session, pricing_file: str | None = None, record_content: bool = False) -> None:
    """The usage hook's part in a session's own process (`Hook.child_setup`): the same API, priced from
    the same sources, its events sent to the worker."""
    from openrtc.usage.pricing import PricingFile

    pricing = _child_pricing.get(pricing_file)
    if pricing is None:
        pricing = _child_pricing[pricing_file] = Pricing(
            PricingFile.load(pricing_file) if pricing_file else None
        )
    session.usage = SessionUsage(session, pricing, record_content)
