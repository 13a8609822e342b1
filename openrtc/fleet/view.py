"""Reading the fleet view: every worker's latest snapshot from the `openrtc_workers` bucket, and a cancel
sent to one worker. What `openrtc top --nats` shows."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from openrtc.fleet.protocol import (
    CONTROL_PREFIX,
    STALE_AFTER_S,
    WORKERS_BUCKET,
    FleetError,
    decode_view,
)

log = logging.getLogger("openrtc.fleet")


@dataclass(frozen=True)
class FleetWorker:
    """One worker as the bucket holds it."""

    worker_id: str
    """Its id (the bucket's key)."""
    doc: dict[str, Any]
    """Its latest snapshot, in wire form (what `top --once --json` prints for a local worker)."""
    behind_s: float
    """How much older its latest put is than the fleet's newest (by the server's clock: the hosts'
    clocks need not agree)."""

    @property
    def stale(self) -> bool:
        """It missed its last puts: it is stopping, stuck without the GIL, or dead (its key expires)."""
        return self.behind_s > STALE_AFTER_S


def _seconds(created: Any) -> float:
    """A message's time, from the server (a datetime; nanoseconds in some nats-py versions)."""
    if isinstance(created, datetime):
        return created.timestamp()
    if isinstance(created, int | float):
        return float(created) / (1e9 if created > 1e12 else 1.0)
    return 0.0


def stale_marks(puts: dict[str, float]) -> dict[str, float]:
    """Each worker's lag behind the newest put (pure)."""
    newest = max(puts.values(), default=0.0)
    return {worker: round(newest - at, 3) for worker, at in puts.items()}


async def read_fleet(nc: Any) -> list[FleetWorker]:
    """Every worker in the view, by host then pid; a value that is not a snapshot is skipped (logged)."""
    from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError

    js = nc.jetstream()
    try:
        bucket = await js.key_value(WORKERS_BUCKET)
        keys = await bucket.keys()
    except (BucketNotFoundError, NoKeysError):
        return []
    docs: dict[str, dict[str, Any]] = {}
    puts: dict[str, float] = {}
    for key in keys:
        # The stream's message, not the bucket's entry: it carries the server's time of the put.
        try:
            msg = await js.get_last_msg(f"KV_{WORKERS_BUCKET}", f"$KV.{WORKERS_BUCKET}.{key}")
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                continue  # the worker stopped meanwhile
            docs[key] = decode_view(msg.data or b"")
        except NotFoundError:  # expired or deleted meanwhile
            continue
        except FleetError as exc:
            log.warning("fleet view: worker %s: %s", key, exc)
            continue
        puts[key] = _seconds(msg.time)
    behind = stale_marks(puts)
    workers = [FleetWorker(key, doc, behind[key]) for key, doc in docs.items()]
    return sorted(
        workers, key=lambda w: (str(w.doc["worker"].get("hostname")), int(w.doc["worker"].get("pid", 0)))
    )


async def cancel_session(nc: Any, worker_id: str, session_id: str, timeout: float = 5.0) -> bool:
    """Ask one worker of the fleet to cancel a session: True if it did, False if it had no such session."""
    try:
        reply = await nc.request(
            CONTROL_PREFIX + worker_id,
            json.dumps({"op": "cancel", "session_id": session_id}).encode(),
            timeout=timeout,
        )
        doc = json.loads(reply.data)
    except Exception as exc:
        raise FleetError(f"worker {worker_id} did not answer: {type(exc).__name__}: {exc}") from None
    if not doc.get("ok"):
        raise FleetError(f"worker {worker_id}: {doc.get('error')}")
    return bool(doc.get("cancelled"))
