"""A `snapshot` request with a selection: the worker sends the rows a viewer shows, in the order the
viewer would put them, and counts the rest."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, RemoteError, Session
from openrtc.introspection.client import WorkerClient
from openrtc.introspection.schema import from_dict
from openrtc.introspection.selection import Filters, Selection, selection_from_wire
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
