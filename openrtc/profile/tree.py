"""Weighted stacks merged into a tree, and a frame name split back into function, file and line. Pure."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from openrtc.profile.stacks import Profile

_CODE_FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*):(?P<line>\d+)\)$")


@dataclass
class Node:
    """One frame in its context: its weight includes its children's."""

    name: str
    weight: float = 0.0
    children: dict[str, Node] = field(default_factory=dict)

    def sorted_children(self) -> list[Node]:
        """Alphabetical, as flamegraph.pl orders them: the same profile draws the same way every time."""
        return [self.children[k] for k in sorted(self.children)]


def build(profile: Profile) -> Node:
    root = Node("all")
    for stack, weight in profile.stacks.items():
        root.weight += weight
        node = root
        for name in stack:
            child = node.children.get(name)
            if child is None:
                child = node.children[name] = Node(name)
            child.weight += weight
            node = child
    return root


def split_frame(name: str) -> tuple[str, str | None, int | None]:
    """`module.function (file:line)` as (function, file, line); any other frame as (name, None, None)."""
    match = _CODE_FRAME.match(name)
    if match is None:
        return name, None, None
    return match["function"], match["file"], int(match["line"])
