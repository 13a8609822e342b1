"""Usage and cost per session: `session.usage` records LLM calls and tools, a hook sums them and writes
the event log, `openrtc stats` reads it. See README, "Usage and cost"."""

from typing import TYPE_CHECKING, Any

from openrtc.usage.calls import UsageError

if TYPE_CHECKING:
    from openrtc.usage.clients import instrument

__all__ = ["UsageError", "instrument"]


def __getattr__(name: str) -> Any:
    # On first use: `openrtc stats` and `top` read usage without the runtime `instrument` brings.
    if name == "instrument":
        from openrtc.usage.clients import instrument

        return instrument
    raise AttributeError(f"module 'openrtc.usage' has no attribute {name!r}")
