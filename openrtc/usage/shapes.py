"""The usage in the official SDKs' responses, objects or their plain-dict forms. Pure.

Getting these wrong is the most common cost bug in the field: cache tokens counted twice, or not at
all. Each provider counts its own way; openrtc records OpenTelemetry's way (`calls`):

- OpenAI Chat Completions (and a streamed chunk that carries usage): input = `prompt_tokens` (already
  includes the cached ones), cache read = `prompt_tokens_details.cached_tokens`, cache write =
  `prompt_tokens_details.cache_write_tokens`, output = `completion_tokens`, reasoning =
  `completion_tokens_details.reasoning_tokens`.
- OpenAI Responses (and its `response.completed` event): input = `input_tokens` (includes the cached),
  cache read = `input_tokens_details.cached_tokens`, cache write = `input_tokens_details.cache_write_tokens`,
  output = `output_tokens`, reasoning = `output_tokens_details.reasoning_tokens`.
- Anthropic Messages: input = `input_tokens` + `cache_read_input_tokens` + `cache_creation_input_tokens`
  (its `input_tokens` excludes both), cache read = `cache_read_input_tokens`, cache write =
  `cache_creation_input_tokens`, output = `output_tokens`, reasoning =
  `output_tokens_details.thinking_tokens`.

A provider that reports the call's cost (`usage.cost`, as OpenRouter does) is taken at its word.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from openrtc.usage.calls import Tokens, UsageError, check_tokens


class Parsed(NamedTuple):
    """What a response says about its call."""

    model: str | None
    provider: str | None
    tokens: Tokens
    finish_reason: str | None
    reported_cost_usd: float | None


def field_of(obj: Any, name: str) -> Any:
    """`obj[name]` for a mapping, `obj.name` for an object; None when absent."""
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(name)
    fields = getattr(obj, "__dict__", None)
    if fields is not None:
        if name in fields:
            return fields[name]
        # The SDKs' pydantic models keep unknown fields (a provider's `cost`) apart; asking one for
        # a field it lacks raises inside pydantic, which costs microseconds: look there instead.
        extra = getattr(obj, "__pydantic_extra__", None)
        if isinstance(extra, dict):
            return extra.get(name)
    return getattr(obj, name, None)


def _provider_of(obj: Any, default: str) -> str:
    module = type(obj).__module__
    if module.startswith("anthropic"):
        return "anthropic"
    if module.startswith("openai"):
        return "openai"
    return default


def _reported_cost(usage: Any) -> float | None:
    cost = field_of(usage, "cost")
    return float(cost) if isinstance(cost, int | float) and not isinstance(cost, bool) and cost >= 0 else None


def parse_response(obj: Any) -> Parsed:
    """The usage of one SDK response; `UsageError` when it has none or an unknown shape."""
    if type(obj) is dict:  # the common dict, a chat completion, read directly: this runs on the loop
        usage = obj.get("usage")
        if type(usage) is dict and "prompt_tokens" in usage and "type" not in obj and "cost" not in usage:
            prompt = usage.get("prompt_tokens_details") or {}
            completion = usage.get("completion_tokens_details") or {}
            if type(prompt) is dict and type(completion) is dict:
                choices = obj.get("choices")
                first = choices[0] if type(choices) is list and choices else None
                return Parsed(
                    obj.get("model"),
                    "openai",
                    check_tokens(
                        usage["prompt_tokens"],
                        usage.get("completion_tokens"),
                        prompt.get("cached_tokens") or 0,
                        prompt.get("cache_write_tokens") or 0,
                        completion.get("reasoning_tokens") or 0,
                    ),
                    first.get("finish_reason") if type(first) is dict else None,
                    None,
                )
    kind = field_of(obj, "type")
    if kind == "response.completed" or (kind == "response.done" and field_of(obj, "response") is not None):
        return parse_response(field_of(obj, "response"))  # the Responses API's last streamed event
    usage = field_of(obj, "usage")
    if usage is None:
        what = type(obj).__name__ if not isinstance(obj, dict) else f"a dict with keys {sorted(obj)[:8]}"
        hint = ""
        if field_of(obj, "object") == "chat.completion.chunk":
            hint = (
                " (a streamed chunk carries usage only in the last one, with "
                "stream_options={'include_usage': True})"
            )
        raise UsageError(f"no usage in this response ({what}){hint}")
    if field_of(usage, "prompt_tokens") is not None or field_of(usage, "completion_tokens") is not None:
        return _openai_chat(obj, usage)
    if field_of(usage, "input_tokens") is not None:
        is_anthropic = (
            kind == "message"
            or _provider_of(obj, "") == "anthropic"
            or field_of(usage, "cache_read_input_tokens") is not None
            or field_of(usage, "cache_creation_input_tokens") is not None
        )
        return _anthropic(obj, usage) if is_anthropic else _openai_responses(obj, usage)
    raise UsageError(f"usage of an unknown shape: {usage!r:.200}")


def _openai_chat(obj: Any, usage: Any) -> Parsed:
    prompt = field_of(usage, "prompt_tokens_details")
    completion = field_of(usage, "completion_tokens_details")
    tokens = check_tokens(
        field_of(usage, "prompt_tokens"),
        field_of(usage, "completion_tokens"),
        field_of(prompt, "cached_tokens") or 0,
        field_of(prompt, "cache_write_tokens") or 0,
        field_of(completion, "reasoning_tokens") or 0,
    )
    choices = field_of(obj, "choices") or []
    finish = field_of(choices[0], "finish_reason") if choices else None
    return Parsed(field_of(obj, "model"), _provider_of(obj, "openai"), tokens, finish, _reported_cost(usage))


def _openai_responses(obj: Any, usage: Any) -> Parsed:
    details_in = field_of(usage, "input_tokens_details")
    details_out = field_of(usage, "output_tokens_details")
    tokens = check_tokens(
        field_of(usage, "input_tokens"),
        field_of(usage, "output_tokens"),
        field_of(details_in, "cached_tokens") or 0,
        field_of(details_in, "cache_write_tokens") or 0,
        field_of(details_out, "reasoning_tokens") or 0,
    )
    status = field_of(obj, "status")
    incomplete = field_of(field_of(obj, "incomplete_details"), "reason")
    return Parsed(
        field_of(obj, "model"),
        _provider_of(obj, "openai"),
        tokens,
        incomplete or status,
        _reported_cost(usage),
    )


def _anthropic(obj: Any, usage: Any) -> Parsed:
    cache_read = field_of(usage, "cache_read_input_tokens") or 0
    cache_write = field_of(usage, "cache_creation_input_tokens") or 0
    uncached = field_of(usage, "input_tokens")
    total_in = None
    if isinstance(uncached, int) and isinstance(cache_read, int) and isinstance(cache_write, int):
        total_in = uncached + cache_read + cache_write
    elif uncached is not None:
        total_in = uncached  # let the check say what is wrong with it
    details = field_of(usage, "output_tokens_details")
    tokens = check_tokens(
        total_in,
        field_of(usage, "output_tokens"),
        cache_read,
        cache_write,
        field_of(details, "thinking_tokens") or 0,
    )
    return Parsed(
        field_of(obj, "model"), "anthropic", tokens, field_of(obj, "stop_reason"), _reported_cost(usage)
    )
