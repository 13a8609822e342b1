"""Where profiles recorded from `top` go: `$XDG_STATE_HOME/openrtc/profiles` (0700), one file each."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

from openrtc._private import ensure_private_dir
from openrtc.profile.stacks import Profile, ProfileError
from openrtc.profile.svg import svg
from openrtc.usage.eventlog import default_log_dir


def profiles_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Beside the event log's default folder: `$XDG_STATE_HOME/openrtc/profiles`."""
    return default_log_dir(environ).parent / "profiles"


def save_svg(profile: Profile, what: str, folder: Path | None = None) -> Path:
    """Write `profile` as a flamegraph named after `what` and the time; the path written."""
    folder = ensure_private_dir(folder or profiles_dir(), "profiles folder", ProfileError)
    path = folder / f"{what}-{time.strftime('%Y%m%dT%H%M%S')}.svg"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(svg(profile))
    return path
