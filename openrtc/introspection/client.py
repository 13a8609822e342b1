"""Blocking client for a worker's socket, used by the CLI, `top` and tests."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openrtc.errors import (
    ProtocolError,
    RemoteError,
    SchemaVersionError,
    SocketError,
    WorkerNotFound,
    WorkerUnresponsive,
)
from openrtc.introspection.paths import check_private_dir, remove_if_dead, socket_dir
from openrtc.introspection.schema import Snapshot, from_dict
from openrtc.introspection.selection import Selection
from openrtc.introspection.wire import (
    HEADER_SIZE,
    MAX_REPLY_BYTES,
    PROTOCOL_VERSION,
    decode_body,
    encode_frame,
)


class WorkerClient:
    """One connection to one worker. Each `request` sends a frame and waits for its reply."""

    def __init__(self, path: str | Path, timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(str(self.path))
        except OSError as exc:
            self._sock.close()
            raise WorkerNotFound(f"no worker answers on {self.path}: {exc.strerror or exc}") from exc

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def request(self, op: str, **fields: Any) -> Any:
        """Send `op` and return the reply's `data`; an error reply raises `RemoteError`."""
        try:
            self._sock.sendall(encode_frame({"v": PROTOCOL_VERSION, "op": op, **fields}))
            header = self._recv_exact(HEADER_SIZE)
            size = int.from_bytes(header, "big")
            if size == 0 or size > MAX_REPLY_BYTES:
                raise ProtocolError(f"worker sent a frame of {size} bytes (limit {MAX_REPLY_BYTES})")
            reply = decode_body(self._recv_exact(size))
        except TimeoutError as exc:
            raise WorkerUnresponsive(
                f"the worker on {self.path} is alive (it accepted the connection) but did not answer "
                f"{op!r} within {self.timeout:g}s"
            ) from exc
        except OSError as exc:
            raise WorkerNotFound(f"lost the worker on {self.path}: {exc.strerror or exc}") from exc
        return unwrap_reply(reply)

    def snapshot(self, want: Selection | None = None) -> Snapshot:
        """The worker's snapshot: every session, or the rows `want` asks for."""
        return from_dict(self.request("snapshot", **({} if want is None else want.to_wire())))

    def _recv_exact(self, n: int) -> bytes:
        chunks = bytearray()
        while len(chunks) < n:
            chunk = self._sock.recv(min(n - len(chunks), 1 << 20))
            if not chunk:
                raise ProtocolError(f"worker on {self.path} closed the connection mid-reply")
            chunks += chunk
        return bytes(chunks)


def unwrap_reply(reply: dict[str, Any]) -> Any:
    """The `data` of an ok reply; raise the matching error for anything else."""
    version = reply.get("v")
    if version != PROTOCOL_VERSION:
        raise SchemaVersionError(
            f"worker speaks protocol version {version!r}; this client speaks {PROTOCOL_VERSION}: "
            "upgrade the older side"
        )
    if reply.get("ok") is True:
        return reply.get("data")
    error = reply.get("error")
    if not isinstance(error, dict):
        raise ProtocolError(f"malformed reply: {reply!r}")
    details = {k: v for k, v in error.items() if k not in ("code", "message")}
    raise RemoteError(str(error.get("code", "unknown")), str(error.get("message", "")), details)


@dataclass(frozen=True)
class FoundWorker:
    """A live worker found in the socket folder, with what it said to `hello`."""

    socket_path: Path
    """Its socket."""
    hello: dict[str, Any]
    """Its `hello` reply."""


def find_workers(folder: Path | None = None, timeout: float = 2.0) -> list[FoundWorker]:
    """Every live worker in `folder` (default: this user's socket folder), cleaning dead sockets.

    Raises `WorkerNotFound`, naming the folder, when none answers.
    """
    folder = socket_dir() if folder is None else folder
    try:
        check_private_dir(folder)
    except SocketError as exc:
        if not folder.exists():
            raise WorkerNotFound(f"no worker running: {folder} does not exist") from None
        raise WorkerNotFound(str(exc)) from exc
    found: list[FoundWorker] = []
    silent: list[WorkerUnresponsive] = []
    for path in sorted(folder.glob("*.sock")):
        if remove_if_dead(path):
            continue
        try:
            with WorkerClient(path, timeout) as client:
                found.append(FoundWorker(path, client.request("hello")))
        except SchemaVersionError:
            raise
        except WorkerUnresponsive as exc:
            silent.append(exc)
        except (WorkerNotFound, ProtocolError, RemoteError):
            continue
    if not found and silent:
        raise WorkerUnresponsive("; ".join(str(e) for e in silent))
    if not found:
        raise WorkerNotFound(f"no worker running: no live socket in {folder}")
    return found
