"""The fleet view: each worker puts its snapshot into the `openrtc_workers` bucket (`ViewWriter`, on
the worker's fleet thread); `openrtc top --nats` reads every worker's latest (`read_fleet`) and sends
a cancel to one worker (`cancel_session`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from openrtc.fleet.protocol import (
    CONTROL_PREFIX,
    STALE_AFTER_S,
    VIEW_EVERY_S,
    WORKERS_BUCKET,
    WORKERS_TTL_S,
    FleetError,
    decode_view,
    encode_view,
)

log = logging.getLogger("openrtc.fleet")


class ViewWriter:
    """Puts a worker's snapshot into the fleet view every `VIEW_EVERY_S` (less often when it takes long
    to build), until cancelled; `remove` takes the worker out."""

    def __init__(self, js: Any, worker_id: str, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._js = js
        self._worker_id = worker_id
        self._snapshot = snapshot
        self._bucket: Any = None

    async def run(self) -> None:
        from nats.js.api import KeyValueConfig
        from nats.js.errors import BucketNotFoundError

        every = VIEW_EVERY_S
        while True:
            try:
                if self._bucket is None:
                    try:
                        self._bucket = await self._js.key_value(WORKERS_BUCKET)
                    except BucketNotFoundError:
                        config = KeyValueConfig(bucket=WORKERS_BUCKET, ttl=WORKERS_TTL_S)
                        self._bucket = await self._js.create_key_value(config)
                # The snapshot is built on this thread, as the socket server builds it on its own.
                # It holds the GIL (JSON and compression alone: 50 ms for 10,000 synthetic rows), so
                # it takes at most a tenth of the time: a bigger worker puts less often.
                began = time.perf_counter()
                body = encode_view(self._snapshot())
                every = max(VIEW_EVERY_S, 10 * (time.perf_counter() - began))
                await self._bucket.put(self._worker_id, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("fleet: view not put: %s: %s", type(exc).__name__, exc)
            await asyncio.sleep(every)

    async def remove(self) -> None:
        if self._bucket is not None:
            with contextlib.suppress(Exception):
                await self._bucket.delete(self._worker_id)


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
