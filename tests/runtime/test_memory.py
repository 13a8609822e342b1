"""The memory guard reports each crossing once, in both directions, from injected readings."""

from openrtc.runtime.memory import MemoryEvent, MemoryGuard, MemoryThresholds, process_rss_mb


def guard(readings: list[float], warn: float | None = 100, limit: float | None = 200) -> MemoryGuard:
    values = iter(readings)
    return MemoryGuard(MemoryThresholds(warn, limit), lambda: next(values))


def test_each_crossing_reported_once() -> None:
    g = guard([50, 150, 160, 250, 260, 150, 50, 120])
    events = [g.poll() for _ in range(8)]
    assert events == [
        [],
        [MemoryEvent.WARN_ABOVE],
        [],
        [MemoryEvent.LIMIT_ABOVE],
        [],
        [MemoryEvent.LIMIT_BELOW],
        [MemoryEvent.WARN_BELOW],
        [MemoryEvent.WARN_ABOVE],
    ]


def test_above_limit_tracks_last_reading() -> None:
    g = guard([250, 150])
    g.poll()
    assert g.above_limit and g.last_rss_mb == 250
    g.poll()
    assert not g.above_limit


def test_disabled_without_thresholds() -> None:
    assert not guard([], None, None).enabled


def test_real_rss_is_plausible() -> None:
    assert 5 < process_rss_mb() < 4096
