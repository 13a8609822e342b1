"""OpenTelemetry: a real worker exports over OTLP/HTTP to an endpoint this test runs, and what arrives
(protobuf, parsed with OpenTelemetry's own message types) follows the GenAI conventions."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from openrtc.otel.hook import DURATION_BUCKETS, TOKEN_BUCKETS
from tests.cli.worker import Worker
from tests.helpers import write_agent

AGENT = """
from openrtc import Agent, Session


class Caller(Agent):
    name = "caller"

    async def run(self, session: Session) -> None:
        session.usage.record("gpt-4o-mini", provider="openai", input_tokens=2000, output_tokens=300,
                             cache_read_tokens=1536, latency_ms=640, finish_reason="stop")
        session.usage.record("own-model", input_tokens=100, output_tokens=10, latency_ms=120)
        try:
            with session.usage.tool("lookup"):
                raise KeyError("no such order")
        except KeyError:
            pass
"""


class Collector(ThreadingHTTPServer):
    """An OTLP/HTTP endpoint: keeps each request's path and body."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: Collector

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.received.append((self.path, body))
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def attrs(items: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in items:
        value = kv.value
        kind = value.WhichOneof("value")
        out[kv.key] = (
            [v.string_value for v in value.array_value.values]
            if kind == "array_value"
            else getattr(value, kind)
        )
    return out


def test_a_worker_exports_genai_spans_and_histograms(
    agents_dir: Path, sock_home: Path, workers: list[Worker], collector: Collector
) -> None:
    write_agent(agents_dir, "caller", AGENT)
    endpoint = f"http://127.0.0.1:{collector.server_address[1]}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "support-bots"}
    worker = Worker("start", agents_dir, sock_home, "--no-event-log", env=env)
    workers.append(worker)
    worker.ready()
    done = worker.dispatch("caller", "--tenant", "acme", "--metadata", json.dumps({}))
    assert done.returncode == 0, done.stderr
    (session_id,) = done.stdout.split()
    worker.wait_for_log("session ended")
    assert worker.stop() == 0  # the drain's close flushes both exports

    spans: list[Any] = []
    metrics: list[Any] = []
    for path, body in collector.received:
        if path == "/v1/traces":
            request = ExportTraceServiceRequest.FromString(body)
            for rs in request.resource_spans:
                assert attrs(rs.resource.attributes)["service.name"] == "support-bots"
                spans += [s for ss in rs.scope_spans for s in ss.spans]
        elif path == "/v1/metrics":
            request = ExportMetricsServiceRequest.FromString(body)
            metrics += [m for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    by_name = {s.name: s for s in spans}
    assert sorted(by_name) == ["chat gpt-4o-mini", "chat own-model", "execute_tool lookup"]

    chat = by_name["chat gpt-4o-mini"]
    assert chat.kind == Span.SPAN_KIND_CLIENT
    assert chat.end_time_unix_nano - chat.start_time_unix_nano == 640_000_000
    a = attrs(chat.attributes)
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "openai"
    assert a["gen_ai.request.model"] == "gpt-4o-mini" and a["gen_ai.conversation.id"] == session_id
    assert a["gen_ai.usage.input_tokens"] == 2000  # the cached 1,536 included, as the conventions have it
    assert a["gen_ai.usage.output_tokens"] == 300
    assert a["gen_ai.usage.cache_read.input_tokens"] == 1536
    assert a["gen_ai.usage.cache_creation.input_tokens"] == 0
    assert a["gen_ai.response.finish_reasons"] == ["stop"]
    assert a["openrtc.cost_usd"] == pytest.approx(0.0003648) and a["openrtc.tenant"] == "acme"
    own = attrs(by_name["chat own-model"].attributes)
    assert "openrtc.cost_usd" not in own and own["openrtc.cost_source"] == "unknown"  # unknown is not 0
    assert "gen_ai.provider.name" not in own
    tool = by_name["execute_tool lookup"]
    assert attrs(tool.attributes)["error.type"] == "KeyError" and tool.status.code == 2  # ERROR

    latest = {m.name: m for m in metrics}  # cumulative: the last export holds everything
    tokens = latest["gen_ai.client.token.usage"]
    assert tokens.unit == "{token}"
    points = {
        (attrs(p.attributes)["gen_ai.request.model"], attrs(p.attributes)["gen_ai.token.type"]): p
        for p in tokens.histogram.data_points
    }
    assert list(points["gpt-4o-mini", "input"].explicit_bounds) == list(TOKEN_BUCKETS)
    assert points["gpt-4o-mini", "input"].sum == 2000 and points["gpt-4o-mini", "input"].count == 1
    assert points["own-model", "output"].sum == 10
    # 2,000 lies in (1024, 4096]: the bucket after the sixth bound.
    assert list(points["gpt-4o-mini", "input"].bucket_counts).index(1) == TOKEN_BUCKETS.index(4096)
    duration = latest["gen_ai.client.operation.duration"]
    assert duration.unit == "s"
    (point,) = [
        p
        for p in duration.histogram.data_points
        if attrs(p.attributes)["gen_ai.request.model"] == "gpt-4o-mini"
    ]
    assert list(point.explicit_bounds) == list(DURATION_BUCKETS) and point.sum == pytest.approx(0.64)
