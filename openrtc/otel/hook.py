"""OpenTelemetry export as one of the pool's hooks: a span per LLM call and per tool call, and the GenAI
client histograms, sent over OTLP/HTTP, so Langfuse, Phoenix, Grafana or Datadog receive openrtc's
sessions with no code of the user's.

Follows OpenTelemetry's GenAI semantic conventions: an LLM call's span is named `{operation} {model}`
(`chat gpt-4o-mini`), kind CLIENT, with `gen_ai.operation.name`, `gen_ai.provider.name`,
`gen_ai.request.model`, `gen_ai.usage.input_tokens` (cache reads and writes included),
`gen_ai.usage.output_tokens`, `gen_ai.usage.cache_read.input_tokens`,
`gen_ai.usage.cache_creation.input_tokens`, `gen_ai.response.finish_reasons` and
`gen_ai.conversation.id` (the session id); it ends when the call was recorded and starts `latency_ms`
before. A tool call is an `execute_tool {name}` span. The histograms `gen_ai.client.token.usage` (by
`gen_ai.token.type`, input or output) and `gen_ai.client.operation.duration` use the conventions'
bucket boundaries.

Where it goes is the SDK's to read from the environment (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_SERVICE_NAME`...). The providers are the hook's own, not the
process's global ones, so an application's own telemetry is left as it is. The loop thread only queues
each event; spans and measurements are made on the hook's thread, which the SDK's exporters follow
with their own. Needs the `otel` extra (`pip install 'openrtc[otel]'`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from openrtc.runtime.hooks import Hook
from openrtc.runtime.session import Session
from openrtc.runtime.view import PoolView

log = logging.getLogger("openrtc.otel")

TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
"""`gen_ai.client.token.usage`'s boundaries, from the GenAI metrics conventions."""
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""`gen_ai.client.operation.duration`'s boundaries, seconds."""
QUEUE_MAX = 100_000
"""Events waiting for the hook's thread; past it they are dropped and counted (never the loop blocked)."""

_STOP = object()


class OtelHook(Hook):
    """See the module."""

    def __init__(self, exporters: tuple[Any, Any] | None = None) -> None:
        """`exporters`: (span exporter, metric reader) to use instead of OTLP/HTTP ones (tests, or a
        collector of your own)."""
        self._exporters = exporters
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.dropped = 0
        """Events dropped because the hook's thread could not keep up."""
        self._thread: threading.Thread | None = None
        self._tracer: Any = None
        self._providers: tuple[Any, Any] | None = None
        self._tokens: Any = None
        self._duration: Any = None

    @property
    def name(self) -> str:
        return "otel"

    def started(self, pool: PoolView) -> None:
        self._setup(pool.worker_id)
        self._thread = threading.Thread(target=self._run, name="openrtc-otel", daemon=True)
        self._thread.start()

    def _setup(self, worker_id: str) -> None:
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        if self._exporters is not None:
            span_exporter, reader = self._exporters
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

            span_exporter, reader = OTLPSpanExporter(), PeriodicExportingMetricReader(OTLPMetricExporter())
        # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES: the user's name wins;
        # without one, "openrtc" rather than the SDK's unknown_service.
        resource = Resource.create({"openrtc.worker_id": worker_id})
        if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
            resource = resource.merge(Resource({"service.name": "openrtc"}))
        traces = TracerProvider(resource=resource)
        traces.add_span_processor(BatchSpanProcessor(span_exporter))
        views = [
            View(
                instrument_name="gen_ai.client.token.usage",
                aggregation=ExplicitBucketHistogramAggregation(TOKEN_BUCKETS),
            ),
            View(
                instrument_name="gen_ai.client.operation.duration",
                aggregation=ExplicitBucketHistogramAggregation(DURATION_BUCKETS),
            ),
        ]
        metrics = MeterProvider(metric_readers=[reader], resource=resource, views=views)
        self._providers = (traces, metrics)
        self._tracer = traces.get_tracer("openrtc")
        meter = metrics.get_meter("openrtc")
        self._tokens = meter.create_histogram(
            "gen_ai.client.token.usage", unit="{token}", description="Number of input and output tokens used."
        )
        self._duration = meter.create_histogram(
            "gen_ai.client.operation.duration", unit="s", description="GenAI operation duration."
        )

    def session_event(self, session: Session | None, kind: str, data: dict[str, Any]) -> None:
        if session is None or kind not in ("llm.call", "tool.call"):
            return
        if self._queue.qsize() >= QUEUE_MAX:
            self.dropped += 1
            return
        self._queue.put((kind, data, session.id, session.agent, session.tenant, time.time_ns()))

    def closed(self) -> None:
        if self._thread is not None:
            self._queue.put(_STOP)
            self._thread.join(10.0)
            self._thread = None
        if self._providers is not None:
            traces, metrics = self._providers
            traces.shutdown()  # flushes what is batched
            metrics.shutdown()
            self._providers = None
        if self.dropped:
            log.warning("OpenTelemetry: %d events dropped (the exporter could not keep up)", self.dropped)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            try:
                self._export(*item)
            except Exception:  # one odd event must not end the export
                log.exception("OpenTelemetry: could not export an event")

    def _export(
        self, kind: str, data: dict[str, Any], session_id: str, agent: str, tenant: str | None, end: int
    ) -> None:
        from opentelemetry.trace import SpanKind, Status, StatusCode

        common: dict[str, Any] = {"gen_ai.conversation.id": session_id, "openrtc.agent": agent}
        if tenant is not None:
            common["openrtc.tenant"] = tenant
        if kind == "tool.call":
            name = str(data.get("tool"))
            start = end - int(float(data.get("duration_ms") or 0.0) * 1e6)
            attributes = {**common, "gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
            span = self._tracer.start_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, start_time=start)
            span.set_attributes(attributes)
            if not data.get("ok"):
                span.set_attribute("error.type", str(data.get("error") or "error"))
                span.set_status(Status(StatusCode.ERROR))
            span.end(end_time=end)
            return
        model = str(data.get("model"))
        latency = data.get("latency_ms")
        start = end - int(float(latency) * 1e6) if isinstance(latency, int | float) else end
        metric_attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.request.model": model}
        if data.get("provider"):
            metric_attributes["gen_ai.provider.name"] = str(data["provider"])
        attributes = {**common, **metric_attributes, "gen_ai.response.model": model}
        for key, field in (
            ("gen_ai.usage.input_tokens", "input_tokens"),
            ("gen_ai.usage.output_tokens", "output_tokens"),
            ("gen_ai.usage.cache_read.input_tokens", "cache_read_tokens"),
            ("gen_ai.usage.cache_creation.input_tokens", "cache_write_tokens"),
        ):
            if type(data.get(field)) is int:
                attributes[key] = data[field]
        if data.get("finish_reason"):
            attributes["gen_ai.response.finish_reasons"] = [str(data["finish_reason"])]
        if isinstance(data.get("cost_usd"), int | float):  # an unknown cost is left out, not 0
            attributes["openrtc.cost_usd"] = float(data["cost_usd"])
        attributes["openrtc.cost_source"] = str(data.get("cost_source"))
        span = self._tracer.start_span(f"chat {model}", kind=SpanKind.CLIENT, start_time=start)
        span.set_attributes(attributes)
        span.end(end_time=end)
        for token_type, field in (("input", "input_tokens"), ("output", "output_tokens")):
            if type(data.get(field)) is int:
                self._tokens.record(data[field], {**metric_attributes, "gen_ai.token.type": token_type})
        if isinstance(latency, int | float):
            self._duration.record(float(latency) / 1000, metric_attributes)
