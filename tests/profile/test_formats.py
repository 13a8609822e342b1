"""Every output format checked against its own specification: the folded text parsed back, speedscope's
published JSON schema, pprof's profile.proto decoded by protobuf, the SVG parsed as XML."""

from __future__ import annotations

import gzip
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from openrtc.profile.formats import format_of, render
from openrtc.profile.stacks import Profile, ProfileError, add, clean, folded, from_wire, parse_folded, to_wire
from openrtc.profile.svg import svg
from openrtc.profile.tree import build, split_frame

SCHEMA = json.loads((Path(__file__).parent / "data" / "speedscope-file-format-schema.json").read_text())


def cpu_profile() -> Profile:
    stacks: dict[tuple[str, ...], float] = {}
    a = ("worker", "agent:chat", "session:aaa111")
    b = ("worker", "agent:voice", "session:bbb222")
    add(stacks, (*a, "app.run (agents/chat.py:10)", "app.parse (agents/chat.py:20)"), 30)
    add(stacks, (*a, "app.run (agents/chat.py:10)", "json.loads (json/__init__.py:346)"), 10)
    add(stacks, (*b, "voice.run (agents/voice.py:5)"), 60)
    add(stacks, ("worker", "idle"), 100)
    add(stacks, ("worker", "gc"), 2)
    return Profile(stacks, "samples", "CPU", session_depth=2, sample_ms=10.0, meta={"seconds": 2.0})


def test_frame_names_cannot_break_the_folded_format() -> None:
    assert clean("a;b\nc") == "a:b c"
    stacks: dict[tuple[str, ...], float] = {}
    add(stacks, ("worker", "session:x;y", "f (a.py:1)"), 3)
    assert list(stacks) == [("worker", "session:x:y", "f (a.py:1)")]


def test_folded_parses_back_to_the_same_profile() -> None:
    profile = cpu_profile()
    text = folded(profile)
    assert text.splitlines()[0] == "worker;idle 100"  # heaviest first
    assert parse_folded(text).stacks == profile.stacks
    with pytest.raises(ProfileError, match="line 2"):
        parse_folded("a;b 1\na;b many\n")


def test_the_wire_form_round_trips_and_refuses_garbage() -> None:
    profile = cpu_profile()
    back = from_wire(json.loads(json.dumps(to_wire(profile))))
    assert back.stacks == profile.stacks and back.sample_ms == 10.0 and back.meta == {"seconds": 2.0}
    for bad in ({}, {"stacks": [[["a"], "x"]], "unit": "samples"}, {"stacks": [[[1], 1]], "unit": "samples"}):
        with pytest.raises(ProfileError):
            from_wire(bad)


def test_speedscope_file_is_valid_against_the_published_schema() -> None:
    profile = cpu_profile()
    doc = json.loads(render(profile, ".speedscope.json"))
    jsonschema.validate(doc, SCHEMA)
    names = [p["name"] for p in doc["profiles"]]
    assert names == ["session:aaa111", "session:bbb222", "worker"]  # one per session; idle and gc apart
    chat = doc["profiles"][0]
    frames = doc["shared"]["frames"]
    assert chat["unit"] == "milliseconds" and chat["endValue"] == 400.0  # 40 samples of 10 ms
    stacks = {tuple(frames[i]["name"] for i in s) for s in chat["samples"]}
    assert ("worker", "agent:chat", "session:aaa111", "app.run", "app.parse") in stacks
    parse = next(f for f in frames if f["name"] == "app.parse")
    assert parse == {"name": "app.parse", "file": "agents/chat.py", "line": 20}
    tokens = Profile({("agent:a", "session:s", "call:llm/m", "kind:input"): 5.0}, "tokens", session_depth=1)
    doc = json.loads(render(tokens, ".speedscope.json"))
    jsonschema.validate(doc, SCHEMA)
    assert doc["profiles"][0]["unit"] == "none"


PROFILE_PROTO = {
    "Profile": [
        ("sample_type", 1, "ValueType", True),
        ("sample", 2, "Sample", True),
        ("mapping", 3, "Mapping", True),
        ("location", 4, "Location", True),
        ("function", 5, "Function", True),
        ("string_table", 6, "string", True),
        ("drop_frames", 7, "int64", False),
        ("keep_frames", 8, "int64", False),
        ("time_nanos", 9, "int64", False),
        ("duration_nanos", 10, "int64", False),
        ("period_type", 11, "ValueType", False),
        ("period", 12, "int64", False),
        ("comment", 13, "int64", True),
        ("default_sample_type", 14, "int64", False),
    ],
    "ValueType": [("type", 1, "int64", False), ("unit", 2, "int64", False)],
    "Sample": [
        ("location_id", 1, "uint64", True),
        ("value", 2, "int64", True),
        ("label", 3, "Label", True),
    ],
    "Label": [
        ("key", 1, "int64", False),
        ("str", 2, "int64", False),
        ("num", 3, "int64", False),
        ("num_unit", 4, "int64", False),
    ],
    "Mapping": [
        ("id", 1, "uint64", False),
        ("memory_start", 2, "uint64", False),
        ("memory_limit", 3, "uint64", False),
        ("file_offset", 4, "uint64", False),
        ("filename", 5, "int64", False),
        ("build_id", 6, "int64", False),
        ("has_functions", 7, "bool", False),
        ("has_filenames", 8, "bool", False),
        ("has_line_numbers", 9, "bool", False),
        ("has_inline_frames", 10, "bool", False),
    ],
    "Location": [
        ("id", 1, "uint64", False),
        ("mapping_id", 2, "uint64", False),
        ("address", 3, "uint64", False),
        ("line", 4, "Line", True),
        ("is_folded", 5, "bool", False),
    ],
    "Line": [("function_id", 1, "uint64", False), ("line", 2, "int64", False), ("column", 3, "int64", False)],
    "Function": [
        ("id", 1, "uint64", False),
        ("name", 2, "int64", False),
        ("system_name", 3, "int64", False),
        ("filename", 4, "int64", False),
        ("start_line", 5, "int64", False),
    ],
}


def profile_message_class() -> Any:
    """`perftools.profiles.Profile` from github.com/google/pprof's proto/profile.proto, built at run time."""
    scalar = {
        "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
        "uint64": descriptor_pb2.FieldDescriptorProto.TYPE_UINT64,
        "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
    }
    file = descriptor_pb2.FileDescriptorProto(
        name="profile.proto", package="perftools.profiles", syntax="proto3"
    )
    for message, fields in PROFILE_PROTO.items():
        m = file.message_type.add(name=message)
        for name, number, kind, repeated in fields:
            f = m.field.add(name=name, number=number)
            f.label = (
                descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
                if repeated
                else descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
            )
            if kind in scalar:
                f.type = scalar[kind]
            else:
                f.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                f.type_name = f".perftools.profiles.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("perftools.profiles.Profile"))


def test_pprof_decodes_as_profile_proto_with_session_labels() -> None:
    raw = gzip.decompress(render(cpu_profile(), ".pprof.gz"))
    msg = profile_message_class()()
    msg.ParseFromString(raw)
    st = list(msg.string_table)
    assert st[0] == ""
    assert [(st[t.type], st[t.unit]) for t in msg.sample_type] == [
        ("samples", "count"),
        ("wall", "nanoseconds"),
    ]
    assert (st[msg.period_type.type], st[msg.period_type.unit], msg.period) == (
        "wall",
        "nanoseconds",
        10_000_000,
    )
    assert msg.duration_nanos == 2_000_000_000
    functions = {f.id: f for f in msg.function}
    locations = {loc.id: loc for loc in msg.location}

    def stack(sample: Any) -> tuple[str, ...]:  # leaf first in pprof; root first here
        names = [st[functions[locations[i].line[0].function_id].name] for i in sample.location_id]
        return tuple(reversed(names))

    decoded = {stack(s): (list(s.value), {st[lab.key]: st[lab.str] for lab in s.label}) for s in msg.sample}
    parse = ("worker", "agent:chat", "session:aaa111", "app.run", "app.parse")
    assert decoded[parse] == ([30, 300_000_000], {"agent": "chat", "session": "aaa111"})
    assert decoded[("worker", "idle")] == ([100, 1_000_000_000], {})
    sum_samples = sum(v[0][0] for v in decoded.values())
    assert sum_samples == 202
    parse_fn = next(f for f in msg.function if st[f.name] == "app.parse")
    assert st[parse_fn.filename] == "agents/chat.py"
    assert locations[parse_fn.id].line[0].line == 20


def test_svg_is_xml_with_one_rect_per_frame() -> None:
    profile = cpu_profile()
    root = ET.fromstring(svg(profile).split("\n", 1)[1])
    ns = {"s": "http://www.w3.org/2000/svg"}
    groups = root.findall(".//s:g[@class='frame']", ns)
    rects = root.findall(".//s:rect", ns)

    def count(node: Any) -> int:
        return sum(1 + count(c) for c in node.children.values())

    assert len(rects) == len(groups) == count(build(profile)) == 11
    names = {g.get("data-name") for g in groups}
    assert {"worker", "idle", "gc", "app.parse (agents/chat.py:20)"} <= names
    worker = next(g for g in groups if g.get("data-name") == "worker")
    assert worker.find("s:rect", ns).get("width") == "1199.50"  # the whole width (less the gap)
    assert root.find("s:script", ns) is not None and "openrtc-flame" in root.get("class", "")


def test_svg_leaves_out_frames_too_narrow_to_see_but_keeps_their_weight() -> None:
    stacks = {("worker", "big"): 1_000_000.0, ("worker", "tiny"): 1.0}
    root = ET.fromstring(svg(Profile(stacks)).split("\n", 1)[1])
    names = [g.get("data-name") for g in root.iter("{http://www.w3.org/2000/svg}g")]
    assert "tiny" not in names and "big" in names
    assert root.get("data-total") == "1e+06" or float(root.get("data-total", "0")) == 1_000_001


def test_output_names_pick_the_format_and_refuse_others() -> None:
    assert format_of(Path("x.SVG")) == ".svg"
    assert format_of(Path("a/b.speedscope.json")) == ".speedscope.json"
    assert format_of(Path("p.pprof.gz")) == ".pprof.gz"
    with pytest.raises(ProfileError, match=r"\.folded, \.svg"):
        format_of(Path("x.json"))


def test_code_frames_split_into_function_file_and_line() -> None:
    assert split_frame("mod.Cls.f (agents/a.py:12)") == ("mod.Cls.f", "agents/a.py", 12)
    assert split_frame("call:llm/openai/gpt-4o") == ("call:llm/openai/gpt-4o", None, None)
