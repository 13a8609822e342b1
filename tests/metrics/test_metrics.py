"""The worker's Prometheus metrics: a real worker scraped over HTTP and parsed with prometheus_client's
own parser; the tally's rules on their own."""

from __future__ import annotations

import json
import re
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from openrtc.metrics.tally import MAX_SERIES, OTHER, Family, Histogram, Tally
from tests.cli.worker import Worker, run_cli
from tests.helpers import write_agent

AGENT = """
from openrtc import Agent, Session


class Caller(Agent):
    name = "caller"

    async def run(self, session: Session) -> None:
        model = session.metadata.get("model", "gpt-4o-mini")
        for n in range(int(session.metadata.get("calls", 2))):
            session.usage.record(
                model, provider="openai", input_tokens=1000 * (n + 1), output_tokens=100,
                cache_read_tokens=500 * n, latency_ms=200,
            )
        async with session.usage.tool("lookup"):
            pass
        if session.metadata.get("fail"):
            raise RuntimeError("failed on purpose")
        if session.metadata.get("hang"):
            await session.draining.wait()
"""


def scrape(port: int) -> tuple[str, dict[str, Any]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        kind = reply.headers["content-type"]
        text = reply.read().decode()
    return kind, {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    family_name = name.removesuffix("_total").removesuffix("_bucket")
    found = [s.value for s in families[family_name].samples if s.name == name and s.labels == labels]
    assert len(found) == 1, (name, labels, families[family_name].samples)
    return float(found[0])


def test_a_real_worker_serves_its_metrics(agents_dir: Path, sock_home: Path, workers: list[Worker]) -> None:
    write_agent(agents_dir, "caller", AGENT)
    worker = Worker(
        "start",
        agents_dir,
        sock_home,
        "--no-event-log",
        "--metrics-port",
        "0",
        "--model-arch",
        "llama-3.1-8b",
    )
    workers.append(worker)
    worker.ready()
    (line,) = worker.wait_for_log("metrics on http://127.0.0.1:")
    port = int(re.search(r":(\d+)/metrics", line["message"]).group(1))  # type: ignore[union-attr]
    ids = []
    for meta in (
        {"calls": 2},
        {"calls": 2, "fail": True},
        {"calls": 1, "model": "acme-x"},
        {"calls": 2, "hang": 1},
    ):
        done = worker.dispatch("caller", "--tenant", "acme", "--metadata", json.dumps(meta))
        assert done.returncode == 0, done.stderr
        ids += done.stdout.split()
    deadline = time.monotonic() + 15
    while True:
        kind, families = scrape(port)
        ended = sum(s.value for s in families["openrtc_sessions_ended"].samples if s.name.endswith("_total"))
        if ended == 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)

    assert kind.startswith("text/plain")
    assert value(families, "openrtc_sessions_started_total", agent="caller") == 4
    assert value(families, "openrtc_sessions_ended_total", agent="caller", state="ended", reason="none") == 2
    assert (
        value(families, "openrtc_sessions_ended_total", agent="caller", state="failed", reason="exception")
        == 1
    )
    gpt, acme = (
        {"agent": "caller", "model": "openai/gpt-4o-mini"},
        {"agent": "caller", "model": "openai/acme-x"},
    )
    assert value(families, "openrtc_llm_calls_total", **gpt) == 6
    assert value(families, "openrtc_llm_calls_total", **acme) == 1
    # Per session: 1,000 then 2,000 input (500 of it cached), 100 output each.
    assert value(families, "openrtc_llm_tokens_total", **gpt, kind="input") == 9000
    assert value(families, "openrtc_llm_tokens_total", **gpt, kind="cache_read") == 1500
    assert value(families, "openrtc_llm_tokens_total", **gpt, kind="output") == 600
    # gpt-4o-mini at $0.15 / $0.075 cached / $0.60 per million: (1000 x 0.15 + 100 x 0.6) + (1500 x 0.15
    # + 500 x 0.075 + 100 x 0.6) = 532.5 per million a session, 1,597.5 for three.
    assert value(families, "openrtc_llm_cost_usd_total", **gpt) == pytest.approx(0.0015975, abs=1e-12)
    assert value(families, "openrtc_llm_unknown_cost_calls_total", **acme) == 1
    assert not [s for s in families["openrtc_llm_cost_usd"].samples if s.labels.get("model") == acme["model"]]
    assert value(families, "openrtc_tool_calls_total", agent="caller", tool="lookup", ok="true") == 4
    assert value(families, "openrtc_sessions", state="running") == 1  # the one that waits for the drain
    assert value(families, "openrtc_sessions_by_class", **{"class": "light"}) == 1
    # Its current context is its last call's 2,000 in + 100 out, at 131,072 bytes a token (Llama 3.1 8B).
    assert value(families, "openrtc_kv_cache_estimated_bytes") == 2100 * 131_072
    assert value(families, "openrtc_worker_rss_bytes") > 10 * 2**20

    for name in (
        "openrtc_sessions_started",
        "openrtc_llm_tokens",
        "openrtc_llm_cost_usd",
        "openrtc_tool_calls",
    ):
        assert families[name].type == "counter"
    assert families["openrtc_sessions"].type == "gauge"
    lag = families["openrtc_loop_lag_seconds"]
    assert lag.type == "histogram"
    buckets = [s for s in lag.samples if s.name.endswith("_bucket")]
    assert [b.labels["le"] for b in buckets][:3] == ["0.0005", "0.001", "0.0025"]
    assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value > 0
    count = next(s.value for s in lag.samples if s.name.endswith("_count"))
    assert count == buckets[-1].value
    labels = {k: v for f in families.values() for s in f.samples for k, v in s.labels.items()}
    assert "session_id" not in labels and not set(ids) & {
        v for f in families.values() for s in f.samples for v in s.labels.values()
    }
    assert worker.stop() == 0


def test_a_metrics_port_in_use_or_out_of_range_is_refused(
    agents_dir: Path, sock_home: Path, workers: list[Worker]
) -> None:
    write_agent(agents_dir, "caller", AGENT)
    bad = run_cli("start", str(agents_dir), "--metrics-port", "70000")
    assert bad.returncode == 2 and "must be a TCP port" in bad.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        worker = Worker("start", agents_dir, sock_home, "--metrics-port", str(taken.getsockname()[1]))
        workers.append(worker)
        assert worker.proc.wait(20) == 1
    assert "cannot serve metrics on 127.0.0.1:" in worker.log_path.read_text()


def test_histogram_buckets_hold_their_upper_bound() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 3.0):
        h.observe(v)
    buckets, total = h.read()
    assert buckets == [("0.1", 2.0), ("1.0", 4.0), ("+Inf", 5.0)] and total == pytest.approx(4.65)


def test_a_family_lumps_label_sets_past_its_bound() -> None:
    f = Family()
    for i in range(MAX_SERIES + 10):
        f.add((f"agent{i}", "m"))
    assert len(f.values) == MAX_SERIES + 1 and f.values[(OTHER, OTHER)] == 10


def test_an_unknown_cost_is_counted_not_summed_as_zero() -> None:
    t = Tally()
    t.llm_call(
        "a", {"model": "m", "provider": None, "input_tokens": 10, "output_tokens": 1, "cost_usd": None}
    )
    t.llm_call(
        "a", {"model": "m", "provider": None, "input_tokens": None, "output_tokens": None, "cost_usd": 0.5}
    )
    assert t.cost.values == {("a", "m"): 0.5} and t.unknown_cost.values == {("a", "m"): 1}
    assert t.tokens.values == {("a", "m", "input"): 10, ("a", "m", "output"): 1}
