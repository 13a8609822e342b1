"""What crosses NATS: subjects, the stream and its consumers, a session request and its validation.
Pure (no client here).

- Requests go to the stream `OPENRTC_SESSIONS` (work-queue retention: a message is gone once a
  worker acks it), subject `openrtc.sessions.<agent>`, with the header `Nats-Msg-Id: <session id>`: a
  second publish of the same id inside the stream's duplicate window is dropped by the server.
- One durable pull consumer per agent, `openrtc-<agent>`, shared by every worker that has the agent.
- Lifecycle events: `openrtc.events.<agent>.<state>` (`Event`), kept by the stream `OPENRTC_EVENTS`
  (limits retention, 30 days) so that a reader that was away can still read them; an end event
  carries the session's summary, which `openrtc stats --nats` reads.
- The key-value bucket `openrtc_workers`: key = worker id, value = its snapshot (`encode_view`), put
  every second, gone `WORKERS_TTL_S` after the last put (a worker that stops cleanly deletes its key).
- Control requests to one worker: `openrtc.control.<worker id>` (`{"op": "cancel", "session_id"}`).
- The key-value bucket `openrtc_done`: key = session id, value = its final event, written with
  "create" (refused when the key exists) before the event is published and the request acked. The
  worker that creates the key owns the session's one final end state; a redelivered copy whose key
  exists is acked and not run again.
"""

from __future__ import annotations

import json
import re
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from openrtc.errors import OpenRTCError

STREAM = "OPENRTC_SESSIONS"
SUBJECT_PREFIX = "openrtc.sessions."
EVENTS_PREFIX = "openrtc.events."
DUPLICATE_WINDOW_S = 120.0
"""A second publish of a session id within this long is dropped (the stream's duplicate window)."""
EVENTS_STREAM = "OPENRTC_EVENTS"
EVENTS_MAX_AGE_S = 30 * 86400.0
"""How long the events stream keeps events (and the sessions' summaries, which `stats --nats` reads)."""
EVENTS_DUPLICATE_WINDOW_S = 600.0
"""A session's end is published with the message id `<session id>.end`: a second copy within this
long (a redelivery of a request whose worker died between recording its end and acking) is dropped."""
DONE_BUCKET = "openrtc_done"
DONE_TTL_S = 3600.0
"""How long a session's end is remembered against redelivery (far longer than max_deliver x ack_wait)."""
WORKERS_BUCKET = "openrtc_workers"
WORKERS_TTL_S = 10.0
VIEW_EVERY_S = 1.0
VIEW_ROWS = 200
"""Sessions per worker in the fleet view: the first by CPU (slow ones first), with the worker's
counts; a worker of 10,000 sessions puts 200 rows a second, not 10,000."""
STALE_AFTER_S = 3.0
"""A worker whose last snapshot is this much older than the fleet's newest is shown stale."""
CONTROL_PREFIX = "openrtc.control."
MAX_VIEW_BYTES = 800 << 10
"""A snapshot in the bucket stays under NATS's default 1 MB message, compressed."""
ACK_WAIT_S = 30.0
MAX_DELIVER = 5
FINAL_STATES = frozenset({"ended", "failed", "cancelled"})
"""The end states of a session; `running` and `requeued` (handed back to the stream) are not."""
MAX_REQUEST_BYTES = 64 << 10

# A subject token: no dots (levels), no wildcards, no spaces. Agent names are Python-ish already.
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FleetError(OpenRTCError):
    """A fleet request or setting is invalid, or the NATS server refused or went away."""


def check_agent(agent: Any) -> str:
    """The agent name, if it can be a subject token; else `FleetError` saying why."""
    if not isinstance(agent, str) or not _TOKEN.match(agent):
        raise FleetError(
            f"agent name {agent!r} cannot be a NATS subject token (letters, digits, _ and - only)"
        )
    return agent


def subject(agent: str) -> str:
    return SUBJECT_PREFIX + check_agent(agent)


def durable(agent: str) -> str:
    """The pull consumer every worker with `agent` shares."""
    return "openrtc-" + check_agent(agent)


def event_subject(agent: str, state: str) -> str:
    return f"{EVENTS_PREFIX}{check_agent(agent)}.{state}"


def new_session_id() -> str:
    """12 hex characters, like the pool's own."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Request:
    """A session request, as published."""

    session_id: str
    """Its id: the message id too (`Nats-Msg-Id`)."""
    agent: str
    """The agent to run it."""
    tenant: str | None = None
    """Its tenant, or None."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """What the session receives as `session.metadata` (JSON)."""
    created_at: float = 0.0
    """Unix time it was published."""

    def encode(self) -> bytes:
        body = json.dumps(
            {
                "session_id": self.session_id,
                "agent": self.agent,
                "tenant": self.tenant,
                "metadata": self.metadata,
                "created_at": self.created_at,
            },
            separators=(",", ":"),
        ).encode()
        if len(body) > MAX_REQUEST_BYTES:
            raise FleetError(
                f"the request is {len(body)} bytes; at most {MAX_REQUEST_BYTES} (trim its metadata)"
            )
        return body


def make_request(
    agent: str,
    tenant: str | None = None,
    metadata: dict[str, Any] | None = None,
    session_id: str | None = None,
    now: float | None = None,
) -> Request:
    """A checked request (`FleetError` for a bad agent, tenant, metadata or id)."""
    check_agent(agent)
    sid = session_id if session_id is not None else new_session_id()
    if not isinstance(sid, str) or not _SESSION_ID.match(sid):
        raise FleetError(f"session id {sid!r}: 1 to 64 letters, digits, _ or -")
    if tenant is not None and not isinstance(tenant, str):
        raise FleetError("tenant must be a string")
    if metadata is not None and not isinstance(metadata, dict):
        raise FleetError("metadata must be a JSON object")
    request = Request(sid, agent, tenant, dict(metadata or {}), time.time() if now is None else now)
    request.encode()  # its size, and that it is JSON
    return request


def decode_request(body: bytes) -> Request:
    """A request from a message body; `FleetError` (the reason to log when terminating it) otherwise."""
    if len(body) > MAX_REQUEST_BYTES:
        raise FleetError(f"request of {len(body)} bytes (at most {MAX_REQUEST_BYTES})")
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FleetError(f"request is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FleetError("request is not a JSON object")
    if not isinstance(doc.get("session_id"), str):
        raise FleetError("request has no session_id")
    created = doc.get("created_at", 0.0)
    if not isinstance(created, int | float) or isinstance(created, bool):
        raise FleetError("created_at must be a number")
    return make_request(
        check_agent(doc.get("agent")),
        doc.get("tenant"),
        doc.get("metadata"),
        doc.get("session_id"),
        float(created),
    )


@dataclass(frozen=True)
class Event:
    """A session's lifecycle event, published on `openrtc.events.<agent>.<state>`."""

    session_id: str
    """The session."""
    agent: str
    """Its agent."""
    worker_id: str
    """The worker it ran on."""
    state: str
    """`running`, an end state (`ended`, `failed`, `cancelled`), or `requeued` (handed back)."""
    reason: str | None
    """Why it failed, was cancelled or requeued (`exception`, `drain_timeout`...), else None."""
    at: float
    """Unix time."""
    attempt: int = 1
    """Which delivery of the request this is (1 for the first)."""
    summary: dict[str, Any] | None = None
    """On an end event: the session summed up, as its `session.end` line in the worker's event log
    (tokens, cost, times); what `openrtc stats --nats` reads."""

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    def encode(self) -> bytes:
        return json.dumps(
            {
                "session_id": self.session_id,
                "agent": self.agent,
                "worker_id": self.worker_id,
                "state": self.state,
                "reason": self.reason,
                "at": self.at,
                "attempt": self.attempt,
                **({"summary": self.summary} if self.summary is not None else {}),
            },
            separators=(",", ":"),
        ).encode()


def decode_event(body: bytes) -> Event:
    """An event from a message body; `FleetError` when it is not one."""
    try:
        doc = json.loads(body)
        event = Event(
            str(doc["session_id"]),
            str(doc["agent"]),
            str(doc["worker_id"]),
            str(doc["state"]),
            None if doc.get("reason") is None else str(doc["reason"]),
            float(doc["at"]),
            int(doc.get("attempt") or 1),
            doc["summary"] if isinstance(doc.get("summary"), dict) else None,
        )
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise FleetError(f"not a lifecycle event: {type(exc).__name__}: {exc}") from None
    return event


def encode_view(doc: dict[str, Any]) -> bytes:
    """A worker's snapshot for the fleet view: JSON, zlib-compressed, the blocks' stacks left out (the
    worker's own socket has them). Sessions past what fits are left out too, counted in
    `fleet_sessions_left_out`."""
    doc = dict(doc)
    doc["blocks"] = [{**b, "stack": []} for b in doc.get("blocks", [])]
    body = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)
    sessions = list(doc.get("sessions", []))
    while len(body) > MAX_VIEW_BYTES and sessions:
        keep = len(sessions) * MAX_VIEW_BYTES // len(body) * 9 // 10
        doc["fleet_sessions_left_out"] = doc.get("fleet_sessions_left_out", 0) + len(sessions) - keep
        sessions = sessions[:keep]
        doc["sessions"] = sessions
        body = zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)
    return body


def decode_view(body: bytes) -> dict[str, Any]:
    """A snapshot from the bucket; `FleetError` when the value is not one."""
    try:
        doc = json.loads(zlib.decompress(body))
    except (zlib.error, ValueError, UnicodeDecodeError) as exc:
        raise FleetError(f"not a worker snapshot: {exc}") from None
    if not isinstance(doc, dict):
        raise FleetError("not a worker snapshot: not a JSON object")
    return doc
