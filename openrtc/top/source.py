"""Where the live `top` gets its data: every worker socket of this user, polled, with gone workers kept.

Blocking I/O only (the app calls `fetch` from a thread). The app never touches sockets itself, so tests
give it a source made of fixed snapshots.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from openrtc.errors import OpenRTCError, SchemaVersionError, SocketError, WorkerUnresponsive
from openrtc.introspection.client import WorkerClient
from openrtc.introspection.ledger import DeadWorker, dead_workers
from openrtc.introspection.paths import check_private_dir, remove_if_dead, socket_dir
from openrtc.introspection.schema import Snapshot
from openrtc.introspection.selection import Selection

GONE_KEEP_S = 30.0
"""How long a worker that stopped answering stays on screen, marked gone."""


@dataclass(frozen=True)
class WorkerView:
    """One worker as `top` last saw it."""

    socket_path: Path
    """Its socket: what identifies it to `top`."""
    snapshot: Snapshot | None
    """Its latest snapshot (the last good one if it is gone); None if none was ever read."""
    error: str | None
    """Why the latest read failed (a schema mismatch, a dead socket), in words; None if it worked."""
    gone: bool
    """True when the worker stopped answering: its sessions are no longer listed."""


@dataclass(frozen=True)
class Fetch:
    """Everything one refresh found."""

    folder: Path
    """The folder searched for sockets (shown when no worker runs)."""
    workers: tuple[WorkerView, ...]
    """Every worker, live or recently gone, in socket order."""
    socket: Path | None = None
    """The one socket asked for (`top --socket`), else None: every socket of `folder`."""
    fleet: str | None = None
    """The fleet's NATS URL (`top --nats`), else None: this machine's sockets."""


class Source(Protocol):
    """What the app reads from and sends cancels to."""

    @property
    def folder(self) -> Path: ...

    def fetch(self, want: Selection | None = None) -> Fetch:
        """Every worker: the sessions `want` asks for (None: all of them)."""
        ...

    def cancel(self, socket_path: Path, session_id: str) -> None: ...

    def profile(self, socket_path: Path, session_id: str | None, seconds: float) -> Path:
        """Record a CPU profile (of one session, or the whole worker); the flamegraph file written."""
        ...


class LiveSource:
    """The real workers: every socket in the user's folder, or just `socket`."""

    def __init__(
        self,
        socket: Path | None = None,
        folder: Path | None = None,
        timeout: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._socket = socket
        self.folder = socket.parent if socket is not None else (folder or socket_dir())
        self._timeout = timeout
        self._clock = clock
        self._last: dict[Path, Snapshot] = {}
        self._gone_since: dict[Path, float] = {}

    def _paths(self) -> list[Path]:
        if self._socket is not None:
            return [self._socket]
        try:
            check_private_dir(self.folder)
        except SocketError:
            return []  # missing (no worker yet) or unsafe: the empty screen names the folder
        return sorted(self.folder.glob("*.sock"))

    def fetch(self, want: Selection | None = None) -> Fetch:
        now = self._clock()
        views: dict[Path, WorkerView] = {}
        for path in self._paths():
            try:
                with WorkerClient(path, self._timeout) as client:
                    snapshot = client.snapshot(want)
            except (SchemaVersionError, WorkerUnresponsive) as exc:
                # Alive but not readable: listed with why, not taken for gone.
                views[path] = WorkerView(path, None, str(exc), False)
                continue
            except OpenRTCError as exc:
                # Only a failed read pays for the liveness probe that may remove a dead socket.
                if self._socket is None:
                    remove_if_dead(path)
                if path in self._last:
                    self._gone_since.setdefault(path, now)
                    views[path] = WorkerView(path, self._last[path], str(exc), True)
                continue  # never seen: a worker still starting, or not one at all
            self._last[path] = snapshot
            self._gone_since.pop(path, None)
            views[path] = WorkerView(path, snapshot, None, False)
        answered = [p for p, v in views.items() if not v.gone]
        dead = {d.ledger.with_suffix(".sock"): d for d in self._dead_workers(answered)}
        for path, snapshot in list(self._last.items()):
            if path in views:
                continue
            since = self._gone_since.setdefault(path, now)
            if now - since > GONE_KEEP_S and path not in dead:
                del self._last[path], self._gone_since[path]
            else:
                why = dead[path].describe() if path in dead else "the worker exited"
                views[path] = WorkerView(path, snapshot, why, True)
        for path, worker in dead.items():  # died before this `top` saw it: listed until a new worker starts
            if path not in views and (self._socket is None or path == self._socket):
                views[path] = WorkerView(path, None, worker.describe(), True)
        return Fetch(self.folder, tuple(views[p] for p in sorted(views)), self._socket)

    def _dead_workers(self, answered: list[Path]) -> list[DeadWorker]:
        try:
            check_private_dir(self.folder)
        except SocketError:
            return []
        return dead_workers(self.folder, answered)

    def cancel(self, socket_path: Path, session_id: str) -> None:
        """Ask the worker to cancel the session; raises `OpenRTCError` (e.g. `RemoteError`) if it cannot."""
        with WorkerClient(socket_path, self._timeout) as client:
            client.request("cancel", session_id=session_id, reason="cancelled_by_user")

    def profile(self, socket_path: Path, session_id: str | None, seconds: float) -> Path:
        """Record a CPU profile and write it as an interactive flamegraph (`.svg`) in the profiles folder;
        raises `OpenRTCError` if it cannot."""
        from openrtc.profile.files import save_svg
        from openrtc.profile.stacks import from_wire

        request: dict[str, Any] = {"seconds": seconds}
        if session_id is not None:
            request["session_id"] = session_id
        with WorkerClient(socket_path, self._timeout + seconds + 10) as client:
            profile = from_wire(client.request("profile", **request)["profile"])
        return save_svg(profile, session_id or f"worker-{socket_path.stem}")
