"""Prometheus metrics as one of the pool's hooks: counts sessions, LLM and tool calls, tokens, cost,
blocks and CPU by agent (and model, tool) on the loop thread, and serves them with `prometheus_client`
on its own thread.

    openrtc start agents/ --metrics-port 9464        # or AgentPool(hooks=[MetricsHook(...)])
    curl -s localhost:9464/metrics | grep openrtc_llm_cost_usd_total

Names and labels follow Prometheus's rules (base units, `_total` counters) and never carry a session
id: cardinality is bounded by agents x models x tools (`tally.MAX_SERIES`). The registry is the hook's
own, not prometheus_client's global one, so two pools in one process do not collide.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from openrtc.errors import ConfigError
from openrtc.metrics.tally import Family, Histogram, Tally
from openrtc.runtime.hooks import Hook
from openrtc.runtime.session import Session
from openrtc.runtime.view import PoolView

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("openrtc.metrics")

LAG_PROBE_S = 0.1
"""How often the loop's lag is sampled (a timer's lateness)."""


@dataclass(frozen=True)
class MetricsConfig:
    """Where the metrics are served."""

    port: int
    """The TCP port; 0 picks a free one (`MetricsHook.port` says which)."""
    addr: str = "127.0.0.1"
    """The address to bind: loopback unless you choose to expose it."""


class MetricsHook(Hook):
    """See the module. Required: a worker whose metrics port cannot be bound does not start."""

    required = True

    def __init__(self, config: MetricsConfig) -> None:
        self.config = config
        self.tally = Tally()
        self.port: int | None = None
        """The port it serves on, once started."""
        self.view: PoolView | None = None
        """The pool's read side, once started (the scrape counts its live sessions)."""
        self._server: Any = None
        self._lag_timer: asyncio.TimerHandle | None = None

    @property
    def name(self) -> str:
        return "metrics"

    def started(self, pool: PoolView) -> None:
        from prometheus_client import CollectorRegistry, start_http_server

        self.view = pool
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self))
        try:
            self._server, _ = start_http_server(self.config.port, self.config.addr, registry)
        except OSError as exc:
            raise ConfigError(
                f"cannot serve metrics on {self.config.addr}:{self.config.port}: {exc.strerror or exc}"
            ) from exc
        self.port = int(self._server.server_port)
        log.info("metrics on http://%s:%d/metrics", self.config.addr, self.port)
        self._probe(asyncio.get_running_loop())

    def _probe(self, loop: asyncio.AbstractEventLoop) -> None:
        due = time.perf_counter() + LAG_PROBE_S  # not loop.time(): uvloop's counts whole milliseconds

        def beat() -> None:
            self.tally.lag.observe(max(0.0, time.perf_counter() - due))
            self._probe(loop)

        self._lag_timer = loop.call_later(LAG_PROBE_S, beat)

    def session_started(self, session: Session) -> None:
        self.tally.started.add((session.agent,))

    def session_event(self, session: Session | None, kind: str, data: dict[str, Any]) -> None:
        agent = session.agent if session is not None else "_worker"
        if kind == "llm.call":
            self.tally.llm_call(agent, data)
        elif kind == "tool.call":
            self.tally.tool_call(agent, data)
        elif kind == "block":
            self.tally.block(agent, data)

    def session_finished(self, session: Session) -> None:
        self.tally.ended_session(session.agent, session.state.value, session.reason, _cpu_s(session))

    def closed(self) -> None:
        if self._lag_timer is not None:
            self._lag_timer.cancel()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _cpu_s(session: Session) -> float | None:
    """Its loop time (introspection's step timer) in coroutine mode, its process's CPU in process mode."""
    if session.process is not None:
        return float(session.process.cpu_s)
    busy = getattr(session.stats, "busy_s", None)
    return float(busy) if busy is not None else None


class _Collector:
    """Turns the tally into metric families at scrape time (the exporter's thread)."""

    def __init__(self, hook: MetricsHook) -> None:
        self._hook = hook

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        t = self._hook.tally

        def counter(name: str, doc: str, labels: list[str], family: Family) -> CounterMetricFamily:
            metric = CounterMetricFamily(name, doc, labels=labels)
            for values, amount in family.copy().items():
                metric.add_metric(list(values), amount)
            return metric

        def histogram(name: str, doc: str, source: Histogram) -> HistogramMetricFamily:
            buckets, total = source.read()
            metric = HistogramMetricFamily(name, doc)
            metric.add_metric([], buckets, total)
            return metric

        yield counter("openrtc_sessions_started", "Sessions started.", ["agent"], t.started)
        yield counter(
            "openrtc_sessions_ended",
            "Sessions ended, by end state and reason.",
            ["agent", "state", "reason"],
            t.ended,
        )
        yield counter("openrtc_llm_calls", "LLM calls recorded.", ["agent", "model"], t.calls)
        yield counter(
            "openrtc_llm_tokens",
            "LLM tokens: input (cache reads and writes included), output (reasoning included), cache_read, "
            "cache_write, reasoning.",
            ["agent", "model", "kind"],
            t.tokens,
        )
        yield counter(
            "openrtc_llm_cost_usd",
            "Known LLM cost in US dollars (unknown prices are not 0: see "
            "openrtc_llm_unknown_cost_calls_total).",
            ["agent", "model"],
            t.cost,
        )
        yield counter(
            "openrtc_llm_unknown_cost_calls",
            "LLM calls whose price is not known.",
            ["agent", "model"],
            t.unknown_cost,
        )
        yield counter("openrtc_tool_calls", "Tool calls, ok or failed.", ["agent", "tool", "ok"], t.tools)
        yield counter(
            "openrtc_session_cpu_seconds",
            "Loop time (coroutine mode) or process CPU (process mode) of ended sessions.",
            ["agent"],
            t.cpu,
        )
        yield counter(
            "openrtc_loop_blocks",
            "Steps that held the loop past the slow threshold.",
            ["agent", "kind"],
            t.blocks,
        )
        yield histogram("openrtc_loop_block_seconds", "How long each block held the loop.", t.block_seconds)
        yield histogram(
            "openrtc_loop_lag_seconds", f"The loop's lag: a {LAG_PROBE_S:g} s timer's lateness.", t.lag
        )
        yield from self._live()

    def _live(self) -> Iterator[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        view = self._hook.view
        sessions = GaugeMetricFamily("openrtc_sessions", "Active sessions by state.", labels=["state"])
        counts: dict[str, int] = dict.fromkeys(("starting", "running", "draining"), 0)
        classes: dict[str, int] = {}
        kv: float | None = None
        for session in view.sessions() if view is not None else ():
            state = session.state.value
            counts[state] = counts.get(state, 0) + 1
            capacity = session.capacity  # the capacity hook's, when the pool has one (read, not imported)
            if capacity is not None:
                classes[capacity.token_class] = classes.get(capacity.token_class, 0) + 1
                if capacity.kv_bytes is not None:
                    kv = (kv or 0.0) + capacity.kv_bytes
        for state, n in counts.items():
            sessions.add_metric([state], n)
        yield sessions
        by_class = GaugeMetricFamily(
            "openrtc_sessions_by_class", "Live sessions by token class (each once).", labels=["class"]
        )
        for name, n in classes.items():
            by_class.add_metric([name], n)
        yield by_class
        if kv is not None:
            estimate = GaugeMetricFamily(
                "openrtc_kv_cache_estimated_bytes",
                "The live sessions' KV cache, from their current contexts.",
            )
            estimate.add_metric([], kv)
            yield estimate
        rss = GaugeMetricFamily("openrtc_worker_rss_bytes", "The worker process's resident memory.")
        rss.add_metric([], float(_rss_bytes()))
        yield rss


def _rss_bytes() -> int:
    import psutil

    return int(psutil.Process(os.getpid()).memory_info().rss)
