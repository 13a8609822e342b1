"""The real `openai` and `anthropic` SDKs against the simulated LLM (a local HTTP server), each response
shape streamed and not, recorded three ways: `record_response` with the SDK's object, with its dict
form, and `instrument(client)`. The tokens and the cost must match figures computed by hand.

The usage each call reports is dictated to the server (`x-openrtc-usage`), the same call in each
provider's own counting:

- OpenAI (Chat Completions, Responses): 2,000 input tokens of which 1,536 read from the cache, 300 output
  of which 100 reasoning. gpt-4o-mini at $0.15 / $0.075 (cached) / $0.60 per million:
  464 x 0.15 + 1,536 x 0.075 + 300 x 0.60 = 69.6 + 115.2 + 180 = 364.8 per million = $0.0003648.
- Anthropic: `input_tokens` 400 (it excludes the cache), 1,024 read from the cache, 576 written to it,
  300 output. claude-haiku-4-5 at $1 / $0.10 (read) / $1.25 (write) / $5 per million:
  400 + 102.4 + 720 + 1,500 = 2,722.4 per million = $0.0027224; 2,000 input tokens in all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest

from openrtc import Session
from openrtc.cli.llmsim import SimulatedLLM
from openrtc.usage import instrument
from tests.usage.conftest import calls, run_session

CHAT_USAGE = {
    "prompt_tokens": 2000,
    "completion_tokens": 300,
    "total_tokens": 2300,
    "prompt_tokens_details": {"cached_tokens": 1536},
    "completion_tokens_details": {"reasoning_tokens": 100},
}
RESPONSES_USAGE = {
    "input_tokens": 2000,
    "input_tokens_details": {"cached_tokens": 1536},
    "output_tokens": 300,
    "output_tokens_details": {"reasoning_tokens": 100},
    "total_tokens": 2300,
}
ANTHROPIC_USAGE = {
    "input_tokens": 400,
    "cache_read_input_tokens": 1024,
    "cache_creation_input_tokens": 576,
    "output_tokens": 300,
}
OPENAI_EXPECTED = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "input_tokens": 2000,
    "cache_read_tokens": 1536,
    "cache_write_tokens": 0,
    "output_tokens": 300,
    "reasoning_tokens": 100,
    "cost_usd": 0.0003648,
    "cost_source": "genai_prices",
}
ANTHROPIC_EXPECTED = {
    "provider": "anthropic",
    "model": "claude-haiku-4-5",
    "input_tokens": 2000,
    "cache_read_tokens": 1024,
    "cache_write_tokens": 576,
    "output_tokens": 300,
    "reasoning_tokens": 0,
    "cost_usd": 0.0027224,
    "cost_source": "genai_prices",
}
MESSAGES = [{"role": "user", "content": "where is my order?"}]


def headers(usage: dict[str, Any]) -> dict[str, str]:
    return {"x-openrtc-usage": json.dumps(usage), "x-openrtc-delay-ms": "0"}


def openai_client(llm: SimulatedLLM) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=llm.base_url, api_key="test", max_retries=0)


def anthropic_client(llm: SimulatedLLM) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=llm.root_url, api_key="test", max_retries=0)


def only(recorded: list[dict[str, Any]], expected: dict[str, Any]) -> None:
    assert len(recorded) == 1, recorded
    got = {k: recorded[0][k] for k in expected}
    assert got == expected


# -- OpenAI Chat Completions ------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["object", "dict"])
def test_chat_completion_recorded_from_the_response(llm: SimulatedLLM, tmp_path: Path, form: str) -> None:
    async def agent(session: Session) -> None:
        async with openai_client(llm) as client:
            done = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers(CHAT_USAGE)
            )
            assert isinstance(done, openai.types.chat.ChatCompletion)
            session.usage.record_response(done if form == "object" else done.model_dump())

    recorded = calls(run_session(agent, tmp_path / "log"))
    only(recorded, OPENAI_EXPECTED)
    assert recorded[0]["finish_reason"] == "stop"


def test_chat_completion_stream_recorded_from_its_last_chunk(llm: SimulatedLLM, tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        async with openai_client(llm) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini",
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
                extra_headers=headers(CHAT_USAGE),
            )
            async with stream:
                chunks = [chunk async for chunk in stream]
            assert chunks[-1].usage is not None and not chunks[-1].choices
            session.usage.record_response(chunks[-1])

    only(calls(run_session(agent, tmp_path / "log")), OPENAI_EXPECTED)


@pytest.mark.parametrize("stream", [False, True])
def test_instrumented_chat_completions(llm: SimulatedLLM, tmp_path: Path, stream: bool) -> None:
    async def agent(session: Session) -> None:
        async with instrument(openai_client(llm)) as client:
            reply = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=stream, extra_headers=headers(CHAT_USAGE)
            )
            if stream:  # instrument asked for the usage chunk (stream_options) on the caller's behalf
                async with reply:
                    text = [c.choices[0].delta.content async for c in reply if c.choices]
                assert "".join(t or "" for t in text)

    recorded = calls(run_session(agent, tmp_path / "log"))
    only(recorded, OPENAI_EXPECTED)
    assert recorded[0]["latency_ms"] > 0 and recorded[0]["finish_reason"] == "stop"


def test_a_stream_without_usage_is_recorded_with_tokens_unknown(llm: SimulatedLLM, tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        async with instrument(openai_client(llm), stream_usage=False) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_headers=headers(CHAT_USAGE)
            )
            async with stream:
                async for _ in stream:
                    pass

    events = run_session(agent, tmp_path / "log")
    only(
        calls(events),
        {
            "model": "gpt-4o-mini",
            "input_tokens": None,
            "output_tokens": None,
            "cost_usd": None,
            "cost_source": "unknown",
        },
    )
    end = events[-1].data
    assert end["cost_usd"] is None and end["unknown_cost_calls"] == 1
    assert end["totals"]["models"]["openai/gpt-4o-mini"]["unknown_token_calls"] == 1


# -- OpenAI Responses -------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["object", "dict"])
def test_responses_api_recorded_from_the_response(llm: SimulatedLLM, tmp_path: Path, form: str) -> None:
    async def agent(session: Session) -> None:
        async with openai_client(llm) as client:
            done = await client.responses.create(
                model="gpt-4o-mini", input="where is my order?", extra_headers=headers(RESPONSES_USAGE)
            )
            assert isinstance(done, openai.types.responses.Response) and done.output_text
            session.usage.record_response(done if form == "object" else done.model_dump())

    only(calls(run_session(agent, tmp_path / "log")), OPENAI_EXPECTED)


def test_responses_stream_recorded_from_its_completed_event(llm: SimulatedLLM, tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        async with openai_client(llm) as client:
            stream = await client.responses.create(
                model="gpt-4o-mini",
                input="where is my order?",
                stream=True,
                extra_headers=headers(RESPONSES_USAGE),
            )
            async with stream:
                events = [event async for event in stream]
            assert events[-1].type == "response.completed"
            session.usage.record_response(events[-1])

    only(calls(run_session(agent, tmp_path / "log")), OPENAI_EXPECTED)


@pytest.mark.parametrize("stream", [False, True])
def test_instrumented_responses_api(llm: SimulatedLLM, tmp_path: Path, stream: bool) -> None:
    async def agent(session: Session) -> None:
        async with instrument(openai_client(llm)) as client:
            reply = await client.responses.create(
                model="gpt-4o-mini",
                input="where is my order?",
                stream=stream,
                extra_headers=headers(RESPONSES_USAGE),
            )
            if stream:
                async with reply:
                    async for _ in reply:
                        pass

    only(calls(run_session(agent, tmp_path / "log")), OPENAI_EXPECTED)


# -- Anthropic Messages -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["object", "dict"])
def test_anthropic_message_recorded_from_the_response(llm: SimulatedLLM, tmp_path: Path, form: str) -> None:
    async def agent(session: Session) -> None:
        async with anthropic_client(llm) as client:
            done = await client.messages.create(
                model="claude-haiku-4-5",
                max_tokens=512,
                messages=MESSAGES,
                extra_headers=headers(ANTHROPIC_USAGE),
            )
            assert isinstance(done, anthropic.types.Message)
            session.usage.record_response(done if form == "object" else done.model_dump())

    recorded = calls(run_session(agent, tmp_path / "log"))
    only(recorded, ANTHROPIC_EXPECTED)
    assert recorded[0]["finish_reason"] == "end_turn"


def test_anthropic_stream_recorded_from_the_final_message(llm: SimulatedLLM, tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        async with anthropic_client(llm) as client:
            async with client.messages.stream(
                model="claude-haiku-4-5",
                max_tokens=512,
                messages=MESSAGES,
                extra_headers=headers(ANTHROPIC_USAGE),
            ) as stream:
                final = await stream.get_final_message()
            session.usage.record_response(final)

    only(calls(run_session(agent, tmp_path / "log")), ANTHROPIC_EXPECTED)


@pytest.mark.parametrize("how", ["create", "create-stream", "stream-helper"])
def test_instrumented_anthropic_messages(llm: SimulatedLLM, tmp_path: Path, how: str) -> None:
    async def agent(session: Session) -> None:
        async with instrument(anthropic_client(llm)) as client:
            args: dict[str, Any] = {
                "model": "claude-haiku-4-5",
                "max_tokens": 512,
                "messages": MESSAGES,
                "extra_headers": headers(ANTHROPIC_USAGE),
            }
            if how == "create":
                await client.messages.create(**args)
            elif how == "create-stream":
                stream = await client.messages.create(**args, stream=True)
                async with stream:
                    async for _ in stream:
                        pass
            else:
                async with client.messages.stream(**args) as helper:
                    async for _ in helper.text_stream:
                        pass

    recorded = calls(run_session(agent, tmp_path / "log"))
    only(recorded, ANTHROPIC_EXPECTED)
    assert recorded[0]["finish_reason"] == "end_turn"


# -- what is not known stays unknown ---------------------------------------------------------------


def test_an_unknown_model_costs_null_and_is_counted(llm: SimulatedLLM, tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        async with instrument(openai_client(llm)) as client:
            for model in ("acme-llm-7", "gpt-4o-mini"):
                await client.chat.completions.create(
                    model=model, messages=MESSAGES, extra_headers=headers(CHAT_USAGE)
                )

    events = run_session(agent, tmp_path / "log")
    unknown, known = calls(events)
    assert unknown["model"] == "acme-llm-7" and unknown["input_tokens"] == 2000
    assert unknown["cost_usd"] is None and unknown["cost_source"] == "unknown"
    assert known["cost_usd"] == 0.0003648
    end = events[-1]
    assert end.type == "session.end"
    # The known part is summed; how many calls it leaves out is said, not hidden.
    assert end.data["cost_usd"] == 0.0003648 and end.data["unknown_cost_calls"] == 1


def test_content_is_kept_only_when_recording_is_on(llm: SimulatedLLM, tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        async with instrument(openai_client(llm)) as client:
            await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers(CHAT_USAGE)
            )

    off = calls(run_session(agent, tmp_path / "off"))
    assert "content" not in off[0]
    assert "where is my order" not in "".join(p.read_text() for p in (tmp_path / "off").glob("*.jsonl"))
    on = calls(run_session(agent, tmp_path / "on", record_content=True))
    assert on[0]["content"]["input"] == MESSAGES and on[0]["content"]["output"]


def test_calls_outside_a_session_pass_through_unrecorded(llm: SimulatedLLM) -> None:
    import asyncio

    async def main() -> None:
        async with instrument(openai_client(llm)) as client:
            done = await client.chat.completions.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers(CHAT_USAGE)
            )
            assert done.usage is not None and done.usage.prompt_tokens == 2000

    asyncio.run(main())
