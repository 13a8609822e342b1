"""Which format a file gets, by the end of its name. Pure (writing the bytes is the caller's)."""

from __future__ import annotations

from pathlib import Path

from openrtc.profile.pprof import pprof
from openrtc.profile.speedscope import speedscope_text
from openrtc.profile.stacks import Profile, ProfileError, folded
from openrtc.profile.svg import svg

SUFFIXES = (".folded", ".svg", ".speedscope.json", ".pprof.gz", ".html")


def format_of(path: Path) -> str:
    """The output's format from its name; `ProfileError` for a name that has none of `SUFFIXES`."""
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise ProfileError(f"{path}: the file name must end in one of {', '.join(SUFFIXES)}")


def render(profile: Profile, suffix: str) -> bytes:
    """The profile in one of the formats but `.html` (the report takes more than one profile)."""
    if suffix == ".folded":
        return folded(profile).encode()
    if suffix == ".svg":
        return svg(profile).encode()
    if suffix == ".speedscope.json":
        return speedscope_text(profile).encode()
    if suffix == ".pprof.gz":
        return pprof(profile)
    raise ProfileError(f"no single-profile format for {suffix!r}")
