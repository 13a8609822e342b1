"""The one place that reads `OPENRTC_*` environment variables: each is the twin of a CLI flag."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrtc.errors import ConfigError


@dataclass(frozen=True)
class EnvTwin:
    """A flag's environment twin."""

    dest: str
    """argparse destination it sets the default of."""
    var: str
    """Environment variable name."""
    parse: Callable[[str], Any]
    """Turns the text into the flag's value; raises ValueError on bad text."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected 1/0, true/false, yes/no or on/off, got {text!r}")


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {text!r}")
        return text

    return parse


class BadValue(argparse.ArgumentTypeError, ValueError):
    """A flag or variable value that does not parse: argparse shows its message as it is."""


def _number(text: str, kind: type[float] | type[int]) -> float:
    try:
        return kind(text)
    except ValueError:
        raise BadValue(f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}") from None


def positive_int(text: str) -> int:
    value = int(_number(text, int))
    if value <= 0:
        raise BadValue(f"must be > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(_number(text, int))
    if value < 0:
        raise BadValue(f"must be >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float)
    if not value > 0:
        raise BadValue(f"must be > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = _number(text, float)
    if not value >= 0:
        raise BadValue(f"must be >= 0, got {text}")
    return value


def port(text: str) -> int:
    value = int(_number(text, int))
    if not 0 <= value <= 65535:
        raise BadValue(f"must be a TCP port, 0-65535 (0: any free one), got {text}")
    return value


def _path(text: str) -> Path:
    if not text.strip():
        raise ValueError("expected a path, got an empty value")
    return Path(text)


WORKER_TWINS = (
    EnvTwin("isolation", "OPENRTC_ISOLATION", _choice("coroutine", "process")),
    EnvTwin("max_sessions", "OPENRTC_MAX_SESSIONS", positive_int),
    EnvTwin("max_sessions_per_agent", "OPENRTC_MAX_SESSIONS_PER_AGENT", positive_int),
    EnvTwin("max_sessions_per_tenant", "OPENRTC_MAX_SESSIONS_PER_TENANT", positive_int),
    EnvTwin("slow_threshold_ms", "OPENRTC_SLOW_THRESHOLD_MS", positive_float),
    EnvTwin("memory_warn_mb", "OPENRTC_MEMORY_WARN_MB", positive_float),
    EnvTwin("memory_limit_mb", "OPENRTC_MEMORY_LIMIT_MB", positive_float),
    EnvTwin("drain_timeout", "OPENRTC_DRAIN_TIMEOUT", non_negative_float),
    EnvTwin("no_introspection", "OPENRTC_NO_INTROSPECTION", _bool),
    EnvTwin("loop", "OPENRTC_LOOP", _choice("auto", "asyncio", "uvloop")),
    EnvTwin("socket", "OPENRTC_SOCKET", str),
    EnvTwin("log_level", "OPENRTC_LOG_LEVEL", _choice("debug", "info", "warning", "error")),
    EnvTwin("log_format", "OPENRTC_LOG_FORMAT", _choice("text", "json")),
    EnvTwin("log_dir", "OPENRTC_LOG_DIR", _path),
    EnvTwin("no_event_log", "OPENRTC_NO_EVENT_LOG", _bool),
    EnvTwin("log_retain", "OPENRTC_LOG_RETAIN", str),
    EnvTwin("pricing", "OPENRTC_PRICING", _path),
    EnvTwin("record_content", "OPENRTC_RECORD_CONTENT", _bool),
    EnvTwin("classes", "OPENRTC_CLASSES", str),
    EnvTwin("model_arch", "OPENRTC_MODEL_ARCH", str),
    EnvTwin("kv_dtype", "OPENRTC_KV_DTYPE", _choice("bf16", "fp16", "fp8", "int8", "int4")),
    EnvTwin("kv_warn_gb", "OPENRTC_KV_WARN_GB", positive_float),
    EnvTwin("metrics_port", "OPENRTC_METRICS_PORT", port),
    EnvTwin("metrics_addr", "OPENRTC_METRICS_ADDR", str),
    EnvTwin("nats", "OPENRTC_NATS_URL", str),
    EnvTwin("max_deliver", "OPENRTC_MAX_DELIVER", positive_int),
    EnvTwin("ack_wait", "OPENRTC_ACK_WAIT", positive_float),
)
STATS_TWINS = (EnvTwin("log_dir", "OPENRTC_LOG_DIR", _path),)


def env_defaults(twins: tuple[EnvTwin, ...], environ: Mapping[str, str]) -> dict[str, Any]:
    """Defaults taken from the environment; a bad value raises `ConfigError` naming the variable."""
    defaults: dict[str, Any] = {}
    for twin in twins:
        text = environ.get(twin.var)
        if text is None:
            continue
        try:
            defaults[twin.dest] = twin.parse(text)
        except ValueError as exc:
            raise ConfigError(f"{twin.var}={text!r}: {exc}") from None
    return defaults
