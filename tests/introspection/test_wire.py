"""Framing is pure: round trips, split delivery, and hostile input that must not crash the decoder."""

from __future__ import annotations

import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openrtc import ProtocolError
from openrtc.introspection.wire import FrameDecoder, encode_frame, error_reply, ok_reply

values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)
maps = st.dictionaries(st.text(max_size=10), values, max_size=6)


@given(st.lists(maps, min_size=1, max_size=5), st.integers(1, 64))
def test_round_trip_in_any_chunking(messages: list[dict[str, object]], chunk: int) -> None:
    stream = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder(1 << 20)
    out: list[object] = []
    for i in range(0, len(stream), chunk):
        out += decoder.feed(stream[i : i + chunk])
    assert out == messages
    assert decoder.pending == 0


@settings(max_examples=300)
@given(st.binary(max_size=512))
def test_random_bytes_never_crash(data: bytes) -> None:
    decoder = FrameDecoder(1024)
    try:
        for frame in decoder.feed(data):
            assert isinstance(frame, dict | ProtocolError)
    except ProtocolError:
        pass


def test_bad_body_is_reported_and_stream_stays_in_step() -> None:
    garbage = b"\xc1\xc1\xc1"  # 0xc1 is never valid msgpack
    not_a_map = msgpack.packb([1, 2])
    stream = (
        struct.pack(">I", len(garbage))
        + garbage
        + struct.pack(">I", len(not_a_map))
        + not_a_map
        + encode_frame({"op": "hello"})
    )
    frames = FrameDecoder(1024).feed(stream)
    assert isinstance(frames[0], ProtocolError) and "msgpack" in str(frames[0])
    assert isinstance(frames[1], ProtocolError) and "map" in str(frames[1])
    assert frames[2] == {"op": "hello"}


@pytest.mark.parametrize(("prefix", "message"), [(0, "zero-length"), (2**32 - 1, "exceeds the limit")])
def test_unusable_lengths_break_the_stream(prefix: int, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder(1024).feed(struct.pack(">I", prefix) + b"xx")


def test_truncated_frame_waits_for_more() -> None:
    frame = encode_frame({"op": "snapshot"})
    decoder = FrameDecoder(1024)
    assert decoder.feed(frame[:-1]) == []
    assert decoder.feed(frame[-1:]) == [{"op": "snapshot"}]


def test_reply_shapes() -> None:
    assert ok_reply({"a": 1}) == {"v": 1, "ok": True, "data": {"a": 1}}
    assert error_reply("bad", "why", cap="x") == {
        "v": 1,
        "ok": False,
        "error": {"code": "bad", "message": "why", "cap": "x"},
    }


def test_a_frame_nested_too_deeply_says_so() -> None:
    body = b"\x91" * 100_000 + b"\xc0"  # a list in a list in a list..., 100,000 deep
    (frame,) = FrameDecoder(1 << 20).feed(struct.pack(">I", len(body)) + body)
    assert isinstance(frame, ProtocolError)
    assert str(frame) == "frame is not valid msgpack: nested too deeply"


def test_pop_takes_one_frame_and_leaves_the_rest_undecoded() -> None:
    decoder = FrameDecoder(1 << 20)
    decoder.push(encode_frame({"a": 1}) + encode_frame({"b": 2})[:3])
    assert decoder.pop() == {"a": 1}
    assert decoder.pop() is None and decoder.pending == 3
