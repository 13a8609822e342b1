"""The introspection daemon: the socket server thread and the monitor (watchdog thread + heartbeat).

It reads the pool only through values that are safe to read from another thread (ints, tuples that
are replaced whole, containers copied in one C call) and reaches the event loop only with
`run_coroutine_threadsafe` / `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from openrtc.errors import OpenRTCError, SessionRefused, UnknownAgentError
from openrtc.introspection.ledger import SUFFIX as LEDGER_SUFFIX
from openrtc.introspection.ledger import LedgerWriter, report_and_clear
from openrtc.introspection.monitor import Monitor
from openrtc.introspection.paths import bind_worker_socket, ensure_private_dir, socket_dir
from openrtc.introspection.server import Respond, Server
from openrtc.introspection.snapshot import build_snapshot
from openrtc.introspection.wire import PROTOCOL_VERSION, encode_frame, error_reply, ok_reply
from openrtc.runtime.loops import loop_name

if TYPE_CHECKING:
    from openrtc.runtime.pool import AgentPool

log = logging.getLogger("openrtc.daemon")

MAX_DISPATCH_COUNT = 10_000
"""Most sessions one `dispatch` request may start."""
SNAPSHOT_REUSE_S = 0.2
"""Requests within this long of a snapshot get the same encoded bytes: a burst of clients (200 `top
--once` at once) costs a few builds, not one each, and leaves the event loop its share of the GIL."""


class Daemon:
    """Binds the socket and serves the ops on one thread; the monitor watches the loop from another."""

    def __init__(self, pool: AgentPool, loop: asyncio.AbstractEventLoop, monitor: Monitor) -> None:
        self._pool = pool
        self._loop = loop
        self.monitor = monitor
        self._thread: threading.Thread | None = None
        self._server: Server | None = None
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._dir_fd: int | None = None
        """The socket's folder, held open: the socket and the ledger are removed from the folder they
        were made in, even if someone renamed it meanwhile."""
        self.ledger: LedgerWriter | None = None
        path = pool.config.socket_path
        self.socket_path: Path = path if path is not None else socket_dir() / f"{os.getpid()}.sock"
        self._hostname = socket.gethostname()
        self._snapshot_cache: tuple[float, bytes] | None = None

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("daemon already started")
        folder = self.socket_path.parent
        if self._pool.config.socket_path is None:
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
            },
            on_wake=self._on_wake,
        )
        self.ledger = LedgerWriter(self._dir_fd, self.socket_path.stem + LEDGER_SUFFIX, self._server.wake)
        self._thread = threading.Thread(target=self._server.serve_forever, name="openrtc-server", daemon=True)
        self._thread.start()
        server_thread = self._thread
        self.monitor.other_thread_wants_gil = self._server.wants_gil
        self.monitor.start(self._loop, lambda: [server_thread.ident] if server_thread.ident else [])

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

    def snapshot(self) -> dict[str, Any]:
        return build_snapshot(self._pool, self.monitor, self._server.stats if self._server else None)

    # -- ops (run on the daemon thread) ---------------------------------------------------------

    def _op_hello(self, request: dict[str, Any], respond: Respond) -> None:
        pool = self._pool
        respond(
            ok_reply(
                {
                    "protocol": PROTOCOL_VERSION,
                    "worker_id": pool.worker_id,
                    "pid": os.getpid(),
                    "hostname": self._hostname,
                    "started_at": pool.started_at,
                    "isolation": pool.config.isolation,
                    "loop": loop_name(self._loop),
                    "step_timer": self.monitor.timer.name,
                    "agents": list(pool.agent_names),
                    "sessions_active": pool.sessions_active,
                    "sessions_started": pool.sessions_started,
                    "sessions_failed": pool.sessions_failed,
                    "max_sessions": pool.config.limits.max_sessions,
                    "draining": pool.state != "running",
                }
            )
        )

    def _op_snapshot(self, request: dict[str, Any], respond: Respond) -> None:
        # Runs on the server thread only: the cache needs no lock.
        now = time.monotonic()
        cached = self._snapshot_cache
        if cached is None or now - cached[0] > SNAPSHOT_REUSE_S:
            cached = self._snapshot_cache = (now, encode_frame(ok_reply(self.snapshot())))
        respond(cached[1])

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
        self._on_loop(self._dispatch(agent, tenant, metadata or {}, count), respond)

    async def _dispatch(
        self, agent: str, tenant: str | None, metadata: dict[str, Any], count: int
    ) -> dict[str, Any]:
        started: list[str] = []
        try:
            for _ in range(count):
                handle = await self._pool.start_session(agent, tenant=tenant, metadata=metadata)
                started.append(handle.id)
        except UnknownAgentError as exc:
            return error_reply("unknown_agent", str(exc), agents=exc.known)
        except SessionRefused as exc:
            return error_reply("refused", str(exc), cap=exc.cap, started=started)
        return ok_reply({"session_ids": started})

    def _op_cancel(self, request: dict[str, Any], respond: Respond) -> None:
        session_id, reason = request.get("session_id"), request.get("reason", "cancelled_by_user")
        if not isinstance(session_id, str) or not isinstance(reason, str):
            respond(error_reply("bad_request", "'session_id' (and 'reason', if given) must be strings"))
            return

        async def cancel() -> dict[str, Any]:
            if self._pool.cancel(session_id, reason):
                return ok_reply({"cancelled": session_id})
            return error_reply("not_found", f"no active session {session_id!r}")

        self._on_loop(cancel(), respond)

    def _op_drain(self, request: dict[str, Any], respond: Respond) -> None:
        try:
            self._loop.call_soon_threadsafe(self._pool.request_drain)
        except RuntimeError:
            respond(error_reply("not_running", "the worker's event loop is closed"))
            return
        respond(ok_reply({"draining": True, "timeout_s": self._pool.config.drain_timeout_s}))

    def _on_loop(self, coro: Any, respond: Respond) -> None:
        """Run `coro` on the event loop; its result (a reply) goes back when the loop gets to it."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()
            respond(error_reply("not_running", "the worker's event loop is closed"))
            return

        def done(fut: concurrent.futures.Future[dict[str, Any]]) -> None:
            if fut.cancelled():
                respond(error_reply("not_running", "the worker stopped before answering"))
            elif (exc := fut.exception()) is not None:
                code = "refused" if isinstance(exc, OpenRTCError) else "internal"
                respond(error_reply(code, f"{type(exc).__name__}: {exc}"))
            else:
                respond(fut.result())

        future.add_done_callback(done)
