"""Token classes: a session's cumulative tokens name its class. Pure.

Defaults (upper bounds inclusive): light <= 50,000 < medium <= 200,000 < heavy <= 500,000 < extreme.
`--classes light=50000,medium=200000,heavy=500000` sets them; the last class has no upper bound and
takes the name `extreme` unless the text ends with one more name (`...,huge`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from openrtc.errors import ConfigError

DEFAULT_TEXT = "light=50000,medium=200000,heavy=500000"


@dataclass(frozen=True)
class Classes:
    """Names and inclusive upper bounds, lightest first; the last name has no bound."""

    names: tuple[str, ...]
    """Every class, lightest first."""
    bounds: tuple[int, ...]
    """The inclusive upper bound of each class but the last (one fewer than `names`)."""

    def of(self, tokens: int) -> str:
        """The class of a session with `tokens` cumulative tokens."""
        return self.names[bisect.bisect_left(self.bounds, tokens)]

    @classmethod
    def parse(cls, text: str) -> Classes:
        names: list[str] = []
        bounds: list[int] = []
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ConfigError("--classes: expected NAME=MAX_TOKENS,..., e.g. " + DEFAULT_TEXT)
        for i, part in enumerate(parts):
            name, eq, bound = part.partition("=")
            name = name.strip()
            if not name or (not eq and i < len(parts) - 1):
                raise ConfigError(f"--classes: {part!r} is not NAME=MAX_TOKENS")
            if not eq:  # a last name with no bound names the open-ended class
                names.append(name)
                break
            try:
                value = int(bound.replace("_", ""))
            except ValueError:
                raise ConfigError(
                    f"--classes: {bound!r} in {part!r} is not a whole number of tokens"
                ) from None
            if value <= 0 or (bounds and value <= bounds[-1]):
                raise ConfigError(f"--classes: bounds must be positive and increasing, got {part!r}")
            names.append(name)
            bounds.append(value)
        else:
            names.append("extreme")
        if len(set(names)) != len(names):
            raise ConfigError(f"--classes: a class is named twice in {text!r}")
        return cls(tuple(names), tuple(bounds))


DEFAULT = Classes.parse(DEFAULT_TEXT)
