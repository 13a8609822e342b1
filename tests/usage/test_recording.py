"""`session.usage`: records checked before anything is kept, tools timed, any task of the session,
process isolation, prices from each source in order, and the totals a session ends with."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from pathlib import Path

import pytest

from openrtc import AgentPool, Session, UsageConfig, UsageError
from openrtc.errors import ConfigError
from openrtc.usage.calls import Tokens, check_tokens
from openrtc.usage.pricing import Price, Pricing, PricingFile
from tests.usage.conftest import calls, read_log, run_session

NOON = datetime.datetime(2026, 6, 1, 12, tzinfo=datetime.UTC).timestamp()


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        ((100, 10, 80, 30, 0), "cache_read_tokens (80) + cache_write_tokens (30) exceed input_tokens (100)"),
        ((100, 10, 0, 0, 11), "reasoning_tokens (11) exceed output_tokens (10)"),
        ((-1, 10, 0, 0, 0), "input_tokens must not be negative, got -1"),
        ((1.5, 10, 0, 0, 0), "input_tokens must be a whole number of tokens, got 1.5"),
        ((10, "7", 0, 0, 0), "output_tokens must be a whole number of tokens, got '7'"),
        ((10, 7, None, 0, 0), "cache_read_tokens must be a whole number of tokens, got None"),
    ],
)
def test_inconsistent_counts_are_refused_with_what_is_wrong(counts: tuple[object, ...], message: str) -> None:
    with pytest.raises(UsageError) as caught:
        check_tokens(*counts)
    assert message in str(caught.value)


def test_a_refused_record_records_nothing(tmp_path: Path) -> None:
    errors: list[str] = []

    async def agent(session: Session) -> None:
        for bad in (
            {"input_tokens": 100, "output_tokens": 5, "cache_read_tokens": 101},
            {"input_tokens": 100, "output_tokens": 5, "cost_usd": -0.01},
            {"input_tokens": 100, "output_tokens": 5, "latency_ms": float("nan")},
        ):
            try:
                session.usage.record("gpt-4o-mini", **bad)  # type: ignore[arg-type]
            except UsageError as exc:
                errors.append(str(exc))
        with pytest.raises(UsageError, match="no usage in this response"):
            session.usage.record_response({"id": "x", "choices": []})

    events = run_session(agent, tmp_path / "log")
    assert len(errors) == 3
    assert [e.type for e in events] == ["session.start", "session.end"]
    assert events[-1].data["totals"]["models"] == {}


def test_tools_are_timed_ok_or_failed_with_the_exception_type(tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        with session.usage.tool("lookup_order"):
            time.sleep(0.002)
        async with session.usage.tool("lookup_order"):
            await asyncio.sleep(0.002)
        with pytest.raises(TimeoutError):
            async with session.usage.tool("charge_card"):
                raise TimeoutError

    events = run_session(agent, tmp_path / "log")
    tools = [e.data for e in events if e.type == "tool.call"]
    assert [(t["tool"], t["ok"], t["error"]) for t in tools] == [
        ("lookup_order", True, None),
        ("lookup_order", True, None),
        ("charge_card", False, "TimeoutError"),
    ]
    assert all(t["duration_ms"] >= 2 for t in tools[:2])
    end = events[-1].data
    assert end["totals"]["tools"]["lookup_order"]["ok"] == 2
    assert end["totals"]["tools"]["charge_card"] == {
        "ok": 0,
        "failed": 1,
        "seconds": pytest.approx(0, abs=0.1),
    }


def test_any_task_of_the_session_records_into_it_in_order(tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        async def helper(n: int) -> None:
            session.usage.record("gpt-4o-mini", provider="openai", input_tokens=10 * n, output_tokens=n)

        await asyncio.gather(*(asyncio.create_task(helper(n)) for n in range(1, 6)))

    events = run_session(agent, tmp_path / "log")
    assert [e.seq for e in events] == list(range(len(events)))  # no gaps, in the order written
    assert sorted(c["input_tokens"] for c in calls(events)) == [10, 20, 30, 40, 50]
    end = events[-1].data
    assert end["totals"]["models"]["openai/gpt-4o-mini"]["input_tokens"] == 150


def test_the_session_end_carries_its_summary(tmp_path: Path) -> None:
    async def agent(session: Session) -> None:
        session.usage.record(
            "gpt-4o-mini", provider="openai", input_tokens=1000, output_tokens=100, latency_ms=250
        )
        session.usage.record(
            "claude-haiku-4-5",
            provider="anthropic",
            input_tokens=2000,
            output_tokens=100,
            cache_read_tokens=1500,
            cost_usd=0.25,
            latency_ms=750,
        )
        raise RuntimeError("boom")

    events = run_session(agent, tmp_path / "log", metadata={"caller": "x"})
    start, end = events[0], events[-1]
    assert start.type == "session.start" and start.data["agent"] == "agent" and start.data["tenant"] == "acme"
    assert start.data["metadata"] == {"caller": "x"}
    assert end.type == "session.end"
    d = end.data
    assert (d["state"], d["error"]) == ("failed", "RuntimeError: boom")
    assert d["llm_s"] == 1.0 and d["wall_s"] > 0
    # 1000 x 0.15 + 100 x 0.60 per million, plus the 0.25 the provider reported
    assert d["cost_usd"] == 0.25 + 0.00021 and d["unknown_cost_calls"] == 0
    assert d["totals"]["models"]["anthropic/claude-haiku-4-5"]["cache_read_tokens"] == 1500


async def child_agent(session: Session) -> None:
    """Runs in a process of its own (process isolation)."""
    session.usage.record(
        "gpt-4o-mini",
        provider="openai",
        input_tokens=2000,
        output_tokens=300,
        cache_read_tokens=1536,
        pid_differs=os.getpid() != session.metadata["worker_pid"],
    )
    with contextlib.suppress(LookupError), session.usage.tool("search"):
        raise LookupError


def test_records_of_a_session_in_its_own_process_reach_the_worker(tmp_path: Path) -> None:
    log_dir = tmp_path / "log"

    async def main() -> None:
        config = UsageConfig(log_dir=log_dir)
        async with AgentPool(enable_introspection=False, isolation="process", usage=config) as pool:
            pool.add("child", child_agent)
            handle = await pool.start_session("child", metadata={"worker_pid": os.getpid()})
            await handle
            totals = pool.usage.totals
            assert totals.calls == 1 and totals.input_tokens == 2000 and totals.cost_usd == 0.0003648

    asyncio.run(main())
    events = read_log(log_dir)
    kinds = [e.type for e in events if e.session_id is not None]
    assert kinds == ["session.start", "llm.call", "tool.call", "session.end"]
    call = calls(events)[0]
    assert call["cost_source"] == "genai_prices" and call["attributes"] == {"pid_differs": True}
    end = events[-1].data
    assert end["cpu_s"] is not None and end["totals"]["tools"]["search"]["failed"] == 1


# -- pricing ----------------------------------------------------------------------------------------


def write_prices(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.toml"
    path.write_text(text)
    return path


def test_prices_come_from_the_provider_then_the_file_then_genai_prices(tmp_path: Path) -> None:
    file = PricingFile.load(
        write_prices(
            tmp_path,
            '[models."gpt-4o-mini"]\ninput = 1.0\noutput = 2.0\ncache_read = 0.5\n'
            '[models."acme/house-model"]\ninput = 3\noutput = 4\n',
        )
    )
    pricing = Pricing(file)
    tokens = Tokens(1000, 100, cache_read=400)
    assert pricing.cost("openai", "gpt-4o-mini", tokens, 0.5, NOON) == (0.5, "reported")
    # the file: 600 x 1.0 + 400 x 0.5 + 100 x 2.0 per million; cache_write defaults to the input price
    assert pricing.cost("openai", "gpt-4o-mini", tokens, None, NOON) == (0.001, "pricing_file")
    assert pricing.cost("acme", "house-model", Tokens(1000, 100), None, NOON) == (0.0034, "pricing_file")
    assert pricing.cost("openai", "gpt-4o", Tokens(1000, 100), None, NOON) == (0.0035, "genai_prices")
    assert pricing.cost("openai", "gpt-4o-mini", Tokens(None, None), None, NOON) == (None, "unknown")


def test_an_unknown_price_is_null_and_logged_once_per_model(caplog: pytest.LogCaptureFixture) -> None:
    pricing = Pricing()
    with caplog.at_level(logging.WARNING, logger="openrtc.usage"):
        for _ in range(3):
            assert pricing.cost("acme", "house-model", Tokens(10, 1), None, NOON) == (None, "unknown")
    assert [r.getMessage() for r in caplog.records] == [
        "no price known for model 'house-model' of acme: its cost stays unknown (add it to a --pricing file)"
    ]


def test_genai_prices_rates_are_those_of_the_day_of_the_call() -> None:
    """The per-token shortcut must agree with genai-prices itself, call by call."""
    from genai_prices import Usage, calc_price

    pricing = Pricing()
    for provider, model in (("openai", "gpt-4o-mini"), ("anthropic", "claude-haiku-4-5"), (None, "gpt-4.1")):
        tokens = Tokens(12_345, 678, cache_read=2_048, cache_write=1_000 if provider == "anthropic" else 0)
        cost, source = pricing.cost(provider, model, tokens, None, NOON)
        when = datetime.datetime.fromtimestamp(NOON, datetime.UTC)
        usage = Usage(
            input_tokens=tokens.input,
            output_tokens=tokens.output,
            cache_read_tokens=tokens.cache_read,
            cache_write_tokens=tokens.cache_write or None,
        )
        truth = float(
            calc_price(usage, model, provider_id=provider, genai_request_timestamp=when).total_price
        )
        assert source == "genai_prices" and cost == pytest.approx(truth, rel=1e-12), model


def test_a_tiered_price_is_asked_of_genai_prices_every_call() -> None:
    pricing = Pricing()
    small, _ = pricing.cost("anthropic", "claude-sonnet-4-5", Tokens(100_000, 0), None, NOON)
    large, _ = pricing.cost("anthropic", "claude-sonnet-4-5", Tokens(300_000, 0), None, NOON)
    assert small is not None and large is not None
    assert large / 300_000 > small / 100_000  # past 200k tokens of context, each token costs more


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not toml [", "pricing file"),
        ("[other]\nx = 1\n", 'no [models."NAME"] table'),
        ('[models."m"]\noutput = 1\n', "lacks input (US dollars per million tokens)"),
        ('[models."m"]\ninput = -1\noutput = 1\n', "input must be a number >= 0"),
        ('[models."m"]\ninput = 1\noutput = 1\nprompt = 2\n', "unknown keys: prompt"),
    ],
)
def test_a_bad_pricing_file_is_refused_with_where(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="pricing file") as caught:
        PricingFile.load(write_prices(tmp_path, text))
    assert message in str(caught.value)


def test_a_price_costs_each_kind_of_token_at_its_rate() -> None:
    price = Price(input=1.0, output=4.0, cache_read=0.1, cache_write=1.25)
    # 1000 in: 500 plain, 300 read, 200 written; 50 out
    assert price.cost(Tokens(1000, 50, 300, 200)) == pytest.approx((500 + 30 + 250 + 200) / 1e6, abs=0)
    assert price.cost(Tokens(None, 50)) is None
