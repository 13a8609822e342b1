"""speedscope's file format (https://www.speedscope.app/file-format-schema.json): one sampled profile
per session, frames shared. Pure. Written by hand: no maintained Python library writes it."""

from __future__ import annotations

import json
from typing import Any

from openrtc import __version__
from openrtc.profile.stacks import Profile
from openrtc.profile.tree import split_frame

SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def speedscope(profile: Profile) -> dict[str, Any]:
    frames: list[dict[str, Any]] = []
    index: dict[str, int] = {}

    def frame_id(name: str) -> int:
        found = index.get(name)
        if found is None:
            function, file, line = split_frame(name)
            entry: dict[str, Any] = {"name": function}
            if file is not None:
                entry["file"], entry["line"] = file, line
            found = index[name] = len(frames)
            frames.append(entry)
        return found

    timed = profile.sample_ms is not None or profile.unit == "ms"
    scale = profile.sample_ms if profile.sample_ms is not None else 1.0
    profiles = []
    for name, part in profile.by_session().items():
        samples, weights = [], []
        for stack, weight in sorted(part.stacks.items()):
            samples.append([frame_id(f) for f in stack])
            weights.append(round(weight * scale, 6) if timed else weight)
        profiles.append(
            {
                "type": "sampled",
                "name": name,
                "unit": "milliseconds" if timed else "none",
                "startValue": 0,
                "endValue": round(sum(weights), 6),
                "samples": samples,
                "weights": weights,
            }
        )
    return {
        "$schema": SCHEMA,
        "shared": {"frames": frames},
        "profiles": profiles,
        "name": f"{profile.title} ({profile.unit})",
        "activeProfileIndex": 0,
        "exporter": f"openrtc {__version__}",
    }


def speedscope_text(profile: Profile) -> str:
    return json.dumps(speedscope(profile), separators=(",", ":")) + "\n"
