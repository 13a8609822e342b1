"""Stacks as text, and which frame to blame: the innermost one in the session's own code. Pure."""

from __future__ import annotations

import os
import sys
import sysconfig
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from types import FrameType
from typing import Any

import openrtc

_OPENRTC_DIR = os.path.dirname(os.path.abspath(openrtc.__file__)) + os.sep


@dataclass(frozen=True)
class FrameInfo:
    """One frame of a stack."""

    filename: str
    """Absolute path of the code's file."""
    lineno: int
    """Line being executed."""
    function: str
    """Function name."""

    def display(self, agent_dirs: tuple[str, ...] = ()) -> str:
        return f"{display_path(self.filename, agent_dirs)}:{self.lineno} in {self.function}"


def walk(frame: FrameType | None, limit: int = 64) -> list[FrameInfo]:
    """The frames from the outermost to `frame` (innermost last), at most `limit` innermost ones."""
    out: list[FrameInfo] = []
    while frame is not None and len(out) < limit:
        code = frame.f_code
        out.append(FrameInfo(code.co_filename, frame.f_lineno or 0, code.co_name))
        frame = frame.f_back
    out.reverse()
    return out


def suspended_stack(coro: Any, limit: int = 64) -> list[FrameInfo]:
    """The frames of a suspended coroutine chain, outermost first (follows `cr_await`)."""
    out: list[FrameInfo] = []
    while coro is not None and len(out) < limit:
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
        if frame is None:
            break
        out.append(FrameInfo(frame.f_code.co_filename, frame.f_lineno or 0, frame.f_code.co_name))
        coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
    return out


@lru_cache(maxsize=8192)
def display_path(filename: str, agent_dirs: tuple[str, ...] = ()) -> str:
    """How a file is named in `where` and stacks, whatever the worker's current directory: relative to
    the parent of the agents folder it lies in (`agents/_helpers.py`), else to the import root it came
    from (`asyncio/events.py`, `openrtc/runtime/pool.py`), else absolute."""
    for folder in agent_dirs:
        parent = os.path.dirname(folder.rstrip(os.sep)) + os.sep
        if filename.startswith(folder.rstrip(os.sep) + os.sep):
            return filename[len(parent) :]
    for root in _import_roots():
        if filename.startswith(root):
            return filename[len(root) :]
    return filename


@lru_cache(maxsize=1)
def _import_roots() -> tuple[str, ...]:
    """Absolute `sys.path` folders and openrtc's own parent, longest first (the most specific wins)."""
    roots = {os.path.dirname(_OPENRTC_DIR.rstrip(os.sep)) + os.sep}
    roots.update(p.rstrip(os.sep) + os.sep for p in sys.path if os.path.isabs(p) and os.path.isdir(p))
    return tuple(sorted(roots, key=len, reverse=True))


@lru_cache(maxsize=1)
def _library_prefixes() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return (*sorted(os.path.abspath(d) + os.sep for d in dirs), _OPENRTC_DIR)


def is_library(filename: str) -> bool:
    """Standard library, installed packages, openrtc itself, or code without a real file."""
    if filename.startswith("<"):
        return True
    return os.path.abspath(filename).startswith(_library_prefixes())


def pick_blame(stack: Sequence[FrameInfo], own_dirs: Iterable[str]) -> FrameInfo | None:
    """The innermost frame in one of `own_dirs`; else the innermost non-library frame; else the innermost."""
    prefixes = tuple(d.rstrip(os.sep) + os.sep for d in own_dirs)
    if prefixes:
        for frame in reversed(stack):
            if frame.filename.startswith(prefixes) and not frame.filename.startswith(_OPENRTC_DIR):
                return frame
    for frame in reversed(stack):
        if not is_library(frame.filename):
            return frame
    return stack[-1] if stack else None
