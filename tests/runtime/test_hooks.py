"""The pool's seam: a hook sees the pool start, every session start and finish exactly once whatever its
end, the drain and the close; a hook that raises is logged, counted, and disturbs nothing."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from openrtc import AgentPool, Hook, Session
from openrtc.runtime.pool import Pool
from openrtc.runtime.view import PoolView
from tests.helpers import wait_until, write_agent


class Recorder(Hook):
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.view: PoolView | None = None

    def started(self, pool: PoolView) -> None:
        self.view = pool
        self.calls.append(("started", pool.facts().agents))

    def session_started(self, session: Session) -> None:
        self.calls.append(("session_started", (session.id, session.state.value)))

    def session_finished(self, session: Session) -> None:
        self.calls.append(("session_finished", (session.id, session.state.value, session.reason)))

    def draining(self) -> None:
        self.calls.append(("draining", None))

    def closed(self) -> None:
        self.calls.append(("closed", None))

    def of(self, kind: str) -> list[Any]:
        return [value for name, value in self.calls if name == kind]


class Raising(Hook):
    def started(self, pool: PoolView) -> None:
        raise RuntimeError("hook bug in started")

    def session_started(self, session: Session) -> None:
        raise RuntimeError("hook bug")

    def session_finished(self, session: Session) -> None:
        raise RuntimeError("hook bug")

    def draining(self) -> None:
        raise RuntimeError("hook bug")

    def closed(self) -> None:
        raise RuntimeError("hook bug")


async def ends(session: Session) -> None:
    await asyncio.sleep(0)


async def fails(session: Session) -> None:
    raise ValueError("agent bug")


async def sleeps(session: Session) -> None:
    await asyncio.sleep(3600)


async def polite(session: Session) -> None:
    await session.draining.wait()


async def deaf(session: Session) -> None:
    for _ in range(2):  # ignores the drain's cancellation: abandoned by it (then gives up: the test ends)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.sleep(3600)


def test_every_session_is_seen_once_whatever_its_end(
    run_loop: Any, sock_home: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openrtc.runtime.pool as pool_module

    monkeypatch.setattr(pool_module, "CANCEL_GRACE_S", 0.3)
    recorder, raising = Recorder(), Raising()

    async def main() -> tuple[dict[str, str], Counter[str], list[str]]:
        pool = AgentPool(drain_timeout_s=0.3, hooks=[raising, recorder])
        agents = {"ends": ends, "fails": fails, "sleeps": sleeps, "polite": polite, "deaf": deaf}
        for name, agent in agents.items():
            pool.add(name, agent)
        ids: dict[str, str] = {}
        async with pool:
            for name in ("ends", "fails"):
                handle = await pool.start_session(name)
                await handle
                ids[name] = handle.id
            cancelled = await pool.start_session("sleeps")
            await asyncio.sleep(0.01)
            cancelled.cancel()
            await cancelled
            ids["cancelled"] = cancelled.id
            ids["drained"] = (await pool.start_session("polite")).id
            ids["drain_timeout"] = (await pool.start_session("sleeps")).id
            ids["abandoned"] = (await pool.start_session("deaf")).id
            ids["ends_again"] = (await pool.start_session("ends")).id  # sessions go on despite the bad hook
            await wait_until(lambda: ids["ends_again"] not in pool.sessions)
        return ids, pool.hook_errors, [s.id for s in pool.sessions.values()]

    with caplog.at_level(logging.ERROR, logger="openrtc.hooks"):
        ids, errors, _ = run_loop(main())

    started = [sid for sid, _ in recorder.of("session_started")]
    finished = {sid: (state, reason) for sid, state, reason in recorder.of("session_finished")}
    assert sorted(started) == sorted(ids.values())  # each once
    assert len(recorder.of("session_finished")) == len(ids)  # each once
    assert all(state == "starting" for _, state in recorder.of("session_started"))  # before its code ran
    assert finished[ids["ends"]] == ("ended", None)
    assert finished[ids["fails"]] == ("failed", "exception")
    assert finished[ids["cancelled"]] == ("cancelled", "cancelled_by_user")
    assert finished[ids["drained"]] == ("ended", None)
    assert finished[ids["drain_timeout"]] == ("cancelled", "drain_timeout")
    assert finished[ids["abandoned"]] == ("cancelled", "drain_timeout")  # abandoned, still seen once
    kinds = [name for name, _ in recorder.calls]
    assert kinds[0] == "started" and kinds.count("started") == 1
    assert kinds.count("draining") == 1 and kinds[-1] == "closed" and kinds.count("closed") == 1
    assert recorder.of("started") == [("deaf", "ends", "fails", "polite", "sleeps")]
    # The raising hook: every call counted, the pool and its sessions unharmed (the states above).
    assert errors["Raising"] == 1 + 2 * len(ids) + 1 + 1
    logged = [r.getMessage() for r in caplog.records if "hook Raising failed" in r.getMessage()]
    assert logged and len(logged) < errors["Raising"]  # logged, at a bounded rate


def test_process_sessions_are_seen_once_too(agents_dir: Path, sock_home: Path) -> None:
    write_agent(agents_dir, "ends", "async def entrypoint(session):\n    return None\n")
    write_agent(agents_dir, "fails", "async def entrypoint(session):\n    raise ValueError('child bug')\n")
    recorder = Recorder()

    async def main() -> dict[str, str]:
        async with Pool(isolation="process", drain_timeout_s=1, hooks=[recorder]) as pool:
            pool.discover(agents_dir)
            ids = {}
            for name in ("ends", "fails"):
                handle = await pool.start_session(name)
                await handle
                ids[name] = handle.id
            return ids

    ids = asyncio.run(main())
    finished = {sid: (state, reason) for sid, state, reason in recorder.of("session_finished")}
    assert finished == {ids["ends"]: ("ended", None), ids["fails"]: ("failed", "exception")}
    assert sorted(sid for sid, _ in recorder.of("session_started")) == sorted(ids.values())


def test_a_required_hook_that_cannot_start_stops_the_pool(run_loop: Any) -> None:
    class Needed(Raising):
        required = True

    recorder = Recorder()

    async def main() -> None:
        async with Pool(hooks=[recorder, Needed()]):
            pass

    with pytest.raises(RuntimeError, match="hook bug in started"):
        run_loop(main())
    assert [name for name, _ in recorder.calls] == ["started", "closed"]  # closed all the same


def test_hooks_must_be_hooks() -> None:
    with pytest.raises(TypeError, match="must be an openrtc Hook"):
        Pool(hooks=[object()])  # type: ignore[list-item]


def test_the_view_is_one_definition_of_what_a_worker_says(run_loop: Any, sock_home: Path) -> None:
    """`hello` and the snapshot's `worker` are both made from `PoolView.facts()`."""
    from openrtc.introspection.client import WorkerClient

    recorder = Recorder()

    async def main() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with AgentPool(max_sessions=9, hooks=[recorder]) as pool:
            pool.add("polite", polite)
            await pool.start_session("polite", tenant="acme")
            assert recorder.view is not None and pool.socket_path is not None
            facts = recorder.view.facts().as_dict()

            def ask() -> tuple[dict[str, Any], dict[str, Any]]:
                with WorkerClient(pool.socket_path) as client:  # type: ignore[arg-type]
                    return client.request("hello"), client.request("snapshot")["worker"]

            hello, worker = await asyncio.to_thread(ask)
            await pool.drain(0)
            return facts, hello, worker

    facts, hello, worker = run_loop(main())
    for key, value in facts.items():
        assert hello[key] == value, key
        if key in worker:
            assert worker[key] == value, key
    assert facts["sessions_active"] == 1 and facts["max_sessions"] == 9 and facts["draining"] is False
    assert recorder.view is not None and recorder.view.state == "closed"
