"""Pool settings as one frozen value, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from openrtc.errors import ConfigError
from openrtc.runtime.admission import Limits
from openrtc.runtime.memory import MemoryThresholds

ISOLATIONS = ("coroutine", "process")
"""`coroutine`: sessions are tasks on the worker's loop. `process`: one child process per session."""


@dataclass(frozen=True)
class PoolConfig:
    """What the runtime's pool is told at construction (its plug-ins have their own settings)."""

    isolation: str = "coroutine"
    """How sessions are isolated: `coroutine` (tasks on one loop) or `process` (a child each)."""
    limits: Limits = Limits()
    """Caps on concurrent sessions."""
    memory: MemoryThresholds = MemoryThresholds()
    """RSS thresholds: the worker's in coroutine mode, each session's process in process mode."""
    drain_timeout_s: float = 30.0
    """How long a drain waits for sessions to finish before cancelling them."""

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATIONS:
            raise ConfigError(f"isolation must be one of {', '.join(ISOLATIONS)}, got {self.isolation!r}")
        positive("drain_timeout_s", self.drain_timeout_s, allow_zero=True)
        for name in ("max_sessions", "max_sessions_per_agent", "max_sessions_per_tenant"):
            value = getattr(self.limits, name)
            if value is not None:
                if not isinstance(value, int) or isinstance(value, bool):
                    raise ConfigError(f"{name} must be an integer, got {value!r}")
                positive(name, value)
        for name, mb in (("memory_warn_mb", self.memory.warn_mb), ("memory_limit_mb", self.memory.limit_mb)):
            if mb is not None:
                positive(name, mb)


def positive(name: str, value: float, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
