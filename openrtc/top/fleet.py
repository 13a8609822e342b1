"""Where `openrtc top --nats` gets its data: the fleet view bucket, every worker of the fleet, a worker
that stopped putting its snapshot kept a while, marked gone (as a local worker whose socket stopped
answering). Cancels go to the session's worker over NATS."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from openrtc.errors import OpenRTCError
from openrtc.introspection.schema import Snapshot, from_dict
from openrtc.introspection.selection import Selection
from openrtc.top.source import GONE_KEEP_S, Fetch, WorkerView

T = TypeVar("T")


class FleetSource:
    """The fleet at `url`, for the live view: one NATS connection on a thread of its own."""

    def __init__(self, url: str, timeout: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.url = url
        self.folder = Path(".")  # not read: `Fetch.fleet` names where the view comes from
        self._timeout = timeout
        self._clock = clock
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openrtc-top-nats", daemon=True)
        self._thread.start()
        self._nc: Any = None
        self._last: dict[Path, Snapshot] = {}
        self._gone_since: dict[Path, float] = {}

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self._timeout + 5)

    async def _connection(self) -> Any:
        from openrtc.fleet.client import connect

        if self._nc is None or self._nc.is_closed:
            self._nc = await connect(self.url, name="openrtc-top")
        return self._nc

    def fetch(self, want: Selection | None = None) -> Fetch:
        """Every worker's view as it put it (`want` is not sent: a worker puts one view for all)."""
        from openrtc.fleet.view import FleetWorker, read_fleet

        async def read() -> list[FleetWorker]:
            return await read_fleet(await self._connection())

        now = self._clock()
        try:
            workers = self._run(read())
        except OpenRTCError as exc:
            # The server is away: every worker as last seen, marked gone with why.
            seen = [WorkerView(path, snap, str(exc), True) for path, snap in sorted(self._last.items())]
            return Fetch(self.folder, tuple(seen), fleet=self.url)
        views: dict[Path, WorkerView] = {}
        for worker in workers:
            path = Path(worker.worker_id)
            try:
                snapshot = from_dict(worker.doc)
            except OpenRTCError as exc:
                views[path] = WorkerView(path, None, str(exc), False)
                continue
            if worker.stale:
                self._gone_since.setdefault(path, now)
                why = f"no update for {worker.behind_s:.0f} s: stopping, stuck or dead"
                views[path] = WorkerView(path, snapshot, why, True)
                continue
            self._last[path] = snapshot
            self._gone_since.pop(path, None)
            views[path] = WorkerView(path, snapshot, None, False)
        for path, snapshot in list(self._last.items()):
            if path in views:
                continue
            since = self._gone_since.setdefault(path, now)
            if now - since > GONE_KEEP_S:
                del self._last[path], self._gone_since[path]
            else:
                views[path] = WorkerView(path, snapshot, "left the fleet view", True)
        ordered = sorted(views.values(), key=_host_pid)
        return Fetch(self.folder, tuple(ordered), fleet=self.url)

    def cancel(self, socket_path: Path, session_id: str) -> None:
        """Ask the session's worker (named by `socket_path`: its worker id here) to cancel it."""
        from openrtc.fleet.view import cancel_session

        async def cancel() -> bool:
            return await cancel_session(await self._connection(), socket_path.name, session_id, self._timeout)

        if not self._run(cancel()):
            raise OpenRTCError(f"session {session_id} is no longer running on its worker")

    def close(self) -> None:
        async def close() -> None:
            if self._nc is not None:
                await self._nc.close()

        try:
            self._run(close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
            self._loop.close()

    def profile(self, socket_path: Path, session_id: str | None, seconds: float) -> Path:
        raise OpenRTCError("profiles need the worker's socket: run `openrtc profile` on its host")


def _host_pid(view: WorkerView) -> tuple[str, int]:
    if view.snapshot is None:
        return ("", 0)
    return (view.snapshot.worker.hostname, view.snapshot.worker.pid)
