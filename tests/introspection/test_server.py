"""The worker's socket, for real: ops, errors, hostile clients, and answers while the loop is blocked."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openrtc import AgentPool, RemoteError, SchemaVersionError, Session, SessionState
from openrtc.introspection.client import WorkerClient, find_workers, unwrap_reply
from openrtc.introspection.wire import encode_frame
from tests.helpers import wait_until


async def sleeper(session: Session) -> None:
    await asyncio.sleep(float(session.metadata.get("sleep", 60)))


async def blocker(session: Session) -> None:
    await asyncio.sleep(0.1)  # let the dispatch reply leave first
    time.sleep(float(session.metadata["block"]))  # blocks the event loop on purpose


def with_worker(run_loop: Any, body: Callable[[AgentPool, Path], Any], **pool_kwargs: Any) -> Any:
    """Run `body(pool, socket_path)` on a thread while a real pool serves on the loop."""

    async def main() -> Any:
        async with AgentPool(drain_timeout_s=0.2, **pool_kwargs) as pool:
            pool.add("sleeper", sleeper)
            pool.add("blocker", blocker)
            assert pool.socket_path is not None
            return await asyncio.to_thread(body, pool, pool.socket_path)

    return run_loop(main())


def raw_exchange(path: Path, payload: bytes, read: bool = True) -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        sock.sendall(payload)
        if not read:
            return b""
        chunks = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks += chunk
            if len(chunks) >= 4 and len(chunks) >= 4 + struct.unpack(">I", chunks[:4])[0]:
                break
        return chunks


def reply_of(raw: bytes) -> dict[str, Any]:
    (size,) = struct.unpack(">I", raw[:4])
    value: dict[str, Any] = msgpack.unpackb(raw[4 : 4 + size])
    return value


def test_hello_describes_the_worker(sock_home: Path, run_loop: Any) -> None:
    def body(pool: AgentPool, path: Path) -> dict[str, Any]:
        with WorkerClient(path) as client:
            result: dict[str, Any] = client.request("hello")
            return result

    hello = with_worker(run_loop, body, max_sessions=7)
    assert hello["agents"] == ["blocker", "sleeper"]
    assert hello["max_sessions"] == 7 and hello["sessions_active"] == 0 and hello["draining"] is False
    assert hello["protocol"] == 1 and hello["loop"] in ("asyncio", "uvloop")
    assert hello["step_timer"] == "c"


def test_dispatch_cancel_and_errors(sock_home: Path, run_loop: Any) -> None:
    def body(pool: AgentPool, path: Path) -> None:
        with WorkerClient(path) as client:
            ids = client.request("dispatch", agent="sleeper", tenant="acme", metadata={"k": "v"}, count=3)[
                "session_ids"
            ]
            assert len(ids) == 3 and all(pool.sessions[i].tenant == "acme" for i in ids)
            assert pool.sessions[ids[0]].metadata == {"k": "v"}
            assert client.request("cancel", session_id=ids[0]) == {"cancelled": ids[0]}
            with pytest.raises(RemoteError) as err:
                client.request("cancel", session_id="nope")
            assert err.value.code == "not_found"
            with pytest.raises(RemoteError) as err:
                client.request("dispatch", agent="ghost")
            assert err.value.code == "unknown_agent" and err.value.details["agents"] == ["blocker", "sleeper"]
            with pytest.raises(RemoteError) as err:
                client.request("dispatch", agent="sleeper", count=4)
            assert err.value.code == "refused" and err.value.details["cap"] == "max_sessions"
            assert len(err.value.details["started"]) == 2  # 2 active + 2 new = the cap of 4
            for fields in (
                {"agent": 3},
                {"agent": "sleeper", "count": 0},
                {"agent": "sleeper", "metadata": [1]},
                {"agent": "sleeper", "tenant": 5},
                {"agent": "sleeper", "count": True},
            ):
                with pytest.raises(RemoteError) as err:
                    client.request("dispatch", **fields)
                assert err.value.code == "bad_request"

    with_worker(run_loop, body, max_sessions=4)


def test_drain_op_drains_the_worker(sock_home: Path, run_loop: Any) -> None:
    async def main() -> None:
        async with AgentPool(drain_timeout_s=0.1) as pool:
            pool.add("sleeper", sleeper)
            handle = await pool.start_session("sleeper")
            path = pool.socket_path

            def drain() -> Any:
                with WorkerClient(path) as client:  # type: ignore[arg-type]
                    return client.request("drain")

            assert (await asyncio.to_thread(drain))["draining"] is True
            await wait_until(lambda: pool.state != "running")
            assert await handle is SessionState.CANCELLED and handle.reason == "drain_timeout"

    run_loop(main())


def test_answers_while_the_event_loop_is_blocked(sock_home: Path, run_loop: Any) -> None:
    def body(pool: AgentPool, path: Path) -> float:
        with WorkerClient(path) as client:
            client.request("dispatch", agent="blocker", metadata={"block": 1.5})
            # Wait for the loop to be inside time.sleep: the watchdog shows the stall in progress.
            deadline = time.monotonic() + 5
            while not any(b["ongoing"] for b in client.request("snapshot")["blocks"]):
                assert time.monotonic() < deadline, "the stall never showed"
                time.sleep(0.01)
        started = time.perf_counter()
        with WorkerClient(path, timeout=1.0) as client:
            assert client.request("hello")["sessions_active"] == 1
        return time.perf_counter() - started

    assert with_worker(run_loop, body) < 0.5


def test_protocol_errors_get_error_replies(sock_home: Path, run_loop: Any) -> None:
    def body(pool: AgentPool, path: Path) -> None:
        cases = {
            "unsupported_version": encode_frame({"v": 99, "op": "hello"}),
            "bad_request": encode_frame({"v": 1, "op": 5}),
            "unknown_op": encode_frame({"v": 1, "op": "format_disk"}),
            "bad_frame": struct.pack(">I", 3) + b"\xc1\xc1\xc1",
        }
        for code, payload in cases.items():
            reply = reply_of(raw_exchange(path, payload))
            assert reply["ok"] is False and reply["error"]["code"] == code, reply
        for prefix in (0, 2**31):  # the stream cannot be resynchronised: error reply, then closed
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(2)
                sock.connect(str(path))
                sock.sendall(struct.pack(">I", prefix) + b"junk")
                raw = b""
                while chunk := sock.recv(65536):  # ends when the worker closes, not at our timeout
                    raw += chunk
            assert reply_of(raw)["error"]["code"] == "bad_frame"
        assert pool.introspection is not None and pool.introspection.daemon is not None
        assert pool.introspection.daemon.errors >= 6

    with_worker(run_loop, body)


def test_hostile_clients_disturb_no_session(sock_home: Path, run_loop: Any) -> None:
    def body(pool: AgentPool, path: Path) -> None:
        with WorkerClient(path) as client:
            (sid,) = client.request("dispatch", agent="sleeper")["session_ids"]
        silent = [socket.socket(socket.AF_UNIX) for _ in range(20)]
        for s in silent:
            s.connect(str(path))  # connect and never send
        deaf = socket.socket(socket.AF_UNIX)
        deaf.connect(str(path))
        deaf.sendall(encode_frame({"v": 1, "op": "hello"}) * 200)  # never reads its replies
        half = socket.socket(socket.AF_UNIX)
        half.connect(str(path))
        half.sendall(encode_frame({"v": 1, "op": "hello"})[:5])  # truncated, then gone
        half.close()

        import concurrent.futures

        def one(_: int) -> int:
            with WorkerClient(path, timeout=10) as client:
                return int(client.request("hello")["sessions_active"])

        with concurrent.futures.ThreadPoolExecutor(max_workers=200) as ex:
            assert list(ex.map(one, range(200))) == [1] * 200
        for s in [*silent, deaf]:
            s.close()
        assert pool.sessions[sid].state is SessionState.RUNNING

    with_worker(run_loop, body)


@pytest.mark.parametrize("loop_kind", ["asyncio"])
def test_fuzzed_frames_never_break_the_worker(sock_home: Path, run_loop: Any) -> None:
    def body(pool: AgentPool, path: Path) -> None:
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            st.one_of(
                st.binary(max_size=300),
                st.builds(lambda b: struct.pack(">I", len(b)) + b, st.binary(max_size=200)),
                st.builds(
                    encode_frame,
                    st.dictionaries(
                        st.sampled_from(["v", "op", "agent", "count", "session_id", "x"]),
                        st.one_of(
                            st.integers(-3, 3),
                            st.text(max_size=8),
                            st.none(),
                            st.lists(st.integers(-(2**63), 2**63 - 1), max_size=2),
                        ),
                    ),
                ),
            )
        )
        def fuzz(payload: bytes) -> None:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(0.2)
                sock.connect(str(path))
                sock.sendall(payload)
                with contextlib.suppress(TimeoutError, ConnectionResetError):
                    sock.recv(65536)

        fuzz()
        with WorkerClient(path) as client:
            assert client.request("hello")["agents"] == ["blocker", "sleeper"]
        assert pool.sessions_started <= 150 * 3  # any sessions fuzzing started are real, counted ones

    with_worker(run_loop, body)


def test_find_workers_sees_every_worker_and_cleans_dead_sockets(sock_home: Path, run_loop: Any) -> None:
    async def main() -> None:
        folder = sock_home / "openrtc"
        async with AgentPool() as one, AgentPool(socket_path=folder / "second.sock") as two:
            dead = folder / "99999999.sock"
            s = socket.socket(socket.AF_UNIX)
            s.bind(str(dead))
            s.close()  # bound, never listening: a connect is refused, as for a killed worker
            found = await asyncio.to_thread(find_workers)
            assert {w.socket_path for w in found} == {one.socket_path, two.socket_path}
            assert {w.hello["worker_id"] for w in found} == {one.worker_id, two.worker_id}
            assert not dead.exists()

    run_loop(main())


def test_schema_version_mismatch_is_a_clear_error() -> None:
    with pytest.raises(SchemaVersionError, match="protocol version 2"):
        unwrap_reply({"v": 2, "ok": True, "data": {}})
