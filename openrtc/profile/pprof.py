"""pprof's profile format (github.com/google/pprof, proto/profile.proto), gzipped. Pure.

Written by hand, as a few protobuf fields: the message is small and stable, and a generated module
would bring the protobuf runtime to every worker for one file format. Every frame of a stack is a
location (leaf first, as pprof wants); the agent, session and tag frames are also sample labels, so
`pprof -tagfocus session=...` works.
"""

from __future__ import annotations

import gzip
import time

from openrtc.profile.stacks import Profile
from openrtc.profile.tree import split_frame

LABELLED = ("agent", "session", "tag")


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # int64 fields: two's complement, ten bytes when negative
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _int(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value) if value else b""


def _bytes(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _packed(number: int, values: list[int]) -> bytes:
    return _bytes(number, b"".join(_varint(v) for v in values)) if values else b""


class _Strings:
    def __init__(self) -> None:
        self.table = [""]
        self.index = {"": 0}

    def __call__(self, text: str) -> int:
        found = self.index.get(text)
        if found is None:
            found = self.index[text] = len(self.table)
            self.table.append(text)
        return found


def pprof(profile: Profile, now: float | None = None) -> bytes:
    """The profile as a gzipped `perftools.profiles.Profile` message."""
    s = _Strings()
    functions: dict[str, int] = {}
    body = bytearray()
    if profile.sample_ms is not None:
        value_types = [("samples", "count"), ("wall", "nanoseconds")]
    else:
        value_types = [({"ms": "wall", "tokens": "tokens", "calls": "calls"}[profile.unit], profile.unit)]
    for kind, unit in value_types:
        body += _bytes(1, _int(1, s(kind)) + _int(2, s(unit)))
    for stack, weight in sorted(profile.stacks.items()):
        locations = []
        for name in stack:
            fid = functions.get(name)
            if fid is None:
                fid = functions[name] = len(functions) + 1
            locations.append(fid)  # one location per function: location id = function id
        locations.reverse()
        if profile.sample_ms is not None:
            values = [round(weight), round(weight * profile.sample_ms * 1e6)]
        elif profile.unit == "ms":
            values = [round(weight * 1e6)]
        else:
            values = [round(weight)]
        sample = _packed(1, locations) + _packed(2, values)
        for frame in stack:
            key, sep, value = frame.partition(":")
            if sep and key in LABELLED:
                sample += _bytes(3, _int(1, s(key)) + _int(2, s(value)))
        body += _bytes(2, sample)
    for name, fid in functions.items():
        function, file, line = split_frame(name)
        line_msg = _int(1, fid) + _int(2, line or 0)
        body += _bytes(4, _int(1, fid) + _bytes(4, line_msg))
        body += _bytes(5, _int(1, fid) + _int(2, s(function)) + _int(3, s(function)) + _int(4, s(file or "")))
    body += _int(9, int((now if now is not None else time.time()) * 1e9))
    if profile.sample_ms is not None:
        seconds = profile.meta.get("seconds")
        if isinstance(seconds, int | float):
            body += _int(10, int(seconds * 1e9))
        body += _bytes(11, _int(1, s("wall")) + _int(2, s("nanoseconds")))
        body += _int(12, round(profile.sample_ms * 1e6))
    body += b"".join(_bytes(6, text.encode()) for text in s.table)  # last: every string is in it now
    return gzip.compress(bytes(body), mtime=0)
