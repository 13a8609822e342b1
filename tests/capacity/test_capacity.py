"""Token classes, KV bytes per token, the capacity hook's events and warnings, and the planner: each
against figures computed by hand."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, Session, UsageConfig
from openrtc.capacity import CapacityConfig, CapacityHook, Classes
from openrtc.capacity.arch import MODELS, load
from openrtc.capacity.plan import parse_mix, plan
from openrtc.errors import ConfigError
from tests.cli.worker import run_cli
from tests.usage.conftest import read_log


def test_class_bounds_are_inclusive_and_configurable() -> None:
    default = Classes.parse("light=50000,medium=200000,heavy=500000")
    assert [default.of(n) for n in (0, 50_000, 50_001, 200_000, 500_000, 500_001)] == [
        "light",
        "light",
        "medium",
        "medium",
        "heavy",
        "extreme",
    ]
    own = Classes.parse("small=10,big")
    assert own.names == ("small", "big") and own.of(10) == "small" and own.of(11) == "big"
    for bad in ("light=10,medium=5", "light=x", "light=10,light=20", "", "light=-1"):
        with pytest.raises(ConfigError, match="--classes"):
            Classes.parse(bad)


def test_kv_bytes_per_token_by_hand() -> None:
    # Grouped-query: Llama 3.1 8B, 32 layers x 8 KV heads x 128 dims, key and value, bf16.
    assert MODELS["llama-3.1-8b"].kv_bytes_per_token("bf16") == 2 * 32 * 8 * 128 * 2 == 131_072
    assert MODELS["llama-3.1-70b"].kv_bytes_per_token("fp8") == 2 * 80 * 8 * 128 * 1 == 163_840
    # Multi-head: Phi-3 mini keeps all 32 heads of 96 dims.
    assert MODELS["phi-3-mini"].kv_bytes_per_token("fp16") == 2 * 32 * 32 * 96 * 2 == 393_216
    # Multi-head latent attention: DeepSeek-V3, 61 layers x (512 latent + 64 rotary), bf16.
    assert MODELS["deepseek-v3"].kv_bytes_per_token("bf16") == 61 * (512 + 64) * 2 == 70_272
    assert MODELS["llama-3.1-8b"].kv_bytes_per_token("int4") == 32_768
    with pytest.raises(ConfigError, match="unknown dtype 'fp4'"):
        MODELS["llama-3.1-8b"].kv_bytes_per_token("fp4")


def test_an_architecture_from_a_config_json(tmp_path: Path) -> None:
    gqa = tmp_path / "config.json"  # no head_dim: hidden_size / num_attention_heads = 4096 / 32
    gqa.write_text(
        json.dumps(
            {
                "num_hidden_layers": 32,
                "hidden_size": 4096,
                "num_attention_heads": 32,
                "num_key_value_heads": 8,
            }
        )
    )
    assert load(str(gqa)).kv_bytes_per_token("bf16") == 131_072
    mla = tmp_path / "mla.json"
    mla.write_text(json.dumps({"num_hidden_layers": 27, "kv_lora_rank": 512, "qk_rope_head_dim": 64}))
    assert load(str(mla)).kv_bytes_per_token("bf16") == 27 * 576 * 2
    mha = tmp_path / "mha.json"  # no num_key_value_heads: every head has its own
    mha.write_text(json.dumps({"num_hidden_layers": 2, "num_attention_heads": 4, "head_dim": 64}))
    assert load(str(mha)).kv_bytes_per_token("fp8") == 2 * 2 * 4 * 64
    (tmp_path / "bad.json").write_text("{")
    for spec, message in (
        (tmp_path / "bad.json", "cannot read it as JSON"),
        (tmp_path / "nope", "unknown model"),
    ):
        with pytest.raises(ConfigError, match=message):
            load(str(spec))
    (tmp_path / "odd.json").write_text(
        json.dumps({"num_hidden_layers": 2, "num_attention_heads": 3, "hidden_size": 100})
    )
    with pytest.raises(ConfigError, match="not a multiple"):
        load(str(tmp_path / "odd.json"))


def test_the_planner_by_hand() -> None:
    # Llama 3.1 8B on one H100 (80 GB), bf16 weights and KV, light sessions at 4,000 tokens:
    # free = 80 GB x 0.9 - 8.03e9 x 2 = 55.94 GB; a session 4,000 x 131,072 = 524,288,000 B;
    # 55.94e9 / 524,288,000 = 106.7 -> 106, under the 256 sequences.
    one = plan(MODELS["llama-3.1-8b"], "h100-sxm", 1, "bf16", "bf16", parse_mix("light=1"))
    assert one.free_kv_bytes == pytest.approx(55.94e9)
    assert (one.sessions, one.binding, one.by_class) == (106, "kv_cache", {"light": 106})
    # Llama 3.1 70B on four H100s, fp8 weights and KV, three light to one heavy (32,000 tokens):
    # free = 320e9 x 0.9 - 70.6e9 = 217.4e9; KV 163,840 B a token; the mix averages 11,000 tokens,
    # 1.80224e9 B a session; 217.4e9 / 1.80224e9 = 120.6 -> 120 (90 light, 30 heavy).
    four = plan(MODELS["llama-3.1-70b"], "h100-sxm", 4, "fp8", "fp8", parse_mix("light=3,heavy=1"))
    assert (four.sessions, four.by_class, four.binding) == (120, {"light": 90, "heavy": 30}, "kv_cache")
    # The same on eight H200s: more room than the engine's 256 sequences.
    wide = plan(MODELS["llama-3.1-70b"], "h200", 8, "fp8", "fp8", parse_mix("light=1"))
    assert (wide.sessions, wide.binding) == (256, "max_seqs")
    # 405B in bf16 (812 GB) does not fit on one H100 at all.
    none = plan(MODELS["llama-3.1-405b"], "h100-sxm", 1, "bf16", "bf16", parse_mix("light=1"))
    assert (none.sessions, none.binding) == (0, "weights")
    with pytest.raises(ConfigError, match="--mix"):
        parse_mix("light=-1")
    with pytest.raises(ConfigError, match="unknown GPU"):
        plan(MODELS["llama-3.1-8b"], "tpu", 1, "bf16", "bf16", {"light": 1})


def caller(turns: list[tuple[int, int]]) -> Any:
    """An agent whose calls carry the context a chat would: the history grows each turn."""

    async def agent(session: Session) -> None:
        for tokens_in, tokens_out in turns:
            session.usage.record("m", provider="p", input_tokens=tokens_in, output_tokens=tokens_out)
            await asyncio.sleep(0)
        await session.draining.wait()

    return agent


async def run_pool(
    hook: CapacityHook, log_dir: Path, turns: dict[str, list[tuple[int, int]]]
) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with AgentPool(
        enable_introspection=False, usage=UsageConfig(log_dir=log_dir), hooks=[hook]
    ) as pool:
        for name, calls in turns.items():
            pool.add(name, caller(calls))
        handles = [await pool.start_session(name) for name in turns]
        for _ in range(50):
            await asyncio.sleep(0)
        seen["mix"] = {k: v for k, v in hook.mix.items() if v}
        seen["kv"] = hook.kv_bytes
        seen["classes"] = {h.session.agent: h.session.capacity.token_class for h in handles}
        seen["contexts"] = {h.session.agent: h.session.capacity.context for h in handles}
    seen["mix_after"] = {k: v for k, v in hook.mix.items() if v}
    seen["kv_after"] = hook.kv_bytes
    return seen


def test_classes_and_kv_from_the_current_context(run_loop: Any, tmp_path: Path) -> None:
    hook = CapacityHook(
        CapacityConfig(Classes.parse("light=1000,medium=5000"), MODELS["llama-3.1-8b"], "bf16")
    )
    turns = {
        "chat": [(400, 100), (900, 100), (1400, 100), (1900, 100)],  # 5,000 cumulative, context 2,000
        "quiet": [(300, 50)],
        "big": [(6000, 10)],
    }
    seen = run_loop(run_pool(hook, tmp_path / "log", turns))
    assert seen["classes"] == {"chat": "medium", "quiet": "light", "big": "extreme"}
    assert seen["mix"] == {"medium": 1, "light": 1, "extreme": 1}  # each session once
    assert seen["contexts"] == {"chat": 2000, "quiet": 350, "big": 6010}
    assert seen["kv"] == (2000 + 350 + 6010) * 131_072  # the cumulative sums would give 5,000 for chat
    assert seen["mix_after"] == {} and seen["kv_after"] == 0
    events = read_log(tmp_path / "log")
    classified = [(e.session_id, e.data) for e in events if e.type == "session.classified"]
    chat = next(e.session_id for e in events if e.type == "session.start" and e.data["agent"] == "chat")
    assert [d for sid, d in classified if sid == chat] == [
        {"class": "medium", "previous": "light", "tokens": 1500}
    ]
    assert len(classified) == 2  # chat once, big once; quiet never left light


def test_a_kv_warning_is_written_once_and_cleared_below_90_percent(
    run_loop: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 1 GB threshold at 131,072 B a token: 7,630 tokens reach it, under 6,866 clear it.
    hook = CapacityHook(CapacityConfig(arch=MODELS["llama-3.1-8b"], kv_warn_gb=1.0))
    oscillating = [(7700, 0), (7600, 0), (7700, 0), (7650, 0), (6800, 0), (7700, 0), (100, 0)]
    with caplog.at_level(logging.INFO, logger="openrtc.capacity"):
        run_loop(run_pool(hook, tmp_path / "log", {"osc": oscillating}))
    events = [e.data["state"] for e in read_log(tmp_path / "log") if e.type == "capacity.warning"]
    assert events == ["over", "clear", "over", "clear"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name == "openrtc.capacity"]
    assert len(warnings) == 2 and "reached the 1.00 GB warning" in warnings[0].getMessage()


def test_capacity_plan_from_the_command_line(tmp_path: Path, run_loop: Any) -> None:
    args = ("capacity", "plan", "--model", "llama-3.1-70b", "--gpu", "h100-sxm", "--gpus", "4")
    out = run_cli(*args, "--weights", "fp8", "--kv", "fp8", "--mix", "light=3,heavy=1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(
        "120 concurrent sessions fit (90 light, 30 heavy); bound by the KV cache memory."
    )
    assert "KV free      217.4 GB" in out.stdout and "32,000 tokens of context -> 5.243 GB" in out.stdout
    doc = json.loads(run_cli(*args, "--weights", "fp8", "--kv", "fp8", "--json").stdout)
    # Light sessions alone: 217.4 GB / 655 MB = 331 would fit, more than the engine's 256 sequences.
    assert (doc["sessions"], doc["binding"], doc["observed"]) == (256, "max_seqs", False)
    bad = run_cli("capacity", "plan", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--mix", "light")
    assert bad.returncode == 2 and "usage: openrtc capacity plan" in bad.stderr and "--mix" in bad.stderr
    # The mix observed in an event log: two light sessions to one medium (60,000 tokens) = 2:1.
    log_dir = tmp_path / "log"
    hook = CapacityHook()
    run_loop(run_pool(hook, log_dir, {"a": [(1000, 10)], "b": [(2000, 10)], "c": [(59_000, 1000)]}))
    observed = json.loads(
        run_cli(*args[:6], "--gpus", "1", "--mix", "observed", "--log-dir", str(log_dir), "--json").stdout
    )
    assert observed["observed"] and observed["assumptions"]["mix"] == pytest.approx(
        {"light": 2 / 3, "medium": 1 / 3}
    )
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    nothing = run_cli(*args, "--mix", "observed", "--log-dir", str(empty))
    assert nothing.returncode == 1 and "no session in" in nothing.stderr
