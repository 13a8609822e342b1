"""Framing, below every socket and pipe protocol of openrtc. Pure: bytes in, values out.

- A stream (the worker's socket, a session process's channel) carries frames: a 4-byte big-endian
  length, then one msgpack map (`encode_frame`, `FrameDecoder`).
- A message socket (`SOCK_SEQPACKET`, the template process's control channel) carries one msgpack map
  per message, its boundaries kept by the socket (`pack`, `unpack`).
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

from openrtc.errors import ProtocolError

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size


def pack(message: dict[str, Any]) -> bytes:
    """One map as msgpack bytes."""
    data: bytes = msgpack.packb(message, use_bin_type=True)
    return data


def unpack(body: bytes) -> dict[str, Any]:
    """Bytes into a map, or `ProtocolError` saying what was wrong."""
    try:
        value = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except msgpack.StackError as exc:  # its message is empty
        raise ProtocolError("frame is not valid msgpack: nested too deeply") from exc
    except Exception as exc:  # msgpack raises several types on hostile input (ValueError, TypeError...)
        detail = str(exc) or "malformed"
        raise ProtocolError(f"frame is not valid msgpack: {type(exc).__name__}: {detail}") from exc
    if not isinstance(value, dict):
        raise ProtocolError(f"frame must hold a map, got {type(value).__name__}")
    return value


def encode_frame(message: dict[str, Any]) -> bytes:
    """One frame: header plus msgpack body."""
    body = pack(message)
    return _HEADER.pack(len(body)) + body


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, take whole frames out.

    A frame whose body is not a msgpack map comes out as a `ProtocolError` value: the stream is still in
    step, so the caller can answer it and go on. A length over `max_size` or a zero length raises
    `ProtocolError`: the stream can no longer be resynchronised, so the caller drops the peer.
    """

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any] | ProtocolError]:
        """Add `data` and take every whole frame out."""
        self.push(data)
        frames: list[dict[str, Any] | ProtocolError] = []
        while (frame := self.pop()) is not None:
            frames.append(frame)
        return frames

    def push(self, data: bytes) -> None:
        """Add bytes without decoding them (see `pop`)."""
        self._buf += data

    def pop(self) -> dict[str, Any] | ProtocolError | None:
        """The next whole frame, or None while it has not fully arrived. The bytes after it stay
        undecoded: a server that answers one request at a time holds raw bytes, not decoded values."""
        if len(self._buf) < HEADER_SIZE:
            return None
        (size,) = _HEADER.unpack_from(self._buf)
        if size == 0:
            raise ProtocolError("zero-length frame")
        if size > self.max_size:
            raise ProtocolError(f"frame of {size} bytes exceeds the limit of {self.max_size}")
        end = HEADER_SIZE + size
        if len(self._buf) < end:
            return None
        body = bytes(self._buf[HEADER_SIZE:end])
        del self._buf[:end]
        try:
            return unpack(body)
        except ProtocolError as exc:
            return exc

    @property
    def pending(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buf)
