"""AgentPool: session life cycle, failure isolation, caps, memory, drain, signals, embedding, and 'off'."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from openrtc import Agent, AgentPool, Session, SessionRefused, SessionState, UnknownAgentError
from openrtc.runtime.memory import MemoryGuard
from tests.helpers import wait_until


async def sleeper(session: Session) -> None:
    await asyncio.sleep(float(session.metadata.get("sleep", 60)))


async def polite(session: Session) -> None:
    """Ends its turn when the worker drains."""
    await session.draining.wait()


def test_session_runs_and_ends(run_loop: Any) -> None:
    seen: list[SessionState] = []

    async def agent(session: Session) -> None:
        seen.append(session.state)

    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("a", agent)
            handle = await pool.start_session("a", tenant="acme", metadata={"k": 1})
            assert handle.state is SessionState.STARTING
            assert await handle is SessionState.ENDED
            assert pool.sessions_active == 0 and pool.sessions_started == 1

    run_loop(main())
    assert seen == [SessionState.RUNNING]


def test_agents_added_after_the_start_are_logged(run_loop: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:  # embedded: agents come after the start
            pool.add("a", sleeper)

    with caplog.at_level(logging.INFO, logger="openrtc.pool"):
        run_loop(main())
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("worker started") and "agents=(none yet)" in line for line in lines)
    assert "agent 'a' added" in lines


def test_failure_is_contained_and_logged_with_session_id(
    run_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    async def boom(session: Session) -> None:
        await asyncio.sleep(0)
        raise ValueError("agent bug")

    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("boom", boom)
            pool.add("sleeper", sleeper)
            healthy = await pool.start_session("sleeper", metadata={"sleep": 0.05})
            bad = await pool.start_session("boom")
            assert await bad is SessionState.FAILED
            assert bad.reason == "exception" and isinstance(bad.error, ValueError)
            assert await healthy is SessionState.ENDED
            assert pool.sessions_failed == 1
            return bad.id

    with caplog.at_level(logging.INFO, logger="openrtc"):
        bad_id = run_loop(main())
    failures = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(failures) == 1
    assert failures[0].session_id == bad_id and failures[0].agent == "boom"  # type: ignore[attr-defined]
    assert failures[0].exc_info is not None and "agent bug" in str(failures[0].exc_info[1])


def test_sys_exit_in_a_session_does_not_stop_the_worker(run_loop: Any) -> None:
    async def quitter(session: Session) -> None:
        raise SystemExit(3)

    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("quit", quitter)
            handle = await pool.start_session("quit")
            assert await handle is SessionState.FAILED
            assert handle.reason == "sys_exit"
            assert pool.state == "running"

    run_loop(main())


def test_class_agent_prewarm_runs_once_and_is_shared(run_loop: Any) -> None:
    calls: list[int] = []

    class Model(Agent):
        name = "model"

        @classmethod
        async def prewarm(cls, shared: dict[str, Any]) -> None:
            calls.append(1)
            shared["model"] = object()

        async def run(self, session: Session) -> None:
            session.metadata["model"] = session.shared["model"]

    async def main() -> list[Any]:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("model", Model)
            handles = [await pool.start_session("model") for _ in range(5)]
            await asyncio.gather(*(h.wait() for h in handles))
            return [h.session.metadata["model"] for h in handles]

    models = run_loop(main())
    assert calls == [1]
    assert len({id(m) for m in models}) == 1


def test_unknown_agent_names_the_known_ones(run_loop: Any) -> None:
    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("b", sleeper)
            pool.add("a", sleeper)
            with pytest.raises(UnknownAgentError, match=r"unknown agent 'zzz'; known agents: a, b"):
                await pool.start_session("zzz")

    run_loop(main())


@pytest.mark.parametrize(
    ("kwargs", "starts", "cap"),
    [
        ({"max_sessions": 2}, [("a", None), ("b", None), ("a", None)], "max_sessions"),
        ({"max_sessions_per_agent": 1}, [("a", None), ("b", None), ("a", None)], "max_sessions_per_agent"),
        ({"max_sessions_per_tenant": 1}, [("a", "t1"), ("a", "t2"), ("b", "t1")], "max_sessions_per_tenant"),
    ],
)
def test_caps_refuse_with_the_cap_named(
    run_loop: Any, kwargs: dict[str, int], starts: list[Any], cap: str
) -> None:
    async def main() -> None:
        async with AgentPool(enable_introspection=False, drain_timeout_s=0, **kwargs) as pool:
            pool.add("a", sleeper)
            pool.add("b", sleeper)
            handles = [await pool.start_session(agent, tenant=tenant) for agent, tenant in starts[:-1]]
            agent, tenant = starts[-1]
            with pytest.raises(SessionRefused) as refused:
                await pool.start_session(agent, tenant=tenant)
            assert refused.value.cap == cap
            assert cap in str(refused.value)
            # A slot frees when a session ends: the same request is admitted again.
            handles[0].cancel()
            await handles[0]
            extra = await pool.start_session(agent, tenant=tenant)
            assert extra.state is SessionState.STARTING

    run_loop(main())


def test_sessions_without_tenant_do_not_count_against_tenant_caps(run_loop: Any) -> None:
    async def main() -> None:
        async with AgentPool(
            enable_introspection=False, max_sessions_per_tenant=1, drain_timeout_s=0
        ) as pool:
            pool.add("a", sleeper)
            for _ in range(3):
                await pool.start_session("a")

    run_loop(main())


def test_memory_limit_refuses_while_above_and_warns_once_per_crossing(
    run_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    readings = iter([100.0, 250.0, 260.0, 400.0, 410.0, 100.0, 300.0])

    async def main() -> list[str]:
        outcomes: list[str] = []
        async with AgentPool(
            enable_introspection=False, memory_warn_mb=200, memory_limit_mb=350, drain_timeout_s=0
        ) as pool:
            pool.memory = MemoryGuard(pool.config.memory, lambda: next(readings))
            pool.add("a", sleeper)
            for _ in range(7):
                try:
                    await pool.start_session("a")
                    outcomes.append("ok")
                except SessionRefused as exc:
                    assert exc.cap == "memory_limit" and "memory_limit_mb=350" in str(exc)
                    outcomes.append("refused")
        return outcomes

    with caplog.at_level(logging.INFO, logger="openrtc.pool"):
        outcomes = run_loop(main())
    assert outcomes == ["ok", "ok", "ok", "refused", "refused", "ok", "ok"]
    warn_crossings = [r for r in caplog.records if "crossed memory_warn_mb" in r.getMessage()]
    limit_crossings = [r for r in caplog.records if "crossed memory_limit_mb" in r.getMessage()]
    assert len(warn_crossings) == 2  # 100 -> 250, then 100 -> 300
    assert len(limit_crossings) == 1


def test_drain_ends_polite_sessions_and_cancels_the_rest(run_loop: Any) -> None:
    async def main() -> None:
        async with AgentPool(enable_introspection=False, drain_timeout_s=0.3) as pool:
            pool.add("polite", polite)
            pool.add("sleeper", sleeper)
            nice = [await pool.start_session("polite") for _ in range(3)]
            stubborn = [await pool.start_session("sleeper") for _ in range(2)]
            await asyncio.sleep(0.01)
            started = asyncio.get_running_loop().time()
            drain = asyncio.create_task(pool.drain())
            await asyncio.sleep(0)
            assert all(h.state is SessionState.DRAINING for h in nice + stubborn)
            with pytest.raises(SessionRefused) as refused:
                await pool.start_session("polite")
            assert refused.value.cap == "draining"
            await drain
            elapsed = asyncio.get_running_loop().time() - started
            assert 0.25 < elapsed < 3.0
            assert [h.state for h in nice] == [SessionState.ENDED] * 3
            assert [(h.state, h.reason) for h in stubborn] == [(SessionState.CANCELLED, "drain_timeout")] * 2
            assert pool.sessions_active == 0

    run_loop(main())


def test_cancel_by_handle_and_by_id(run_loop: Any) -> None:
    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("a", sleeper)
            one, two = await pool.start_session("a"), await pool.start_session("a")
            await asyncio.sleep(0)
            assert one.cancel()
            assert pool.cancel(two.id, reason="operator")
            assert not pool.cancel("nope")
            assert (await one, one.reason) == (SessionState.CANCELLED, "cancelled_by_user")
            assert (await two, two.reason) == (SessionState.CANCELLED, "operator")

    run_loop(main())


def test_waiting_on_a_handle_can_be_cancelled_without_cancelling_the_session(run_loop: Any) -> None:
    async def main() -> None:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("a", sleeper)
            handle = await pool.start_session("a", metadata={"sleep": 0.05})
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(handle.wait(), 0.001)
            assert await handle is SessionState.ENDED

    run_loop(main())


def test_tasks_left_behind_by_a_session_are_cancelled(run_loop: Any) -> None:
    leaked: list[asyncio.Task[None]] = []

    async def leaky(session: Session) -> None:
        leaked.append(asyncio.create_task(asyncio.sleep(60)))

    async def main() -> None:
        async with AgentPool() as pool:
            pool.add("leaky", leaky)
            await (await pool.start_session("leaky"))
            await asyncio.sleep(0)
            assert leaked[0].cancelled()

    run_loop(main())


def test_an_async_generator_closed_by_the_garbage_collector_is_left_to_finish(
    run_loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """SDK streams (openai's) leave an inner generator unfinished; the loop closes it in a task of its
    own, which is cleanup: not cancelled, not warned about, and its `finally` runs."""
    closed: list[str] = []

    async def events() -> Any:
        try:
            yield 1
            yield 2
        finally:
            await asyncio.sleep(0.01)
            closed.append("finally ran")

    async def streaming(session: Session) -> None:
        stream = events()
        await stream.__anext__()
        del stream  # unfinished: the loop's asyncgen finalizer schedules its aclose() as a task

    async def main() -> None:
        async with AgentPool() as pool:
            pool.add("streaming", streaming)
            await (await pool.start_session("streaming"))
            await wait_until(lambda: bool(closed))

    with caplog.at_level(logging.WARNING, logger="openrtc"):
        run_loop(main())
    assert closed == ["finally ran"]
    assert not [r for r in caplog.records if "tasks running" in r.getMessage()]


def test_session_log_records_carry_session_and_agent(run_loop: Any, caplog: pytest.LogCaptureFixture) -> None:
    async def chatty(session: Session) -> None:
        session.log.info("turn %d", 1, extra={"turn": 1})

    async def main() -> str:
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("chatty", chatty)
            handle = await pool.start_session("chatty")
            await handle
            return handle.id

    with caplog.at_level(logging.INFO, logger="openrtc.agent"):
        sid = run_loop(main())
    (record,) = [r for r in caplog.records if r.getMessage() == "turn 1"]
    assert (record.session_id, record.agent, record.turn) == (sid, "chatty", 1)  # type: ignore[attr-defined]


def test_introspection_off_installs_nothing(sock_home: Path, run_loop: Any) -> None:
    threads = threading.active_count()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        signals = (signal.SIGTERM, signal.SIGINT, signal.SIGPROF, signal.SIGALRM)
        handlers = {sig: signal.getsignal(sig) for sig in signals}  # asyncio.Runner has its own SIGINT one
        switch_interval = sys.getswitchinterval()
        async with AgentPool(enable_introspection=False) as pool:
            pool.add("a", sleeper)
            handle = await pool.start_session("a", metadata={"sleep": 0.01})
            assert loop.get_task_factory() is None
            assert threading.active_count() == threads
            assert pool.socket_path is None
            assert {sig: signal.getsignal(sig) for sig in handlers} == handlers
            assert signal.getitimer(signal.ITIMER_PROF) == (0.0, 0.0)
            assert sys.getswitchinterval() == switch_interval
            if hasattr(loop, "_scheduled"):  # asyncio's timer heap: only the agent's own sleep is there
                assert len(loop._scheduled) <= 1
            await handle
            if hasattr(loop, "_scheduled"):
                assert not [t for t in loop._scheduled if not t.cancelled()]

    run_loop(main())
    assert not any(sock_home.rglob("*.sock"))


def test_introspection_on_listens_and_cleans_up(sock_home: Path, run_loop: Any) -> None:
    threads = threading.active_count()

    async def main() -> Path:
        async with AgentPool() as pool:
            path = pool.socket_path
            assert path is not None and path.exists()
            assert path.parent == sock_home / "openrtc"
            assert oct(path.stat().st_mode & 0o777) == oct(0o600)
            assert oct(path.parent.stat().st_mode & 0o777) == oct(0o700)
            names = {t.name for t in threading.enumerate()}
            assert {"openrtc-server", "openrtc-watchdog"} <= names
            assert threading.active_count() == threads + 2
            return path

    path = run_loop(main())
    assert not path.exists()
    assert threading.active_count() == threads


def test_serve_drains_on_sigterm_and_restores_handlers(sock_home: Path, run_loop: Any) -> None:
    before = signal.getsignal(signal.SIGTERM)

    async def main() -> list[Any]:
        pool = AgentPool(drain_timeout_s=0.2)
        pool.add("polite", polite)
        pool.add("sleeper", sleeper)
        handles: list[Any] = []

        async def load() -> None:
            await wait_until(lambda: pool.state == "running")
            handles.append(await pool.start_session("polite"))
            handles.append(await pool.start_session("sleeper"))
            await asyncio.sleep(0.01)
            os.kill(os.getpid(), signal.SIGTERM)

        loader = asyncio.create_task(load())
        await pool.serve()
        await loader
        return handles

    handles = run_loop(main())
    assert [(h.state, h.reason) for h in handles] == [
        (SessionState.ENDED, None),
        (SessionState.CANCELLED, "drain_timeout"),
    ]
    assert signal.getsignal(signal.SIGTERM) == before


def test_serve_says_worker_started_only_once_sigterm_drains(run_loop: Any) -> None:
    """Whoever waits for `worker started` may send SIGTERM at once: by then SIGTERM must start a drain,
    not kill the process (seen once in a loaded run: the line came before the handlers were in)."""
    handlers: list[Any] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("worker started"):
                handlers.append(signal.getsignal(signal.SIGTERM))

    async def main() -> None:
        pool = AgentPool(enable_introspection=False, drain_timeout_s=0.2)

        async def stop() -> None:
            try:
                await wait_until(lambda: bool(handlers))
            finally:  # whatever happened, the worker must stop
                pool.request_drain()

        stopper = asyncio.create_task(stop())
        await pool.serve()
        await stopper

    probe, logger = Probe(), logging.getLogger("openrtc.pool")
    level = logger.level
    logger.addHandler(probe)
    logger.setLevel(logging.INFO)
    try:
        run_loop(main())
    finally:
        logger.removeHandler(probe)
        logger.setLevel(level)
    assert len(handlers) == 1 and handlers[0] not in (signal.SIG_DFL, signal.SIG_IGN, None)


def test_embedded_in_a_real_http_server(run_loop: Any) -> None:
    """An HTTP server starts one session per connection; the session answers the request."""

    async def http_agent(session: Session) -> None:
        reader: asyncio.StreamReader = session.metadata["reader"]
        writer: asyncio.StreamWriter = session.metadata["writer"]
        request_line = await reader.readline()
        while (await reader.readline()) not in (b"\r\n", b""):
            pass
        await asyncio.sleep(0.01)  # some I/O-bound work, concurrent across sessions
        body = f"{session.id} {request_line.split()[1].decode()}".encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    async def main() -> tuple[list[str], int]:
        async with AgentPool(max_sessions=100) as pool:
            pool.add("http", http_agent)
            handles: list[Any] = []

            async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                handles.append(
                    await pool.start_session("http", metadata={"reader": reader, "writer": writer})
                )

            server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
            port = server.sockets[0].getsockname()[1]

            def fetch(i: int) -> str:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/call/{i}", timeout=10) as response:
                    return str(response.read().decode())

            async with server:
                bodies = await asyncio.gather(*(asyncio.to_thread(fetch, i) for i in range(20)))
            states = await asyncio.gather(*(h.wait() for h in handles))
            assert set(states) == {SessionState.ENDED}
            return bodies, pool.sessions_started

    bodies, started = run_loop(main())
    assert started == 20
    assert sorted(int(b.split()[1].rsplit("/", 1)[1]) for b in bodies) == list(range(20))
    assert len({b.split()[0] for b in bodies}) == 20  # one session per request


def test_refusals_are_counted_by_reason_and_logged_at_a_bounded_rate(
    run_loop: Any, caplog: pytest.LogCaptureFixture, sock_home: Path
) -> None:
    async def main() -> dict[str, Any]:
        async with AgentPool(max_sessions=1) as pool:
            pool.add("a", sleeper)
            await pool.start_session("a")
            for _ in range(1000):
                with pytest.raises(SessionRefused):
                    await pool.start_session("a")
            assert pool.introspection is not None
            snap: dict[str, Any] = pool.introspection.snapshot()
            await pool.drain(0)
            with pytest.raises(SessionRefused):
                await pool.start_session("a")
            return {"counts": dict(pool.sessions_refused), "snapshot": snap}

    with caplog.at_level(logging.WARNING, logger="openrtc.pool"):
        out = run_loop(main())
    assert out["counts"] == {"max_sessions": 1000, "draining": 1}
    assert out["snapshot"]["worker"]["sessions_refused"] == {"max_sessions": 1000}
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused a session")]
    assert lines[0].startswith("refused a session (max_sessions): ")  # the first one is said at once
    assert len(lines) == 2 and lines[1].startswith("refused a session (draining)")  # not 1,001 lines
