"""A model's KV-cache bytes per token, from its architecture. Pure (but `load` reads a file).

    grouped-query (and multi-head) attention:  2 x layers x kv_heads x head_dim x dtype bytes
    multi-head latent attention (DeepSeek-V2/V3): layers x (kv_lora_rank + qk_rope_head_dim) x dtype bytes

The 2 is a key and a value per head; MLA caches one compressed latent and the rotary key part instead.
Sliding-window layers (Gemma 2's local ones) are counted as full attention: an upper bound. The table
holds the published configurations (`config.json` on Hugging Face) of common open models; any other
comes from its own `config.json` (`--model-arch PATH`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrtc.errors import ConfigError

DTYPE_BYTES = {"bf16": 2.0, "fp16": 2.0, "fp8": 1.0, "int8": 1.0, "int4": 0.5}
"""Bytes per value of each KV (or weight) type."""


@dataclass(frozen=True)
class ModelArch:
    """What the KV cache of a model costs per token."""

    name: str
    """The model, as named in the table or the config's file."""
    layers: int
    """`num_hidden_layers`."""
    kv_heads: int = 0
    """`num_key_value_heads` (grouped-query attention); the attention heads for multi-head."""
    head_dim: int = 0
    """`head_dim`, or `hidden_size / num_attention_heads`."""
    kv_lora_rank: int = 0
    """Multi-head latent attention's compressed KV width (0: not MLA)."""
    qk_rope_head_dim: int = 0
    """Multi-head latent attention's rotary key width."""
    params_b: float | None = None
    """Parameters in billions (all experts of a mixture), for the weights' memory; None when unknown."""

    def kv_bytes_per_token(self, dtype: str = "bf16") -> float:
        width = dtype_bytes(dtype)
        if self.kv_lora_rank:
            return self.layers * (self.kv_lora_rank + self.qk_rope_head_dim) * width
        return 2 * self.layers * self.kv_heads * self.head_dim * width


def dtype_bytes(dtype: str) -> float:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}: expected one of {', '.join(DTYPE_BYTES)}") from None


def _gqa(name: str, layers: int, kv_heads: int, head_dim: int, params_b: float) -> ModelArch:
    return ModelArch(name, layers, kv_heads, head_dim, params_b=params_b)


MODELS = {
    m.name: m
    for m in (
        _gqa("llama-3.1-8b", 32, 8, 128, 8.03),
        _gqa("llama-3.1-70b", 80, 8, 128, 70.6),
        _gqa("llama-3.1-405b", 126, 8, 128, 405.9),
        _gqa("llama-3.3-70b", 80, 8, 128, 70.6),
        _gqa("mistral-7b", 32, 8, 128, 7.25),
        _gqa("mixtral-8x7b", 32, 8, 128, 46.7),
        _gqa("mixtral-8x22b", 56, 8, 128, 140.6),
        _gqa("qwen2.5-7b", 28, 4, 128, 7.62),
        _gqa("qwen2.5-32b", 64, 8, 128, 32.8),
        _gqa("qwen2.5-72b", 80, 8, 128, 72.7),
        _gqa("gemma-2-9b", 42, 8, 256, 9.24),
        _gqa("gemma-2-27b", 46, 16, 128, 27.2),
        _gqa("phi-3-mini", 32, 32, 96, 3.82),  # multi-head: as many KV heads as query heads
        ModelArch("deepseek-v3", 61, kv_lora_rank=512, qk_rope_head_dim=64, params_b=671.0),
    )
}
"""Built-in architectures, by the name `--model` / `--model-arch` takes."""


def from_config(doc: dict[str, Any], name: str) -> ModelArch:
    """A Hugging Face `config.json`'s architecture."""

    def whole(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name}: {key} must be a positive whole number, got {value!r}")
        return value

    if "num_hidden_layers" not in doc:
        raise ConfigError(f"{name}: no num_hidden_layers (is it a model's config.json?)")
    layers = whole("num_hidden_layers", doc["num_hidden_layers"])
    if doc.get("kv_lora_rank"):
        return ModelArch(
            name,
            layers,
            kv_lora_rank=whole("kv_lora_rank", doc["kv_lora_rank"]),
            qk_rope_head_dim=whole("qk_rope_head_dim", doc.get("qk_rope_head_dim")),
        )
    heads = whole("num_attention_heads", doc.get("num_attention_heads"))
    kv_heads = whole("num_key_value_heads", doc.get("num_key_value_heads") or heads)
    head_dim = doc.get("head_dim")
    if head_dim is None:
        hidden = whole("hidden_size", doc.get("hidden_size"))
        if hidden % heads:
            raise ConfigError(
                f"{name}: hidden_size {hidden} is not a multiple of num_attention_heads {heads}"
            )
        head_dim = hidden // heads
    return ModelArch(name, layers, kv_heads, whole("head_dim", head_dim))


def load(spec: str) -> ModelArch:
    """A built-in model by name, or the `config.json` at a path."""
    if spec in MODELS:
        return MODELS[spec]
    path = Path(spec)
    if not path.exists():
        raise ConfigError(f"unknown model {spec!r}: not a file, nor one of {', '.join(sorted(MODELS))}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read it as JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a JSON object (a model's config.json)")
    return from_config(doc, str(path))
