"""The snapshot's arithmetic, pure: percentiles and shares."""

from __future__ import annotations

from openrtc.introspection.snapshot import percentile, share_pct


def test_percentile_is_nearest_rank_of_sorted_values() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    assert percentile([], 50) == 0.0
    assert percentile([1.0, 2.0], 0) == 1.0
    assert percentile([1.0, 2.0], 50) == 1.0


def test_share_pct_is_busy_over_span_clamped() -> None:
    assert share_pct(0.5, 5.0) == 10.0
    assert share_pct(6.0, 5.0) == 100.0  # a step in progress can overshoot the window
    assert share_pct(-1.0, 5.0) == 0.0
    assert share_pct(1.0, 0.0) == 0.0
