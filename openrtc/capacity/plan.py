"""The capacity planner: how many concurrent sessions of a workload mix fit on a set of GPUs. Pure.

    HBM            = GPU memory (as marketed, 10^9 bytes) x GPUs
    free for KV    = HBM x (1 - reserve) - weights           reserve: activations, CUDA graphs, the
                                                              runtime (default 10%, vLLM's
                                                              gpu_memory_utilization=0.9)
    weights        = parameters x weight dtype bytes
    KV per session = its class's representative context (tokens) x KV bytes per token
    sessions       = free for KV / the mix's average KV per session, at most `max_seqs`

The answer says which resource binds: the KV cache, the engine's sequence limit, or the weights (they
do not fit at all). Tensor parallelism is assumed to split both weights and KV evenly across the set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from openrtc.capacity.arch import ModelArch, dtype_bytes
from openrtc.errors import ConfigError

GPUS_GB = {
    "h100-sxm": 80,
    "h100-pcie": 80,
    "h100-nvl": 94,
    "h200": 141,
    "b200": 180,
    "a100-80g": 80,
    "a100-40g": 40,
    "l40s": 48,
    "l4": 24,
    "a10g": 24,
}
"""Memory per GPU, GB as marketed."""

CONTEXTS = {"light": 4_000, "medium": 16_000, "heavy": 32_000, "extreme": 128_000}
"""The representative current context of a session of each class, tokens (override with --context)."""
RESERVE = 0.10
MAX_SEQS = 256
"""The engine's concurrent sequence limit (vLLM's default max_num_seqs)."""


@dataclass(frozen=True)
class Plan:
    """The planner's answer, with what it assumed."""

    sessions: int
    """Concurrent sessions of the mix that fit."""
    by_class: dict[str, int]
    """Those sessions split by the mix's proportions (rounded down)."""
    binding: str
    """`kv_cache`, `max_seqs` or `weights` (the weights alone do not fit)."""
    hbm_bytes: float
    weights_bytes: float
    reserve_bytes: float
    free_kv_bytes: float
    kv_bytes_per_token: float
    kv_bytes_per_session: dict[str, float]
    """KV bytes of one session of each class in the mix, at its representative context."""
    assumptions: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "by_class": self.by_class,
            "binding": self.binding,
            "hbm_bytes": self.hbm_bytes,
            "weights_bytes": self.weights_bytes,
            "reserve_bytes": self.reserve_bytes,
            "free_kv_bytes": self.free_kv_bytes,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "kv_bytes_per_session": self.kv_bytes_per_session,
            "assumptions": self.assumptions,
        }


def parse_mix(text: str) -> dict[str, float]:
    """`light=5,heavy=1` -> proportions."""
    mix: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, eq, weight = part.partition("=")
        try:
            value = float(weight) if eq else math.nan
        except ValueError:
            value = math.nan
        if not name.strip() or not value >= 0 or math.isinf(value):
            raise ConfigError(f"--mix: {part!r} is not CLASS=WEIGHT (a number >= 0)")
        mix[name.strip()] = value
    if not mix or sum(mix.values()) <= 0:
        raise ConfigError("--mix: expected CLASS=WEIGHT,..., with some weight above 0, e.g. light=5,heavy=1")
    return mix


def plan(
    arch: ModelArch,
    gpu: str,
    gpus: int,
    weights: str,
    kv: str,
    mix: dict[str, float],
    contexts: dict[str, int] | None = None,
    reserve: float = RESERVE,
    max_seqs: int = MAX_SEQS,
    params_b: float | None = None,
) -> Plan:
    if gpu not in GPUS_GB:
        raise ConfigError(f"unknown GPU {gpu!r}: expected one of {', '.join(GPUS_GB)}")
    if gpus < 1:
        raise ConfigError(f"--gpus must be at least 1, got {gpus}")
    if not 0 <= reserve < 1:
        raise ConfigError(f"--reserve must be a fraction in [0, 1), got {reserve}")
    params = params_b if params_b is not None else arch.params_b
    if params is None:
        raise ConfigError(f"{arch.name}: its parameter count is not known: pass --params-b")
    contexts = {**CONTEXTS, **(contexts or {})}
    unknown = [c for c in mix if c not in contexts]
    if unknown:
        raise ConfigError(
            f"--mix: no representative context for {', '.join(unknown)}: pass --context CLASS=TOKENS"
        )
    hbm = GPUS_GB[gpu] * 1e9 * gpus
    weights_bytes = params * 1e9 * dtype_bytes(weights)
    reserve_bytes = hbm * reserve
    free = hbm - reserve_bytes - weights_bytes
    per_token = arch.kv_bytes_per_token(kv)
    total_weight = sum(mix.values())
    share = {c: w / total_weight for c, w in mix.items() if w > 0}
    per_session = {c: contexts[c] * per_token for c in share}
    average = sum(share[c] * per_session[c] for c in share)
    if free <= 0:
        sessions, binding = 0, "weights"
    else:
        fit = math.floor(free / average)
        sessions, binding = (fit, "kv_cache") if fit <= max_seqs else (max_seqs, "max_seqs")
    assumptions = {
        "model": arch.name,
        "params_b": params,
        "gpu": gpu,
        "gpu_gb": GPUS_GB[gpu],
        "gpus": gpus,
        "weights_dtype": weights,
        "kv_dtype": kv,
        "reserve": reserve,
        "max_seqs": max_seqs,
        "contexts": {c: contexts[c] for c in share},
        "mix": share,
    }
    return Plan(
        sessions=sessions,
        by_class={c: math.floor(sessions * share[c]) for c in share},
        binding=binding,
        hbm_bytes=hbm,
        weights_bytes=weights_bytes,
        reserve_bytes=reserve_bytes,
        free_kv_bytes=max(0.0, free),
        kv_bytes_per_token=per_token,
        kv_bytes_per_session=per_session,
        assumptions=assumptions,
    )
