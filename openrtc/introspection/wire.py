"""The worker socket's protocol: versions, size limits and reply shapes, over `openrtc._framing`."""

from __future__ import annotations

from typing import Any

from openrtc._framing import HEADER_SIZE, FrameDecoder, encode_frame
from openrtc._framing import unpack as decode_body

__all__ = [
    "HEADER_SIZE",
    "MAX_REPLY_BYTES",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "decode_body",
    "encode_frame",
    "error_reply",
    "ok_reply",
]

PROTOCOL_VERSION = 1
"""The `v` every request and reply carries."""
MAX_REQUEST_BYTES = 1 << 20
"""Largest request a worker accepts: requests are small; anything bigger is garbage or abuse."""
MAX_REPLY_BYTES = 256 << 20
"""Largest reply a client accepts: a snapshot of tens of thousands of sessions fits well within it."""


def ok_reply(data: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": True, "data": data}


def error_reply(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"v": PROTOCOL_VERSION, "ok": False, "error": {"code": code, "message": message, **details}}
