"""The socket server: a selector loop on its own thread, so it answers while the event loop is blocked.

It knows frames and ops, not pools: each op is a callable `(request, respond)`. A handler may call
`respond` at once, or later from any thread (a dispatch waits for the event loop); replies are handed
back to the server thread through a queue and a wake-up socket.

What a client can make it hold is bounded, for the whole worker, not per connection:
- one request at a time per connection: the next is read only once the reply to the last one has
  left, so a client that sends thousands of requests and reads nothing holds one reply, and the
  kernel's socket buffers push back on it;
- the reply bytes waiting in every connection together stay under `MAX_BUFFERED_BYTES` (a reply shared
  by a burst of clients, the cached snapshot, counts once): past it, the connection that has waited
  longest without reading is dropped;
- a partial request must complete within `PARTIAL_FRAME_TIMEOUT_S` and a reply must make progress
  within `WRITE_STALL_TIMEOUT_S`; a silent connection is closed after `IDLE_TIMEOUT_S`;
- when `MAX_CONNECTIONS` are open, a new client takes the place of the one idle the longest, so a
  client holding every slot cannot lock `top` out.
Each drop is counted in `ServerStats` and logged at most once per `LOG_EVERY_S`.
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
from openrtc.introspection.ratelimit import Every
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
"""Open connections at most; a new one beyond it replaces the connection idle the longest."""
MAX_BUFFERED_BYTES = 16 << 20
"""Reply bytes waiting to be sent, all connections together."""
READ_CHUNK = 65536
BUSY_SWITCH_INTERVAL_S = 0.0005
"""The interpreter's switch interval while the server handles requests (restored when it idles)."""
IDLE_TIMEOUT_S = 60.0
"""A connection with no whole request and nothing to send for this long is closed."""
PARTIAL_FRAME_TIMEOUT_S = 10.0
"""A request must arrive whole within this long of its first byte (a byte now and then is not activity)."""
WRITE_STALL_TIMEOUT_S = 10.0
"""A reply that makes no progress for this long: the client does not read, and is dropped."""
TICK_S = 1.0
"""How often the timeouts are checked."""
STOP_FLUSH_S = 1.0
"""On stop, how long the last replies (to requests that will not run now) get to leave."""
LOG_EVERY_S = 5.0


@dataclass
class ServerStats:
    """Counters the server keeps about itself; read from any thread."""

    connections: int = 0
    """Connections accepted since start."""
    requests: int = 0
    """Requests answered since start."""
    errors: int = 0
    """Bad frames, unknown ops and handler failures since start."""
    last_error: str | None = None
    """The most recent of those, in words."""
    open: int = 0
    """Connections open now."""
    buffered_bytes: int = 0
    """Reply bytes waiting to be sent now, all connections together."""
    dropped_unread: int = 0
    """Clients dropped because they did not read their replies (stalled, or over the byte budget)."""
    dropped_slow: int = 0
    """Clients dropped because a request did not arrive whole in time."""
    evicted: int = 0
    """Idle connections closed to make room for a new client (every slot was taken)."""

    def record_error(self, message: str) -> None:
        self.errors += 1
        self.last_error = message


@dataclass(eq=False)
class _Conn:
    sock: socket.socket
    decoder: FrameDecoder = field(default_factory=lambda: FrameDecoder(MAX_REQUEST_BYTES))
    out: collections.deque[bytes] = field(default_factory=collections.deque)
    """Replies waiting, whole; `sent` bytes of the first have left."""
    sent: int = 0
    last_active: float = field(default_factory=time.monotonic)
    """When it last sent a whole request or received reply bytes."""
    partial_since: float | None = None
    """When the request being received began to arrive (None: no partial request)."""
    stalled_since: float | None = None
    """When a reply first could not be sent in full (None: nothing waiting)."""
    awaiting: Respond | None = None
    """The reply function of the request being handled elsewhere (a dispatch on the event loop)."""
    closing: bool = False
    """Close once the queued replies are sent (after a frame that broke the stream)."""
    closed: bool = False
    events: int = selectors.EVENT_READ
    """What the selector watches it for (0: nothing, while a request is handled elsewhere)."""

    @property
    def busy(self) -> bool:
        """A request is in hand or its reply has not left: the next one waits."""
        return self.awaiting is not None or bool(self.out)


class _RateLog:
    """Logs one kind of event at most once per `LOG_EVERY_S`, with how many happened meanwhile."""

    def __init__(self, message: str) -> None:
        self._message = message
        self._every = Every(LOG_EVERY_S, time.monotonic)

    def __call__(self, detail: str) -> None:
        held = self._every.due()
        if held is not None:
            more = f" ({held} more since the last such line)" if held else ""
            log.warning("%s: %s%s", self._message, detail, more)


class Server:
    """Serves `ops` on a listening socket from `serve_forever` (run it on a dedicated thread)."""

    def __init__(
        self,
        listener: socket.socket,
        ops: dict[str, OpHandler],
        clock: Callable[[], float] = time.monotonic,
        on_wake: Callable[[], None] | None = None,
    ) -> None:
        self.stats = ServerStats()
        self._on_wake = on_wake
        """Run on this thread at each wake-up (`wake`) and each tick: the owner's periodic work."""
        self._listener = listener
        self._ops = ops
        self._clock = clock
        self._sel = selectors.DefaultSelector()
        self._conns: dict[int, _Conn] = {}
        self._replies: collections.deque[tuple[_Conn, bytes]] = collections.deque()
        self._shared: dict[int, list[Any]] = {}
        """id(frame) -> [frame, how many connections hold it]: the byte budget counts a frame once."""
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._serving_thread: threading.Thread | None = None
        self._next_tick = 0.0
        self._log_drop = _RateLog("socket: dropped a client")
        self._log_evict = _RateLog("socket: every connection slot was taken; closed the one idle the longest")
        self.busy = False
        """True while the server thread handles events (between two `select` calls)."""

    def stop(self) -> None:
        """Ask `serve_forever` to return; safe from any thread. Requests still in hand are answered
        with a `not_running` error, and replies get `STOP_FLUSH_S` to leave."""
        self._stop.set()
        self._wake()

    def wake(self) -> None:
        """Wake the server thread (it then runs `on_wake`); safe from any thread."""
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
                ready = self._sel.select(TICK_S)
                self.busy = True
                if ready:
                    # While this thread works, the loop thread waits at most this long for the GIL
                    # (not the default 5 ms): a burst of clients barely shows in the loop's lag.
                    sys.setswitchinterval(min(normal, BUSY_SWITCH_INTERVAL_S))
                self._handle_events(ready)
                now = self._clock()
                if now >= self._next_tick:
                    self._next_tick = now + TICK_S
                    self._expire(now)
                    self._run_on_wake()
                if ready:
                    sys.setswitchinterval(normal)
            self._finish()
        finally:
            sys.setswitchinterval(normal)
            for conn in list(self._conns.values()):
                self._close(conn)
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()

    def _handle_events(self, ready: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, events in ready:
            if key.fileobj is self._listener:
                self._accept()
            elif key.fileobj is self._wake_r:
                self._drain_wakeups()
            else:
                conn: _Conn = key.data
                try:
                    if events & selectors.EVENT_WRITE and not conn.closed:
                        self._flush(conn)
                        self._next_request(conn)
                    if events & selectors.EVENT_READ and not conn.closed:
                        self._read(conn)
                except Exception as exc:
                    # A bug here must cost one connection, never the server (or the worker).
                    self.stats.record_error(f"connection dropped: {type(exc).__name__}: {exc}")
                    log.exception("socket server error")
                    self._close(conn)

    def _finish(self) -> None:
        """Answer what is still in hand, then give the replies a moment to leave."""
        for conn in list(self._conns.values()):
            respond = conn.awaiting
            if respond is not None:
                respond(error_reply("not_running", "the worker is shutting down; the request did not run"))
        self._drain_wakeups()
        deadline = self._clock() + STOP_FLUSH_S
        while any(c.out for c in self._conns.values()) and self._clock() < deadline:
            for key, events in self._sel.select(0.05):
                if isinstance(key.data, _Conn) and events & selectors.EVENT_WRITE:
                    self._flush(key.data)

    def wants_gil(self) -> bool:
        """True when the server has work it has not finished. Called from the loop thread.

        A loop saturated with short steps can starve this thread for seconds (a GIL convoy: see
        `Heartbeat._hand_over_gil`). Work is pending when the server is mid-request or one of its
        sockets is readable (the kernel keeps saying so until the server reads it).
        """
        if self.busy:
            return True
        fds = [self._listener.fileno(), self._wake_r.fileno()]
        fds += [fd for fd, conn in list(self._conns.items()) if not conn.busy]
        try:
            readable, _, _ = select.select(fds, [], [], 0)
        except (OSError, ValueError):  # a socket closed meanwhile: assume work
            return True
        return bool(readable)

    # -- connections ----------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: say so, keep serving the others
                self.stats.record_error(f"accept failed: {exc}")
                return
            if len(self._conns) >= MAX_CONNECTIONS and not self._evict_one():
                self.stats.record_error(f"too many busy connections (limit {MAX_CONNECTIONS}); refused one")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock, last_active=self._clock())
            self._conns[sock.fileno()] = conn
            self._sel.register(sock, selectors.EVENT_READ, conn)
            self.stats.connections += 1
            self.stats.open = len(self._conns)

    def _evict_one(self) -> bool:
        """Close the connection idle the longest (no request in hand) to make room; False if none."""
        idle = [c for c in self._conns.values() if c.awaiting is None]
        if not idle:
            return False
        victim = min(idle, key=lambda c: c.last_active)
        self.stats.evicted += 1
        self._log_evict(f"{self.stats.evicted} so far")
        self._close(victim)
        return True

    def _read(self, conn: _Conn) -> None:
        if conn.busy:  # one request at a time: the next one waits in the kernel's buffer
            return
        try:
            data = conn.sock.recv(READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:  # the peer hung up: nobody is left to read a reply
            self._close(conn)
            return
        conn.decoder.push(data)
        self._next_request(conn)

    def _next_request(self, conn: _Conn) -> None:
        """Handle the whole requests buffered for `conn`, one at a time, until one is still in hand
        or its reply could not leave at once (a loop, not recursion: a client may pipeline thousands)."""
        while not conn.busy and not conn.closed and not conn.closing:
            try:
                frame = conn.decoder.pop()
            except ProtocolError as exc:
                self.stats.record_error(f"dropped a peer: {exc}")
                conn.closing = True  # before queueing: the reply's flush then closes it
                self._queue(conn, encode_frame(error_reply("bad_frame", str(exc))))
                return
            if frame is None:
                pending = conn.decoder.pending
                if pending and conn.partial_since is None:
                    conn.partial_since = self._clock()
                elif not pending:
                    conn.partial_since = None
                self._update_interest(conn)
                return
            conn.last_active = self._clock()
            conn.partial_since = None
            if isinstance(frame, ProtocolError):
                self.stats.record_error(str(frame))
                self._queue(conn, encode_frame(error_reply("bad_frame", str(frame))))
            else:
                self._handle(conn, frame)
        self._update_interest(conn)

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
        answered = False

        def respond(reply: dict[str, Any] | bytes) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            frame = reply if isinstance(reply, bytes) else encode_frame(reply)
            if threading.current_thread() is self._serving_thread:
                self._answered(conn, frame)
            else:
                self._replies.append((conn, frame))
                self._wake()

        conn.awaiting = respond
        try:
            handler(request, respond)
        except Exception as exc:
            self.stats.record_error(f"op {op!r} failed: {type(exc).__name__}: {exc}")
            log.exception("op %r failed", op)
            respond(error_reply("internal", f"op {op!r} failed: {type(exc).__name__}: {exc}"))
        self.stats.requests += 1

    def _answered(self, conn: _Conn, frame: bytes) -> None:
        conn.awaiting = None
        self._queue(conn, frame)

    def _reject(self, conn: _Conn, code: str, message: str, **details: Any) -> None:
        self.stats.record_error(message)
        self._queue(conn, encode_frame(error_reply(code, message, **details)))

    def _run_on_wake(self) -> None:
        if self._on_wake is None:
            return
        try:
            self._on_wake()
        except Exception as exc:
            self.stats.record_error(f"periodic work failed: {type(exc).__name__}: {exc}")
            log.exception("socket server: periodic work failed")

    def _drain_wakeups(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError, OSError):
            pass
        self._run_on_wake()
        while self._replies:
            conn, frame = self._replies.popleft()
            if not conn.closed:
                self._answered(conn, frame)
                if not self._stop.is_set():
                    self._next_request(conn)

    # -- replies --------------------------------------------------------------------------------

    def _queue(self, conn: _Conn, frame: bytes) -> None:
        if conn.closed:
            return
        conn.out.append(frame)
        self._hold(frame)
        if self.stats.buffered_bytes > MAX_BUFFERED_BYTES:
            self._shed()
        if not conn.closed:
            self._flush(conn)

    def _hold(self, frame: bytes) -> None:
        entry = self._shared.get(id(frame))
        if entry is None:
            self._shared[id(frame)] = [frame, 1]
            self.stats.buffered_bytes += len(frame)
        else:
            entry[1] += 1

    def _release(self, frame: bytes) -> None:
        entry = self._shared.get(id(frame))
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._shared[id(frame)]
            self.stats.buffered_bytes -= len(frame)

    def _shed(self) -> None:
        """Over the byte budget: drop the clients that have not read for the longest until under it."""
        waiting = sorted(
            (c for c in self._conns.values() if c.out and c.stalled_since is not None),
            key=lambda c: c.stalled_since or 0.0,
        )
        for conn in waiting:
            if self.stats.buffered_bytes <= MAX_BUFFERED_BYTES:
                return
            self._drop_unread(conn, f"over the reply budget of {MAX_BUFFERED_BYTES >> 20} MB")

    def _drop_unread(self, conn: _Conn, why: str) -> None:
        self.stats.dropped_unread += 1
        self._log_drop(f"it does not read its replies ({why}); {self.stats.dropped_unread} so far")
        self._close(conn)

    def _flush(self, conn: _Conn) -> None:
        while conn.out:
            head = conn.out[0]
            try:
                sent = conn.sock.send(memoryview(head)[conn.sent :])
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                self._close(conn)
                return
            if sent:
                conn.last_active = self._clock()
                conn.stalled_since = None
            conn.sent += sent
            if conn.sent < len(head):
                break
            conn.out.popleft()
            conn.sent = 0
            self._release(head)
        if conn.out:
            if conn.stalled_since is None:
                conn.stalled_since = self._clock()
            if self.stats.buffered_bytes > MAX_BUFFERED_BYTES:
                self._shed()
        elif conn.closing and conn.awaiting is None:
            self._close(conn)
            return
        self._update_interest(conn)

    def _update_interest(self, conn: _Conn) -> None:
        """Watch for writing while a reply waits, for nothing while a request is handled elsewhere
        (the next request stays in the kernel's buffer), else for the next request."""
        if conn.closed:
            return
        if conn.out:
            events = selectors.EVENT_WRITE
        else:
            events = 0 if conn.awaiting is not None else selectors.EVENT_READ
        if events == conn.events:
            return
        with contextlib.suppress(KeyError, ValueError, OSError):
            if not events:
                self._sel.unregister(conn.sock)
            elif not conn.events:
                self._sel.register(conn.sock, events, conn)
            else:
                self._sel.modify(conn.sock, events, conn)
        conn.events = events

    def _expire(self, now: float) -> None:
        if self.stats.buffered_bytes > MAX_BUFFERED_BYTES:
            self._shed()
        for conn in list(self._conns.values()):
            if conn.closed:
                continue
            if conn.stalled_since is not None and now - conn.stalled_since > WRITE_STALL_TIMEOUT_S:
                self._drop_unread(conn, f"no progress for {WRITE_STALL_TIMEOUT_S:.0f} s")
            elif conn.partial_since is not None and now - conn.partial_since > PARTIAL_FRAME_TIMEOUT_S:
                self.stats.dropped_slow += 1
                self._log_drop(
                    f"a request did not arrive whole within {PARTIAL_FRAME_TIMEOUT_S:.0f} s; "
                    f"{self.stats.dropped_slow} so far"
                )
                self._close(conn)
            elif not conn.busy and now - conn.last_active > IDLE_TIMEOUT_S:
                self._close(conn)

    def _close(self, conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self._conns.pop(conn.sock.fileno(), None)
        if conn.events:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
        conn.sock.close()
        while conn.out:
            self._release(conn.out.popleft())
        self.stats.open = len(self._conns)
