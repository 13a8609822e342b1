"""The fleet's sessions, read back for `openrtc stats usage|history --nats`: every end event in the
`OPENRTC_EVENTS` stream, with the summary its worker attached (the same record as the `session.end`
line of that worker's event log), in the form the local reports read."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from openrtc.fleet.protocol import EVENTS_PREFIX, EVENTS_STREAM, Event, FleetError, decode_event
from openrtc.usage import index

READ_TIMEOUT_S = 5.0


async def read_ends(nc: Any) -> list[Event]:
    """Every end event the stream holds (one per session: its ends are published with one message
    id), oldest first."""
    from nats.js.errors import NotFoundError

    js = nc.jetstream()
    try:
        info = await js.stream_info(EVENTS_STREAM)
    except NotFoundError:
        return []
    last = int(info.state.last_seq)
    if not info.state.messages:
        return []
    sub = await js.subscribe(EVENTS_PREFIX + ">", ordered_consumer=True)
    ends = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            except TimeoutError:
                raise FleetError(f"the events stream stopped answering before message {last}") from None
            try:
                event = decode_event(msg.data)
            except FleetError:
                event = None
            if event is not None and event.final:
                ends.append(event)
            if msg.metadata.sequence.stream >= last:
                return ends
    finally:
        await sub.unsubscribe()


def raw_sessions(ends: list[Event], since: float | None, until: float | None) -> Iterator[list[Any]]:
    """The ends as the local reports' batches (`stats.summary.scan`'s): one batch, the sessions that
    started in the window; an end without a summary (a worker without the usage hook) is left out."""
    at = index.END_FIELDS.index("started_at")
    batch = []
    for end in ends:
        if end.summary is None:
            continue
        summary = index.summary_of(end.summary)
        started = summary[at]
        if (since is None or started >= since) and (until is None or started <= until):
            batch.append((end.session_id, summary))
    yield batch


def load(url: str) -> list[Event]:
    """`read_ends` over a connection of its own (blocking)."""
    from openrtc.fleet.client import connect

    async def main() -> list[Event]:
        nc = await connect(url, name="openrtc-stats")
        try:
            return await read_ends(nc)
        finally:
            await nc.close()

    return asyncio.run(main())
