"""Dispatching sessions to a fleet: publish a request to the stream, and get its session id back.

    session_id = await openrtc.fleet.dispatch("nats://127.0.0.1:4222", "chat", tenant="acme")

The stream is made on first use (or checked, when it exists, for what openrtc needs of it). The
publish waits for JetStream's acknowledgement: when `dispatch` returns, the request is stored, and a
worker with the agent will take it when it has room. A publish of an id already in the stream's
duplicate window is dropped by the server: `dispatch` then says so (`duplicate=True` in `publish`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from openrtc.fleet.protocol import (
    DONE_BUCKET,
    DONE_TTL_S,
    DUPLICATE_WINDOW_S,
    EVENTS_DUPLICATE_WINDOW_S,
    EVENTS_MAX_AGE_S,
    EVENTS_PREFIX,
    EVENTS_STREAM,
    STREAM,
    SUBJECT_PREFIX,
    Event,
    FleetError,
    check_agent,
    decode_event,
    durable,
    make_request,
    subject,
)

log = logging.getLogger("openrtc.fleet")

CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Published:
    """What the server said of one request."""

    session_id: str
    """The request's session id."""
    duplicate: bool
    """True when the server dropped it: the same id was published within the duplicate window."""
    seq: int
    """Its sequence number in the stream (the first publish's, for a duplicate)."""


async def connect(url: str, name: str = "openrtc", **options: Any) -> Any:
    """A NATS connection (nats-py), or `FleetError` when no server answers at `url`."""
    try:
        import nats
    except ImportError:  # pragma: no cover - the fleet extra
        raise FleetError("the fleet needs nats-py: pip install 'openrtc[fleet]'") from None
    errors: list[BaseException] = []

    async def on_error(exc: BaseException) -> None:
        # nats-py's default logs a traceback per failed attempt; the caller gets one clear error.
        errors.append(exc)
        log.debug("nats: %s: %s", type(exc).__name__, exc)

    try:
        return await nats.connect(
            servers=[url],
            name=name,
            connect_timeout=CONNECT_TIMEOUT_S,
            allow_reconnect=False,
            max_reconnect_attempts=1,  # two attempts in all (0 would mean: forever)
            reconnect_time_wait=0.2,
            error_cb=on_error,
            **options,
        )
    except Exception as exc:
        cause = errors[-1] if errors else exc
        raise FleetError(f"no NATS server answers at {url}: {type(cause).__name__}: {cause}") from None


async def _stream(js: Any, config: Any) -> Any:
    """The stream's info; the stream is made from `config` when missing."""
    from nats.js.errors import NotFoundError

    try:
        return await js.stream_info(config.name)
    except NotFoundError:
        return await js.add_stream(config)


async def ensure_stream(js: Any) -> None:
    """The sessions stream: made when missing, checked when present."""
    from nats.js.api import RetentionPolicy, StreamConfig

    info = await _stream(
        js,
        StreamConfig(
            name=STREAM,
            subjects=[SUBJECT_PREFIX + "*"],
            retention=RetentionPolicy.WORK_QUEUE,
            duplicate_window=DUPLICATE_WINDOW_S,
        ),
    )
    if info.config.retention != RetentionPolicy.WORK_QUEUE:
        raise FleetError(
            f"stream {STREAM} exists with {info.config.retention} retention; openrtc needs workqueue"
        )


async def ensure_fleet(js: Any) -> Any:
    """Everything a worker needs: the sessions stream, the events stream, the bucket of ended
    sessions (returned)."""
    from nats.js.api import KeyValueConfig, RetentionPolicy, StreamConfig
    from nats.js.errors import BucketNotFoundError

    await ensure_stream(js)
    await _stream(
        js,
        StreamConfig(
            name=EVENTS_STREAM,
            subjects=[EVENTS_PREFIX + ">"],
            retention=RetentionPolicy.LIMITS,
            max_age=EVENTS_MAX_AGE_S,
            duplicate_window=EVENTS_DUPLICATE_WINDOW_S,
        ),
    )
    try:
        return await js.key_value(DONE_BUCKET)
    except BucketNotFoundError:
        return await js.create_key_value(KeyValueConfig(bucket=DONE_BUCKET, ttl=DONE_TTL_S))


async def check_served(js: Any, agent: str) -> None:
    """`FleetError` unless some worker has joined the fleet with `agent` (its consumer exists): a
    request for an agent nobody runs would wait in the stream for ever."""
    from nats.js.errors import NotFoundError

    try:
        await js.consumer_info(STREAM, durable(agent))
    except NotFoundError:
        raise FleetError(
            f"no worker of the fleet runs agent {agent!r} (no consumer {durable(agent)}): start one "
            f"with it, or check the name"
        ) from None


async def publish(
    js: Any,
    agent: str,
    *,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    session_id: str | None = None,
) -> Published:
    """Publish one request on an open JetStream context."""
    request = make_request(agent, tenant, metadata, session_id)
    ack = await js.publish(
        subject(agent), request.encode(), stream=STREAM, headers={"Nats-Msg-Id": request.session_id}
    )
    return Published(request.session_id, bool(ack.duplicate), int(ack.seq))


async def dispatch(
    url: str,
    agent: str,
    *,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    session_id: str | None = None,
) -> str:
    """Publish a session request to the fleet at `url`; its session id. `FleetError` on a bad
    request, no server, an agent no worker runs, or a duplicate id."""
    make_request(agent, tenant, metadata, session_id)  # a bad request fails before any connection
    nc = await connect(url, name="openrtc-dispatch")
    try:
        js = nc.jetstream()
        await ensure_stream(js)
        await check_served(js, check_agent(agent))
        published = await publish(js, agent, tenant=tenant, metadata=metadata, session_id=session_id)
    finally:
        await nc.close()
    if published.duplicate:
        raise FleetError(f"session {published.session_id} was already dispatched (a duplicate was dropped)")
    return published.session_id


async def dispatch_many(
    url: str,
    agent: str,
    count: int = 1,
    *,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    wait: bool = False,
) -> tuple[list[str], dict[str, Event]]:
    """Publish `count` requests; their ids, and (with `wait`) the end event of each, once every one has
    ended (or was reported lost). Waiting has no time limit: cancel it to stop."""
    make_request(agent, tenant, metadata)  # a bad request fails before any connection
    nc = await connect(url, name="openrtc-dispatch")
    ends: dict[str, Event] = {}
    all_ended = asyncio.Event()
    ids: list[str] = []

    async def on_event(msg: Any) -> None:
        try:
            event = decode_event(msg.data)
        except FleetError:
            return
        if event.final or event.state == "lost":
            ends[event.session_id] = event
            if ids and all(i in ends for i in ids):
                all_ended.set()

    try:
        if wait:  # before publishing: no end can come first
            await nc.subscribe(EVENTS_PREFIX + check_agent(agent) + ".*", cb=on_event)
        js = nc.jetstream()
        try:
            await ensure_stream(js)
            await check_served(js, agent)
            for _ in range(count):
                published = await publish(js, agent, tenant=tenant, metadata=metadata)
                ids.append(published.session_id)
        except FleetError:
            raise
        except Exception as exc:  # nats-py's: no JetStream, a timeout, the connection lost
            done = f" ({len(ids)} published: {', '.join(ids)})" if ids else ""
            raise FleetError(f"dispatch to {url} failed: {type(exc).__name__}: {exc}{done}") from None
        if wait and not all(i in ends for i in ids):
            await all_ended.wait()
    finally:
        await nc.close()
    return ids, {i: ends[i] for i in ids if i in ends}
