"""Naming frames and picking the one to blame: pure functions."""

from __future__ import annotations

import asyncio
import os
import sys

from openrtc.introspection.frames import FrameInfo, display_path, is_library, pick_blame

OPENRTC_FILE = os.path.abspath(sys.modules["openrtc"].__file__ or "")


def test_agent_files_are_named_from_the_agents_folders_parent() -> None:
    agents = "/srv/app/myagents"
    assert display_path("/srv/app/myagents/_helpers.py", (agents,)) == "myagents/_helpers.py"
    assert display_path("/srv/app/myagents/pkg/util.py", (agents + "/",)) == "myagents/pkg/util.py"
    # Not under it: the import root it came from, else absolute; the current directory never matters.
    events = asyncio.events.__file__
    assert display_path(events, (agents,)) == "asyncio/events.py"
    assert display_path(OPENRTC_FILE, ()) == "openrtc/__init__.py"
    assert display_path("/nowhere/x.py", (agents,)) == "/nowhere/x.py"
    assert display_path("/srv/app/myagentsX/y.py", (agents,)) == "/srv/app/myagentsX/y.py"
    here = os.getcwd()
    try:
        os.chdir("/srv" if os.path.isdir("/srv") else "/")
        assert FrameInfo("/srv/app/myagents/a.py", 5, "f").display((agents,)) == "myagents/a.py:5 in f"
    finally:
        os.chdir(here)


def test_pick_blame_prefers_the_agents_own_code_then_any_user_code() -> None:
    lib = FrameInfo(asyncio.events.__file__ or "", 80, "_run")
    user = FrameInfo("/home/me/lib/client.py", 10, "get")
    own = FrameInfo("/srv/agents/bot.py", 3, "run")
    ours = FrameInfo(OPENRTC_FILE, 1, "x")
    assert is_library(lib.filename) and is_library(ours.filename) and not is_library(user.filename)
    assert pick_blame([lib, own, user, lib], ("/srv/agents",)) == own
    assert pick_blame([lib, own, user, lib], ()) == user
    assert pick_blame([lib, ours], ()) == ours  # only library frames: the innermost
    assert pick_blame([], ()) is None
