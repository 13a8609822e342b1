"""The worker's socket: one front end on the pool's control side, serving the ops from its own thread.

It reads the pool only through its `PoolView` and acts on it only through its `PoolControl`, so it
answers while the event loop is blocked and never touches the loop's objects itself.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from openrtc.errors import ProtocolError, SessionRefused, UnknownAgentError
from openrtc.introspection.ledger import SUFFIX as LEDGER_SUFFIX
from openrtc.introspection.ledger import LedgerWriter, report_and_clear
from openrtc.introspection.monitor import Monitor
from openrtc.introspection.paths import bind_worker_socket, ensure_private_dir, socket_dir
from openrtc.introspection.selection import Selection, selection_from_wire
from openrtc.introspection.server import OpHandler, Respond, Server
from openrtc.introspection.snapshot import build_snapshot
from openrtc.introspection.wire import PROTOCOL_VERSION, encode_frame, error_reply, ok_reply
from openrtc.runtime.control import PoolControl, Started
from openrtc.runtime.session import Session
from openrtc.runtime.view import PoolView
from openrtc.usage.totals import Totals

log = logging.getLogger("openrtc.daemon")

MAX_DISPATCH_COUNT = 10_000
"""Most sessions one `dispatch` request may start."""
SNAPSHOT_REUSE_S = 0.2
"""Requests within this long of a snapshot get the same encoded bytes: a burst of clients (200 `top
--once` at once) costs a few builds, not one each, and leaves the event loop its share of the GIL."""


class Daemon:
    """Binds the socket and serves the ops on one thread; the monitor watches the loop from another."""

    def __init__(
        self,
        view: PoolView,
        monitor: Monitor,
        ended: Callable[[], list[Session]],
        socket_path: Path | None = None,
        worker_usage: Callable[[], Totals] | None = None,
        ops: dict[str, OpHandler] | None = None,
    ) -> None:
        assert view.control is not None
        self._view = view
        self._control: PoolControl = view.control
        self.monitor = monitor
        self._ended = ended
        self._worker_usage = worker_usage
        self._more_ops = dict(ops or {})
        self._chosen_path = socket_path is not None
        self.socket_path: Path = (
            socket_path if socket_path is not None else socket_dir() / f"{os.getpid()}.sock"
        )
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._listener: Any = None
        self._inode: int | None = None
        self._dir_fd: int | None = None
        """The socket's folder, held open: the socket and the ledger are removed from the folder they
        were made in, even if someone renamed it meanwhile."""
        self.ledger: LedgerWriter | None = None
        self._snapshot_cache: tuple[float, Selection | None, bytes] | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("daemon already started")
        folder = self.socket_path.parent
        if not self._chosen_path:
            ensure_private_dir(folder)
        report_and_clear(folder)  # the sessions of workers that died here without draining
        self._dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        self._listener = bind_worker_socket(self.socket_path, self._dir_fd)
        self._inode = os.stat(self.socket_path.name, dir_fd=self._dir_fd).st_ino
        self._server = Server(
            self._listener,
            {
                "hello": self._op_hello,
                "snapshot": self._op_snapshot,
                "dispatch": self._op_dispatch,
                "cancel": self._op_cancel,
                "drain": self._op_drain,
                **self._more_ops,
            },
            on_wake=self._on_wake,
        )
        self.ledger = LedgerWriter(self._dir_fd, self.socket_path.stem + LEDGER_SUFFIX, self._server.wake)
        self._thread = threading.Thread(target=self._server.serve_forever, name="openrtc-server", daemon=True)
        self._thread.start()
        server_thread = self._thread
        self.monitor.add_starving(self._server.wants_gil)
        self.monitor.start(self._view.loop, lambda: [server_thread.ident] if server_thread.ident else [])

    def _on_wake(self) -> None:
        if self.ledger is not None:
            self.ledger.flush()

    def close(self) -> None:
        self.monitor.close()
        if self._server is not None:
            self._server.stop()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            self._thread = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.remove_files()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def remove_files(self) -> None:
        """Remove the socket (only if it is still ours, not one a later worker bound) and the ledger,
        from the folder they were made in. Safe from any thread (the drain deadline's, at a forced exit)."""
        if self.ledger is not None:
            self.ledger.remove()
        if self._dir_fd is None:
            return
        name = self.socket_path.name
        with contextlib.suppress(FileNotFoundError):
            if os.stat(name, dir_fd=self._dir_fd).st_ino == self._inode:
                os.unlink(name, dir_fd=self._dir_fd)

    def describe_holder(self) -> str | None:
        """The session holding the loop now, and its line, as the watchdog saw it."""
        block = self.monitor.ongoing()
        if block is not None and block.session_id is not None:
            return f"session {block.session_id} ({block.agent}) at {block.where}"
        step = self.monitor.clock.current
        if step is not None:
            session = step.stats.session
            return f"session {session.id} ({session.agent})"
        return None

    @property
    def errors(self) -> int:
        return self._server.stats.errors if self._server is not None else 0

    def snapshot(self, want: Selection | None = None) -> dict[str, Any]:
        """Every session; with `want`, the rows it asks for (see `selection`)."""
        stats = self._server.stats if self._server is not None else None
        usage = self._worker_usage() if self._worker_usage is not None else None
        return build_snapshot(self._view, self.monitor, self._ended(), stats, usage, want)

    # -- ops (run on the daemon thread) ---------------------------------------------------------

    def _op_hello(self, request: dict[str, Any], respond: Respond) -> None:
        facts = self._view.facts().as_dict()
        respond(ok_reply({"protocol": PROTOCOL_VERSION, "step_timer": self.monitor.timer.name, **facts}))

    def _op_snapshot(self, request: dict[str, Any], respond: Respond) -> None:
        # Runs on the server thread only: the cache needs no lock.
        try:
            want = selection_from_wire(request)
        except ProtocolError as exc:
            respond(error_reply("bad_request", str(exc)))
            return
        now = time.monotonic()
        cached = self._snapshot_cache
        if cached is None or now - cached[0] > SNAPSHOT_REUSE_S or cached[1] != want:
            cached = self._snapshot_cache = (now, want, encode_frame(ok_reply(self.snapshot(want))))
        respond(cached[2])

    def _op_dispatch(self, request: dict[str, Any], respond: Respond) -> None:
        agent, tenant, metadata, count = (request.get(k) for k in ("agent", "tenant", "metadata", "count"))
        count = 1 if count is None else count
        problem = None
        if not isinstance(agent, str) or not agent:
            problem = "'agent' must be a non-empty string"
        elif tenant is not None and not isinstance(tenant, str):
            problem = "'tenant' must be a string"
        elif metadata is not None and not isinstance(metadata, dict):
            problem = "'metadata' must be a map"
        elif not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_DISPATCH_COUNT:
            problem = f"'count' must be an integer from 1 to {MAX_DISPATCH_COUNT}"
        if problem is not None:
            respond(error_reply("bad_request", problem))
            return
        assert isinstance(agent, str) and isinstance(count, int)
        try:
            future = self._control.start_sessions(agent, tenant=tenant, metadata=metadata or {}, count=count)
        except RuntimeError:
            respond(error_reply("not_running", "the worker's event loop is closed"))
            return

        def done(fut: concurrent.futures.Future[Started]) -> None:
            respond(_reply(fut, _dispatched))

        future.add_done_callback(done)

    def _op_cancel(self, request: dict[str, Any], respond: Respond) -> None:
        session_id, reason = request.get("session_id"), request.get("reason", "cancelled_by_user")
        if not isinstance(session_id, str) or not isinstance(reason, str):
            respond(error_reply("bad_request", "'session_id' (and 'reason', if given) must be strings"))
            return
        try:
            future = self._control.cancel(session_id, reason)
        except RuntimeError:
            respond(error_reply("not_running", "the worker's event loop is closed"))
            return

        def cancelled(found: bool) -> dict[str, Any]:
            if found:
                return ok_reply({"cancelled": session_id})
            return error_reply("not_found", f"no active session {session_id!r}")

        future.add_done_callback(lambda fut: respond(_reply(fut, cancelled)))

    def _op_drain(self, request: dict[str, Any], respond: Respond) -> None:
        try:
            self._control.drain()
        except RuntimeError:
            respond(error_reply("not_running", "the worker's event loop is closed"))
            return
        respond(ok_reply({"draining": True, "timeout_s": self._view.config.drain_timeout_s}))


def _dispatched(started: Started) -> dict[str, Any]:
    error = started.error
    if isinstance(error, UnknownAgentError):
        return error_reply("unknown_agent", str(error), agents=error.known)
    if isinstance(error, SessionRefused):
        return error_reply(
            "refused",
            str(error),
            reason=error.reason.value,
            cap=error.reason.value,
            started=started.session_ids,
        )
    return ok_reply({"session_ids": started.session_ids})


def _reply(future: concurrent.futures.Future[Any], make: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """The reply for a control call's outcome (an error reply when it did not complete)."""
    if future.cancelled():
        return error_reply("not_running", "the worker stopped before answering")
    exc = future.exception()
    if exc is not None:
        return error_reply("internal", f"{type(exc).__name__}: {exc}")
    return make(future.result())
