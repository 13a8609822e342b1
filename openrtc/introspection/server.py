"""The socket server: a selector loop on its own thread, so it answers while the event loop is blocked.

It knows frames and ops, not pools: each op is a callable `(request, respond)`. A handler may call
`respond` at once, or later from any thread (a dispatch waits for the event loop); replies are handed
back to the server thread through a queue and a wake-up socket.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import select
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from openrtc.errors import ProtocolError
from openrtc.introspection.wire import (
    MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
    FrameDecoder,
    encode_frame,
    error_reply,
)

log = logging.getLogger("openrtc.server")

Respond = Callable[[dict[str, Any] | bytes], None]
"""Send a reply: a map, or a frame already encoded (a snapshot shared by a burst of requests)."""
OpHandler = Callable[[dict[str, Any], Respond], None]

MAX_CONNECTIONS = 512
"""Connections beyond this are accepted and closed at once, so a flood cannot exhaust fds."""
MAX_PENDING_OUT = 512 << 20
"""A client that stops reading is dropped once this many reply bytes wait for it."""
BUSY_SWITCH_INTERVAL_S = 0.0005
"""The interpreter's switch interval while the server handles requests (restored when it idles)."""
IDLE_TIMEOUT_S = 60.0
"""A connection silent for this long, with nothing left to send, is closed."""


@dataclass
class ServerStats:
    """Counters the server keeps about itself; read from any thread."""

    connections: int = 0
    """Connections accepted since start."""
    requests: int = 0
    """Requests answered since start."""
    errors: int = 0
    """Bad frames, unknown ops, dropped peers and handler failures since start."""
    last_error: str | None = None
    """The most recent of those, in words."""

    def record_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(MAX_REQUEST_BYTES))
    out: bytearray = field(default_factory=bytearray)
    last_active: float = field(default_factory=time.monotonic)
    closing: bool = False
    """Close once the queued replies are sent (after a frame that broke the stream)."""
    closed: bool = False
    awaiting: int = 0
    """Requests whose handler has not answered yet."""


class Server:
    """Serves `ops` on a listening socket from `serve_forever` (run it on a dedicated thread)."""

    def __init__(
        self,
        listener: socket.socket,
        ops: dict[str, OpHandler],
    ) -> None:
        self.stats = ServerStats()
        self._listener = listener
        self._ops = ops
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._replies: collections.deque[tuple[_Conn, bytes]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._serving_thread: threading.Thread | None = None
        self.busy = False
        """True while the server thread handles events (between two `select` calls)."""

    def stop(self) -> None:
        """Ask `serve_forever` to return; safe from any thread."""
        self._stop.set()
        self._wake()

    def _wake(self) -> None:
        # A full wake-up pipe already guarantees a wake-up; a closed one means we stopped.
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def serve_forever(self) -> None:
        self._serving_thread = threading.current_thread()
        self._listener.setblocking(False)
        self._sel.register(self._listener, selectors.EVENT_READ, None)
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        normal = sys.getswitchinterval()
        try:
            while not self._stop.is_set():
                self.busy = False
                ready = self._sel.select(1.0)
                self.busy = True
                if ready:
                    # While this thread works, the loop thread waits at most this long for the GIL
                    # (not the default 5 ms): a burst of clients barely shows in the loop's lag.
                    sys.setswitchinterval(min(normal, BUSY_SWITCH_INTERVAL_S))
                for key, events in ready:
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wakeups()
                    else:
                        conn: _Conn = key.data
                        try:
                            if events & selectors.EVENT_READ:
                                self._read(conn)
                            if events & selectors.EVENT_WRITE and not conn.closed:
                                self._flush(conn)
                        except Exception as exc:
                            # A bug here must cost one connection, never the server (or the worker).
                            self.stats.record_error(f"connection dropped: {type(exc).__name__}: {exc}")
                            log.exception("socket server error")
                            self._close(conn)
                self._reap_idle()
                if ready:
                    sys.setswitchinterval(normal)
        finally:
            sys.setswitchinterval(normal)
            for conn in list(self._conns.values()):
                self._close(conn)
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def wants_gil(self) -> bool:
        """True when the server has work it has not finished. Called from the loop thread.

        A loop saturated with short steps releases the GIL for an instant at every `select` and takes
        it straight back, so a thread waiting for the GIL can starve for seconds (a GIL convoy). Work
        is pending when the server is mid-request or one of its sockets is readable (the kernel keeps
        saying so until the server reads it).
        """
        if self.busy:
            return True
        fds = [self._listener.fileno(), self._wake_r.fileno(), *list(self._conns)]
        try:
            readable, _, _ = select.select(fds, [], [], 0)
        except (OSError, ValueError):  # a socket closed meanwhile: assume work
            return True
        return bool(readable)

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: say so, keep serving the others
                self.stats.record_error(f"accept failed: {exc}")
                return
            if len(self._conns) >= MAX_CONNECTIONS:
                self.stats.record_error(f"too many connections (limit {MAX_CONNECTIONS}); refused one")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.stats.connections += 1

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the peer hung up: nobody is left to read a reply
            self._close(conn)
            return
        conn.last_active = time.monotonic()
        try:
            frames = conn.decoder.feed(data)
        except ProtocolError as exc:
            self.stats.record_error(f"dropped a peer: {exc}")
            self._queue(conn, encode_frame(error_reply("bad_frame", str(exc))))
            conn.closing = True
            return
        for frame in frames:
            if isinstance(frame, ProtocolError):
                self.stats.record_error(str(frame))
                self._queue(conn, encode_frame(error_reply("bad_frame", str(frame))))
            else:
                self._handle(conn, frame)

    def _handle(self, conn: _Conn, request: dict[str, Any]) -> None:
        version = request.get("v")
        op = request.get("op")
        if version != PROTOCOL_VERSION:
            self._reject(
                conn,
                "unsupported_version",
                f"protocol version {version!r} is not supported; this worker speaks {PROTOCOL_VERSION}",
                supported=PROTOCOL_VERSION,
            )
            return
        if not isinstance(op, str):
            self._reject(conn, "bad_request", "request has no string 'op'")
            return
        handler = self._ops.get(op)
        if handler is None:
            self._reject(conn, "unknown_op", f"unknown op {op!r}; known ops: {', '.join(sorted(self._ops))}")
            return
        conn.awaiting += 1
        answered = False

        def respond(reply: dict[str, Any] | bytes) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            frame = reply if isinstance(reply, bytes) else encode_frame(reply)
            if threading.current_thread() is self._serving_thread:
                conn.awaiting -= 1
                self._queue(conn, frame)
            else:
                self._replies.append((conn, frame))
                self._wake()

        try:
            handler(request, respond)
        except Exception as exc:
            self.stats.record_error(f"op {op!r} failed: {type(exc).__name__}: {exc}")
            log.exception("op %r failed", op)
            respond(error_reply("internal", f"op {op!r} failed: {type(exc).__name__}: {exc}"))
        self.stats.requests += 1

    def _reject(self, conn: _Conn, code: str, message: str, **details: Any) -> None:
        self.stats.record_error(message)
        self._queue(conn, encode_frame(error_reply(code, message, **details)))

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        while self._replies:
            conn, frame = self._replies.popleft()
            conn.awaiting -= 1
            self._queue(conn, frame)

    def _queue(self, conn: _Conn, frame: bytes) -> None:
        if conn.closed:
            return
        conn.out += frame
        if len(conn.out) > MAX_PENDING_OUT:
            self.stats.record_error("dropped a client that does not read its replies")
            self._close(conn)
            return
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        if conn.out:
            try:
                sent = conn.sock.send(conn.out)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            del conn.out[:sent]
            conn.last_active = time.monotonic()
        if conn.out:
            self._sel.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, conn)
        elif conn.closing and not conn.awaiting:
            self._close(conn)
        else:
            self._sel.modify(conn.sock, selectors.EVENT_READ, conn)

    def _reap_idle(self) -> None:
        deadline = time.monotonic() - IDLE_TIMEOUT_S
        for conn in [c for c in self._conns.values() if c.last_active < deadline and not c.awaiting]:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(conn.sock)
        conn.sock.close()
