"""A profile as weighted stacks, and the folded text format (flamegraph.pl's input). Pure.

A stack is a tuple of frame names, root first. The names follow one contract (README, "Profiles"):
`worker`, `agent:A`, `session:S` (or `tag:WORD`), then `module.function (file:line)` frames for a CPU
profile; `outside`, `idle`, `gc` and `cpu-wait` for samples no session explains; semantic profiles start at
`agent:A`. A `;` inside a name becomes `:` (the folded format separates frames with `;`), and a line
break becomes a space.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from openrtc.errors import OpenRTCError

Stack = tuple[str, ...]

UNITS = ("samples", "ms", "tokens", "calls")


class ProfileError(OpenRTCError):
    """A profile could not be made, read or written (the message says which and why)."""


def clean(name: str) -> str:
    """A frame name the folded format can carry."""
    return name.replace(";", ":").replace("\n", " ").replace("\r", " ")


@dataclass(frozen=True)
class Profile:
    """Weighted stacks, the one shape every output format takes."""

    stacks: Mapping[Stack, float]
    """Each distinct stack (root first) and its weight."""
    unit: str = "samples"
    """What a weight counts: `samples`, `ms`, `tokens` or `calls`."""
    title: str = "openrtc profile"
    """What the outputs call it."""
    session_depth: int | None = 2
    """Index of the `session:`/`tag:` frame in a stack (2 in a CPU profile, 1 in a semantic one); a
    speedscope file has one profile per distinct frame there. None: one profile for everything."""
    sample_ms: float | None = None
    """Milliseconds one sample stands for (a CPU profile: 1000 / rate), else None."""
    meta: Mapping[str, Any] = field(default_factory=dict)
    """What the recording says about itself (rate, lateness, filter...), for the report."""

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ProfileError(f"unknown unit {self.unit!r}; one of {', '.join(UNITS)}")

    @property
    def total(self) -> float:
        return float(sum(self.stacks.values()))

    def share(self, frame: str) -> float:
        """The fraction of the weight whose stack contains `frame` (0 for an empty profile)."""
        total = self.total
        if not total:
            return 0.0
        return sum(w for s, w in self.stacks.items() if frame in s) / total

    def by_session(self) -> dict[str, Profile]:
        """One profile per frame at `session_depth` (stacks too short to have one go under their root)."""
        if self.session_depth is None:
            return {self.title: self}
        groups: dict[str, dict[Stack, float]] = {}
        for stack, weight in self.stacks.items():
            key = stack[self.session_depth] if len(stack) > self.session_depth else stack[0]
            group = groups.setdefault(key, {})
            group[stack] = group.get(stack, 0.0) + weight
        return {
            key: Profile(stacks, self.unit, key, self.session_depth, self.sample_ms, self.meta)
            for key, stacks in sorted(groups.items())
        }

    def only(self, keep: Iterable[str]) -> Profile:
        """The stacks containing one of the frames `keep`."""
        wanted = frozenset(keep)
        return Profile(
            {s: w for s, w in self.stacks.items() if wanted.intersection(s)},
            self.unit,
            self.title,
            self.session_depth,
            self.sample_ms,
            self.meta,
        )


def add(stacks: dict[Stack, float], stack: Iterable[str], weight: float) -> None:
    """Add `weight` to `stack` (frame names cleaned); a weight of 0 or less adds nothing."""
    if weight > 0:
        key = tuple(clean(f) for f in stack)
        stacks[key] = stacks.get(key, 0.0) + weight


def folded(profile: Profile) -> str:
    """`frame;frame;frame weight` lines, heaviest first; integer weights where they are whole."""
    lines = []
    for stack, weight in sorted(profile.stacks.items(), key=lambda item: (-item[1], item[0])):
        value = int(weight) if float(weight).is_integer() else round(weight, 3)
        lines.append(f"{';'.join(stack)} {value}")
    return "\n".join(lines) + ("\n" if lines else "")


def parse_folded(text: str, unit: str = "samples") -> Profile:
    """A folded file back into a profile. `ProfileError` names the first bad line."""
    stacks: dict[Stack, float] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        head, sep, count = line.rstrip().rpartition(" ")
        try:
            weight = float(count)
        except ValueError:
            weight = math.nan
        if not sep or not head or not math.isfinite(weight) or weight < 0:
            raise ProfileError(f"line {n}: expected 'frame;frame;... weight', got {line[:80]!r}")
        add(stacks, head.split(";"), weight)
    return Profile(stacks, unit, session_depth=None)


def to_wire(profile: Profile) -> dict[str, Any]:
    """The profile as plain values (a socket reply, a JSON file)."""
    return {
        "title": profile.title,
        "unit": profile.unit,
        "session_depth": profile.session_depth,
        "sample_ms": profile.sample_ms,
        "meta": dict(profile.meta),
        "stacks": [[list(stack), weight] for stack, weight in profile.stacks.items()],
    }


def from_wire(doc: Any) -> Profile:
    """`to_wire`'s output back into a profile; `ProfileError` when it is not one."""
    try:
        stacks: dict[Stack, float] = {}
        for stack, weight in doc["stacks"]:
            if not isinstance(stack, list) or not all(isinstance(f, str) for f in stack):
                raise TypeError("a stack must be a list of strings")
            add(stacks, stack, float(weight))
        depth = doc.get("session_depth")
        sample_ms = doc.get("sample_ms")
        return Profile(
            stacks,
            str(doc["unit"]),
            str(doc.get("title", "openrtc profile")),
            int(depth) if depth is not None else None,
            float(sample_ms) if sample_ms is not None else None,
            dict(doc.get("meta") or {}),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ProfileError(f"not a profile: {type(exc).__name__}: {exc}") from None


def hottest(profile: Profile, n: int = 5) -> list[tuple[str, float]]:
    """The `n` frames with the most self weight (the leaf of their stacks), with their share of the total."""
    total = profile.total
    if not total:
        return []
    own: dict[str, float] = {}
    for stack, weight in profile.stacks.items():
        if stack:
            own[stack[-1]] = own.get(stack[-1], 0.0) + weight
    ranked = sorted(own.items(), key=lambda item: (-item[1], item[0]))[:n]
    return [(frame, weight / total) for frame, weight in ranked]
