"""Token classes and KV-cache pressure as one of the pool's hooks.

From each session's `llm.call` events it keeps (in `session.capacity`):
- its cumulative tokens (input, which counts the cached ones, plus output) and so its class; a change of
  class writes a `session.classified` event {class, previous, tokens};
- its current context, the last call's input plus output tokens, and with a model architecture its KV
  estimate: context x bytes per token. Never the cumulative tokens: a chat re-sends its history each
  turn, so the sum counts the same tokens again and again while the cache holds them once.

The worker's mix counts its live sessions by their current class, each once. With `kv_warn_gb`, the
worker's KV estimate crossing it logs a warning and writes a `capacity.warning` event once; falling
below 90% of it clears it (logged, and the event again with `state: clear`). Nothing repeats per call.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from openrtc.capacity.arch import ModelArch
from openrtc.capacity.classes import DEFAULT, Classes
from openrtc.runtime.hooks import Hook
from openrtc.runtime.session import Session
from openrtc.runtime.view import PoolView

log = logging.getLogger("openrtc.capacity")

CLEAR_BELOW = 0.9
"""A KV warning clears once the estimate falls below this fraction of its threshold."""


@dataclass(frozen=True)
class CapacityConfig:
    """How sessions are classed and their KV cache estimated."""

    classes: Classes = DEFAULT
    """Class names and inclusive upper bounds of cumulative tokens."""
    arch: ModelArch | None = None
    """The served model's architecture; None: no KV estimate."""
    kv_dtype: str = "bf16"
    """The KV cache's type: bf16, fp16, fp8, int8 or int4."""
    kv_warn_gb: float | None = None
    """Warn when the worker's KV estimate reaches this many GB (10^9 bytes); None: never."""


class SessionCapacity:
    """One session's tokens, class and KV estimate (`session.capacity`)."""

    __slots__ = ("context", "kv_bytes", "token_class", "tokens")

    def __init__(self, token_class: str) -> None:
        self.tokens = 0
        """Cumulative input plus output tokens of its calls with known counts."""
        self.token_class = token_class
        """Its class by `tokens`."""
        self.context = 0
        """The last call's input plus output tokens: what the KV cache holds for it now."""
        self.kv_bytes: float | None = None
        """`context` x the model's KV bytes per token; None without an architecture."""


class CapacityHook(Hook):
    """See the module."""

    def __init__(self, config: CapacityConfig | None = None) -> None:
        self.config = config or CapacityConfig()
        self.per_token = (
            self.config.arch.kv_bytes_per_token(self.config.kv_dtype) if self.config.arch else None
        )
        """KV bytes per token of the configured model, or None."""
        self.mix: Counter[str] = Counter()
        """Live sessions by their current class."""
        self.kv_bytes = 0.0
        """The live sessions' KV estimates, summed."""
        self.warning = False
        """Whether the KV warning stands (crossed, not yet cleared)."""
        self._view: PoolView | None = None

    @property
    def name(self) -> str:
        return "capacity"

    def started(self, pool: PoolView) -> None:
        self._view = pool

    def session_started(self, session: Session) -> None:
        state = SessionCapacity(self.config.classes.names[0])
        if self.per_token is not None:
            state.kv_bytes = 0.0
        session.capacity = state
        self.mix[state.token_class] += 1

    def session_event(self, session: Session | None, kind: str, data: dict[str, Any]) -> None:
        if kind != "llm.call" or session is None:
            return
        state = session.capacity
        if not isinstance(state, SessionCapacity):
            return
        tokens_in, tokens_out = data.get("input_tokens"), data.get("output_tokens")
        if type(tokens_in) is not int or type(tokens_out) is not int:
            return  # a stream without usage: its tokens are unknown, not 0
        state.tokens += tokens_in + tokens_out
        state.context = tokens_in + tokens_out
        if self.per_token is not None:
            kv = state.context * self.per_token
            self.kv_bytes += kv - (state.kv_bytes or 0.0)
            state.kv_bytes = kv
            self._check_kv()
        new = self.config.classes.of(state.tokens)
        if new != state.token_class:
            previous, state.token_class = state.token_class, new
            self.mix[previous] -= 1
            self.mix[new] += 1
            session.emit("session.classified", {"class": new, "previous": previous, "tokens": state.tokens})

    def session_finished(self, session: Session) -> None:
        state = session.capacity
        if not isinstance(state, SessionCapacity):
            return
        self.mix[state.token_class] -= 1
        if state.kv_bytes:
            self.kv_bytes = max(0.0, self.kv_bytes - state.kv_bytes)
            self._check_kv()

    def _check_kv(self) -> None:
        limit_gb = self.config.kv_warn_gb
        if limit_gb is None:
            return
        limit = limit_gb * 1e9
        if not self.warning and self.kv_bytes >= limit:
            self.warning = True
            log.warning(
                "KV cache estimate %.2f GB reached the %.2f GB warning (%d live sessions)",
                self.kv_bytes / 1e9,
                limit_gb,
                sum(self.mix.values()),
            )
            self._event("over", limit)
        elif self.warning and self.kv_bytes < limit * CLEAR_BELOW:
            self.warning = False
            log.info(
                "KV cache estimate %.2f GB is back under %.2f GB", self.kv_bytes / 1e9, limit_gb * CLEAR_BELOW
            )
            self._event("clear", limit)

    def _event(self, state: str, limit: float) -> None:
        if self._view is not None:
            self._view.emit(
                "capacity.warning",
                {"state": state, "kv_bytes": round(self.kv_bytes), "threshold_bytes": limit},
            )
