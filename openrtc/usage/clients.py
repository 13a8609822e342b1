"""`instrument(client)`: record every call an `openai.AsyncOpenAI` or `anthropic.AsyncAnthropic` client
makes from a session, streamed or not, with no other change to the agent's code.

    client = openrtc.usage.instrument(openai.AsyncOpenAI(base_url=..., api_key=...))

Only this client instance is touched (its `chat.completions.create`, `responses.create`,
`messages.create`, and Anthropic's `messages.stream()` helper): no library is patched globally, and
calls made outside any session pass through untouched. A streamed OpenAI chat call gets
`stream_options={"include_usage": True}` unless the caller set `stream_options` (or `stream_usage=False`
here): without it the API reports no usage, and the call is then recorded with its tokens unknown
(never zero). A stream is recorded when it ends or is closed.
A response of an unexpected shape is returned to the agent untouched and recorded with unknown tokens,
with a warning (once per client and shape). OpenAI's `.stream()` helpers are not wrapped: record
their final completion with `session.usage.record_response`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from openrtc.runtime.session import current_session
from openrtc.usage.calls import UsageError
from openrtc.usage.recorder import SessionUsage
from openrtc.usage.shapes import field_of

log = logging.getLogger("openrtc.usage")

_MARK = "_openrtc_instrumented"


def instrument(client: Any, *, stream_usage: bool = True) -> Any:
    """Instrument `client` in place (and return it); instrumenting twice changes nothing."""
    if getattr(client, _MARK, False):
        return client
    module = type(client).__module__
    if module.startswith("openai"):
        _wrap(client.chat.completions, "openai", "chat", stream_usage)
        if hasattr(client, "responses"):
            _wrap(client.responses, "openai", "responses", stream_usage)
    elif module.startswith("anthropic"):
        _wrap(client.messages, "anthropic", "messages", stream_usage)
        _wrap_stream_helper(client.messages)
    else:
        raise UsageError(
            f"cannot instrument {type(client).__qualname__}: openai.AsyncOpenAI and anthropic.AsyncAnthropic "
            "are supported (record other clients' calls with session.usage.record_response)"
        )
    setattr(client, _MARK, True)
    return client


def _wrap(resource: Any, provider: str, api: str, stream_usage: bool) -> None:
    original: Callable[..., Awaitable[Any]] = resource.create
    warned: set[str] = set()

    async def create(*args: Any, **kwargs: Any) -> Any:
        session = current_session.get()
        usage = getattr(session, "usage", None)
        if not isinstance(usage, SessionUsage):
            return await original(*args, **kwargs)
        streaming = bool(kwargs.get("stream"))
        if streaming and api == "chat" and stream_usage and "stream_options" not in kwargs:
            kwargs["stream_options"] = {"include_usage": True}
        started = time.perf_counter()
        result = await original(*args, **kwargs)
        asked_model = kwargs.get("model")
        prompt = kwargs.get("messages", kwargs.get("input"))
        if streaming:
            return _ObservedStream(result, usage, provider, api, asked_model, prompt, started, warned)
        content = {"input": prompt, "output": _output_text(api, result)} if usage.record_content else None
        _record(usage, result, provider, asked_model, (time.perf_counter() - started) * 1000, content, warned)
        return result

    resource.create = create


def _wrap_stream_helper(resource: Any) -> None:
    """Anthropic's `async with client.messages.stream(...) as stream:`: the call is recorded when the
    block ends, from the message the SDK assembled from the events (its usage merged as they came)."""
    original: Callable[..., Any] = resource.stream
    warned: set[str] = set()

    def stream(*args: Any, **kwargs: Any) -> Any:
        manager = original(*args, **kwargs)
        usage = getattr(current_session.get(), "usage", None)
        if not isinstance(usage, SessionUsage):
            return manager
        return _ObservedManager(manager, usage, kwargs.get("model"), kwargs.get("messages"), warned)

    resource.stream = stream


class _ObservedManager:
    def __init__(
        self, manager: Any, usage: SessionUsage, asked_model: Any, prompt: Any, warned: set[str]
    ) -> None:
        self._manager = manager
        self._usage = usage
        self._model = asked_model
        self._prompt = prompt
        self._warned = warned
        self._stream: Any = None
        self._started = 0.0

    async def __aenter__(self) -> Any:
        self._started = time.perf_counter()
        self._stream = await self._manager.__aenter__()
        return self._stream

    async def __aexit__(self, *exc_info: Any) -> Any:
        self._done()
        return await self._manager.__aexit__(*exc_info)

    def _done(self) -> None:
        latency = (time.perf_counter() - self._started) * 1000
        snapshot = getattr(self._stream, "_current_snapshot_or_none", lambda: None)()
        if snapshot is None:  # nothing came back: the tokens are unknown, not zero
            model = self._model if isinstance(self._model, str) else "unknown"
            self._usage.record(
                model, provider="anthropic", input_tokens=None, output_tokens=None, latency_ms=latency
            )
            return
        content = None
        if self._usage.record_content:
            content = {"input": self._prompt, "output": _output_text("messages", snapshot)}
        _record(self._usage, snapshot, "anthropic", self._model, latency, content, self._warned)


def _record(
    usage: SessionUsage,
    response: Any,
    provider: str,
    asked_model: Any,
    latency_ms: float,
    content: dict[str, Any] | None,
    warned: set[str],
    finish_reason: str | None = None,
) -> None:
    model = asked_model if isinstance(asked_model, str) else None
    try:
        usage.record_response(
            response,
            provider=provider,
            model=model,
            latency_ms=latency_ms,
            finish_reason=finish_reason,
            content=content,
        )
    except UsageError as exc:
        shape = type(response).__name__
        if shape not in warned:
            warned.add(shape)
            log.warning(
                "could not read the usage of a %s response (%s); its tokens are recorded as unknown",
                shape,
                exc,
            )
        name = field_of(response, "model") or model or "unknown"
        usage.record(
            str(name), provider=provider, input_tokens=None, output_tokens=None, latency_ms=latency_ms
        )


def _output_text(api: str, response: Any) -> str | None:
    if api == "chat":
        choices = field_of(response, "choices") or []
        text = field_of(field_of(choices[0], "message"), "content") if choices else None
    elif api == "responses":
        text = field_of(response, "output_text")
    else:
        text = "".join(str(field_of(b, "text") or "") for b in field_of(response, "content") or []) or None
    return str(text) if text is not None else None


class _ObservedStream:
    """Passes a streamed response through, noting what it says about usage; records the call once, when
    the stream ends or is closed."""

    def __init__(
        self,
        stream: Any,
        usage: SessionUsage,
        provider: str,
        api: str,
        asked_model: Any,
        prompt: Any,
        started: float,
        warned: set[str],
    ) -> None:
        self._stream = stream
        self._usage = usage
        self._provider = provider
        self._api = api
        self._model = asked_model if isinstance(asked_model, str) else None
        self._prompt = prompt
        self._started = started
        self._warned = warned
        self._final: Any = None
        """The chunk or event that carries the usage (OpenAI), or the message assembled (Anthropic)."""
        self._anthropic: dict[str, Any] = {"type": "message", "usage": {}}
        self._finish: Any = None
        self._text: list[str] = []
        self._recorded = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __aiter__(self) -> _ObservedStream:
        return self

    async def __anext__(self) -> Any:
        try:
            item = await self._stream.__anext__()
        except StopAsyncIteration:
            self._done()
            raise
        self._note(item)
        return item

    async def __aenter__(self) -> _ObservedStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._done()
        await self.close()

    async def close(self) -> None:
        self._done()
        closer = getattr(self._stream, "close", None)
        if closer is not None:
            await closer()

    def _note(self, item: Any) -> None:
        if self._api == "chat":
            self._model = field_of(item, "model") or self._model
            choices = field_of(item, "choices") or []
            if choices:
                self._finish = field_of(choices[0], "finish_reason") or self._finish
                delta = field_of(field_of(choices[0], "delta"), "content")
                if delta:
                    self._text.append(str(delta))
            if field_of(item, "usage") is not None:
                self._final = item
        elif self._api == "responses":
            kind = field_of(item, "type")
            if kind == "response.output_text.delta":
                self._text.append(str(field_of(item, "delta") or ""))
            elif kind in ("response.completed", "response.incomplete"):
                self._final = item
        else:
            self._note_anthropic(item)

    def _note_anthropic(self, event: Any) -> None:
        kind = field_of(event, "type")
        merged = self._anthropic
        if kind == "message_start":
            message = field_of(event, "message")
            merged["model"] = field_of(message, "model")
            for key in (
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ):
                value = field_of(field_of(message, "usage"), key)
                if value is not None:
                    merged["usage"][key] = value
        elif kind == "message_delta":
            usage = field_of(event, "usage")
            for key in (
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
            ):
                value = field_of(usage, key)
                if value is not None:  # cumulative: the latest wins
                    merged["usage"][key] = value
            merged["stop_reason"] = field_of(field_of(event, "delta"), "stop_reason") or merged.get(
                "stop_reason"
            )
        elif kind == "content_block_delta":
            text = field_of(field_of(event, "delta"), "text")
            if text:
                self._text.append(str(text))
        elif kind == "message_stop" and "input_tokens" in merged["usage"]:
            self._final = merged

    def _done(self) -> None:
        if self._recorded:
            return
        self._recorded = True
        latency = (time.perf_counter() - self._started) * 1000
        content = (
            {"input": self._prompt, "output": "".join(self._text)} if self._usage.record_content else None
        )
        final = self._final
        if final is None:  # the stream reported no usage: the tokens are unknown, not zero
            self._usage.record(
                self._model or "unknown",
                provider=self._provider,
                input_tokens=None,
                output_tokens=None,
                latency_ms=latency,
                finish_reason=self._finish,
                content=content,
            )
            return
        finish = str(self._finish) if self._finish is not None else None
        _record(self._usage, final, self._provider, self._model, latency, content, self._warned, finish)
