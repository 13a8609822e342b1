"""A `snapshot` request with a selection: the worker sends the rows a viewer shows, in the order the
viewer would put them, and counts the rest."""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from openrtc import AgentPool, RemoteError, Session
from openrtc.capacity import CapacityConfig, CapacityHook, Classes
from openrtc.capacity.arch import MODELS
from openrtc.introspection import snapshot, timing
from openrtc.introspection.client import WorkerClient
from openrtc.introspection.schema import from_dict
from openrtc.introspection.selection import Filters, Selection, selection_from_wire
from openrtc.introspection.windows import RING, Windows
from openrtc.runtime.session import SessionState
from openrtc.top.view import select


async def idle(session: Session) -> None:
    await session.draining.wait()


async def busy(session: Session) -> None:
    """Burns a share of the loop set by its metadata (ms per 10 ms)."""
    ms = float(session.metadata["ms"]) / 1000
    while not session.draining.is_set():
        end = time.perf_counter() + ms
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(0.01)


def with_worker(run_loop: Any, body: Any) -> Any:
    async def main() -> Any:
        async with AgentPool(drain_timeout_s=0.5) as pool:
            pool.add("idle", idle)
            pool.add("busy", busy)
            for i in range(60):
                await pool.start_session("idle", tenant=f"t{i % 3}")
            for ms in (3, 1):
                await pool.start_session("busy", tenant="hot", metadata={"ms": ms})
            assert pool.socket_path is not None
            return await asyncio.to_thread(body, pool.socket_path)

    return run_loop(main())


def test_the_worker_sends_the_first_rows_in_the_viewers_order(sock_home: Path, run_loop: Any) -> None:
    def body(path: Path) -> None:
        with WorkerClient(path, timeout=5) as client:
            # The two busy sessions' shares must be on the books before they can lead.
            deadline = time.monotonic() + 20
            while sum(r["cpu_pct"] > 0.5 for r in client.request("snapshot")["sessions"]) < 2:
                assert time.monotonic() < deadline, "the busy sessions never showed their CPU"
                time.sleep(0.1)
            full = from_dict(client.request("snapshot"))
            assert full.selection is None and len(full.sessions) == 62
            top = from_dict(client.request("snapshot", sort="cpu", limit=2))
            assert top.selection is not None
            assert (top.selection.matched, top.selection.total, top.selection.limit) == (62, 62, 2)
            assert [r.agent for r in top.sessions] == ["busy", "busy"]
            assert top.sessions[0].cpu_pct > top.sessions[1].cpu_pct  # 3 ms before 1 ms per turn
            assert top.selection.facets == {
                "agent": ["busy", "idle"],
                "tenant": ["hot", "t0", "t1", "t2"],
                "token_class": [],
                "status": ["running"],
            }
            # A deterministic order: the same rows the viewer would pick from the full snapshot.
            some = from_dict(client.request("snapshot", sort="agent", limit=7))
            expected = [r.session_id for r in select(full.sessions, Filters(), "agent")[:7]]
            assert [r.session_id for r in some.sessions] == expected
            oldest = from_dict(client.request("snapshot", sort="age", limit=7)).sessions
            assert [r.duration_s for r in oldest] == sorted((r.duration_s for r in oldest), reverse=True)
            assert oldest[0].duration_s >= max(r.duration_s for r in full.sessions)
            # Filters, with every value still in the facets.
            t1 = from_dict(client.request("snapshot", limit=100, filters={"tenant": "t1"}))
            assert t1.selection is not None and t1.selection.matched == 20
            assert {r.tenant for r in t1.sessions} == {"t1"} and len(t1.sessions) == 20
            assert t1.selection.facets["tenant"] == ["hot", "t0", "t1", "t2"]
            found = from_dict(client.request("snapshot", limit=5, filters={"search": "BUS"}))
            assert {r.agent for r in found.sessions} == {"busy"}
            # Bad selections get a clear error and leave the connection usable.
            for bad, words in (
                ({"limit": 0}, "'limit'"),
                ({"limit": "10"}, "'limit'"),
                ({"limit": 5, "sort": "colour"}, "'sort'"),
                ({"limit": 5, "filters": {"colour": "red"}}, "unknown filters"),
                ({"limit": 5, "filters": {"agent": 3}}, "string"),
            ):
                with pytest.raises(RemoteError, match=words):
                    client.request("snapshot", **bad)
            assert len(client.request("snapshot", limit=1)["sessions"]) == 1

    with_worker(run_loop, body)


def test_selection_round_trips_and_rejects_what_it_cannot_read() -> None:
    want = Selection("mem", 40, Filters(agent="a", search="x"))
    wire = want.to_wire()
    assert wire == {"sort": "mem", "limit": 40, "filters": {"agent": "a", "search": "x"}}
    assert selection_from_wire(wire) == want
    assert selection_from_wire({}) is None  # no limit: every session, as before
    assert selection_from_wire({"limit": 3}) == Selection("cpu", 3, Filters())


def test_a_selection_carries_the_same_worker_figures_as_the_full_snapshot(
    sock_home: Path, run_loop: Any
) -> None:
    """The selected rows are few, but the worker's class mix, KV estimate, usage totals and the
    facets still count every session (one pass collects them beside the sort keys)."""

    def agent(tokens: int) -> Any:
        async def run(session: Session) -> None:
            session.usage.record("m", provider="p", input_tokens=tokens, output_tokens=10, cost_usd=0.25)
            await session.draining.wait()

        return run

    async def main() -> tuple[dict[str, Any], dict[str, Any]]:
        hook = CapacityHook(CapacityConfig(Classes.parse("light=1000,medium=5000"), MODELS["llama-3.1-8b"]))
        async with AgentPool(drain_timeout_s=0.5, hooks=[hook]) as pool:
            for name, tokens in (("quiet", 300), ("chat", 2000), ("big", 6000)):
                pool.add(name, agent(tokens))
                for _ in range(3):
                    await pool.start_session(name)
            pool.add("idle", idle)
            for _ in range(20):
                await pool.start_session("idle")
            await asyncio.sleep(0.2)
            assert pool.socket_path is not None

            def read(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
                with WorkerClient(path, timeout=5) as client:
                    return client.request("snapshot"), client.request("snapshot", limit=1)

            return await asyncio.to_thread(read, pool.socket_path)

    full, one = run_loop(main())
    assert len(one["sessions"]) == 1 and len(full["sessions"]) == 29
    assert full["worker"]["classes"] == {"light": 23, "medium": 3, "extreme": 3}  # idle ones too
    assert full["worker"]["kv_bytes"] == 3 * (310 + 2010 + 6010) * 131_072
    assert full["worker"]["usage"]["calls"] == 9 and full["worker"]["usage"]["cost_usd"] == 2.25
    for field in ("classes", "kv_bytes", "usage"):
        assert one["worker"][field] == full["worker"][field]
    assert one["selection"]["facets"]["token_class"] == ["extreme", "light", "medium"]
    assert one["selection"]["facets"]["agent"] == ["big", "chat", "idle", "quiet"]


class _Capacity:
    def __init__(self, token_class: str | None, kv_bytes: float | None) -> None:
        self.token_class, self.kv_bytes = token_class, kv_bytes


class _Child:
    def __init__(self, pct: float) -> None:
        self.pct = pct

    def cpu_pct(self, span: float, now: float) -> float:
        return self.pct


def test_the_c_keying_pass_orders_and_counts_every_kind_of_session_as_the_python_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`_steps.scan` (the live view's usual request: by CPU, no filter) against `_select`'s Python loop,
    on sessions of every kind a worker holds: busy, slow, stalled, without stats, in a process of
    their own, with and without a capacity class, finished."""
    native = timing.NATIVE
    if native is None or timing.NATIVE_PASSES is None:
        pytest.skip("the C step timer is not built, or not in use")
    monitor = SimpleNamespace(clock=native.clock(10.0, lambda *_: None), timer=native)
    now, oldest = 1000.0, 2
    everyone = []
    for i in range(40):
        tenant = None if i % 4 == 0 else f"t{i % 5}"
        session = Session(f"s{i:02d}", ("a", "b", "c")[i % 3], tenant, {}, {}, asyncio.Event())
        session.state = SessionState.RUNNING if i < 30 else (SessionState.ENDED, SessionState.FAILED)[i % 2]
        if i % 7 != 3:
            stats = session.stats = native.stats(session)
            stats.busy_s = i * 0.013
            stats.cpu_ring = [i * 0.001 * k for k in range(11)] if i % 5 else None
            if i % 6 == 1:
                stats.blocks, stats.last_block_mono = 2, now - (5 if i % 12 == 1 else 500)
        if i % 9 == 4:
            session.process = _Child(i * 1.5)
        if i % 3 != 2:
            kv = None if i % 8 == 0 else i * 1000.5
            session.capacity = _Capacity(("light", "heavy", None)[i % 4 % 3], kv)
        everyone.append(session)
    ongoing = SimpleNamespace(session_id="s17")
    args = (everyone, 30, Selection(sort="cpu", limit=40), monitor, oldest, 5.0, now, 1.5, ongoing)
    in_c = snapshot._select(*args)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="scan"):
        timing.NATIVE_PASSES.scan(everyone, 0, 40, (), ())
    monkeypatch.setattr(timing, "NATIVE_PASSES", None)
    in_python = snapshot._select(*args)  # type: ignore[arg-type]
    assert in_c == in_python
    picked, matched, facets, capacity = in_c
    assert matched == 40 and sorted(picked) == list(range(40))
    assert picked[0] in (1, 13, 17, 25)  # the slow ones lead: recent blocks, or the stall in progress
    assert facets["status"] == ["running", "ended", "failed"] and facets["token_class"] == ["heavy", "light"]
    live_capacity = [s.capacity for s in everyone[:30] if s.capacity is not None]
    assert capacity["classes"] == {
        name: sum(c.token_class == name for c in live_capacity) for name in ("light", "heavy")
    }
    assert capacity["kv_bytes"] == sum(round(c.kv_bytes) for c in live_capacity if c.kv_bytes is not None)


def test_the_c_smallest_picks_what_heapq_picks_ties_by_index() -> None:
    native = timing.NATIVE_PASSES
    if native is None:
        pytest.skip("the C step timer is not built, or not in use")
    rng = random.Random(7)
    for n in (0, 1, 5, 100, 2_000):
        keys = [float(rng.choice((0, 1, 2, 2e12, -3.5, rng.random()))) for _ in range(n)]
        for limit in (1, 3, 100, n, n + 5):
            expected = heapq.nsmallest(limit, range(n), key=keys.__getitem__)
            assert native.smallest(keys, limit) == expected
    with pytest.raises(TypeError, match="float"):
        native.smallest([1.0, "agent"], 1)


def test_the_c_tick_fills_each_ring_as_the_python_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Windows.tick` with `_steps.tick` and with its Python loop, on sessions with C stats, the
    pure-Python timer's stats and none."""
    if timing.NATIVE is None or timing.NATIVE_PASSES is None:
        pytest.skip("the C step timer is not built, or not in use")

    def sessions() -> list[Session]:
        made = []
        for i, timer in enumerate((timing.NATIVE, timing.PYTHON, None, timing.NATIVE)):
            session = Session(f"s{i}", "a", None, {}, {}, asyncio.Event())
            if timer is not None:
                session.stats = timer.stats(session)
                session.stats.busy_s = 0.25 * (i + 1)
            made.append(session)
        return made

    rings = []
    for in_c in (True, False):
        if not in_c:
            monkeypatch.setattr(timing, "NATIVE_PASSES", None)
        ours = sessions()
        windows = Windows(lambda ours=ours: ours, lambda: 10.0)  # type: ignore[misc]
        for busy in (1.0, 2.0):
            for s in ours:
                if s.stats is not None:
                    s.stats.busy_s += busy
            windows.tick()
        rings.append([s.stats.cpu_ring if s.stats is not None else None for s in ours])
    assert rings[0] == rings[1]
    assert rings[0][0] == [0.0, 1.25, 3.25] + [0.0] * (RING - 3)
    monkeypatch.undo()
    assert timing.NATIVE_PASSES is not None
    bad = sessions()
    bad[0].stats.cpu_ring = [0.0]
    with pytest.raises(ValueError, match="ring"):
        timing.NATIVE_PASSES.tick(bad, 1, RING)
