"""OpenTelemetry export of a worker's LLM and tool calls (`OtelHook`; the `otel` extra)."""

from openrtc.otel.hook import OtelHook

__all__ = ["OtelHook"]
