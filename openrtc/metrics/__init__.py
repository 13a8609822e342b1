"""Prometheus metrics of a worker (`MetricsHook`), served with prometheus_client."""

from openrtc.metrics.hook import MetricsConfig, MetricsHook

__all__ = ["MetricsConfig", "MetricsHook"]
