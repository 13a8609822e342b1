"""Load agents from a folder: one agent per `.py` file, `_`-prefixed files skipped.

A broken file never stops the others from loading: each file yields either an `AgentSpec` or an
`AgentLoadError` naming the file and line.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from openrtc.errors import AgentLoadError, ConfigError
from openrtc.runtime.agent import Agent, AgentSpec, make_spec, source_line

_counter = itertools.count()


@dataclass(frozen=True)
class Discovery:
    """What one scan of an agents folder found."""

    agents: tuple[AgentSpec, ...]
    """Agents that loaded, in file-name order."""
    errors: tuple[AgentLoadError, ...]
    """Files that failed, each with the file and line to fix."""


def agent_files(folder: Path) -> list[Path]:
    """The files of `folder` that define agents, sorted by name."""
    return sorted(p for p in folder.glob("*.py") if not p.name.startswith("_") and p.is_file())


def discover(folder: str | os.PathLike[str]) -> Discovery:
    """Import every agent file of `folder`; duplicate names are errors on the later file."""
    root = Path(folder).resolve()
    if not root.is_dir():
        raise ConfigError(f"agents folder {str(folder)!r} does not exist or is not a folder")
    agents: list[AgentSpec] = []
    errors: list[AgentLoadError] = []
    seen: dict[str, str] = {}
    for path in agent_files(root):
        try:
            spec = load_agent_file(path)
        except AgentLoadError as exc:
            errors.append(exc)
            continue
        if spec.name in seen:
            errors.append(
                AgentLoadError(
                    str(path), spec.line, f"agent name {spec.name!r} already used by {seen[spec.name]}"
                )
            )
            continue
        seen[spec.name] = str(path)
        agents.append(spec)
    return Discovery(tuple(agents), tuple(errors))


def load_agent_file(path: str | Path) -> AgentSpec:
    """Import one agent file afresh (a new module each call, so a reload sees the new code)."""
    path = Path(path).resolve()
    module = _import_fresh(path)
    return _agent_of(module, path)


def _import_fresh(path: Path) -> ModuleType:
    # Sibling helper modules (`_helpers.py`) must be importable from agent files.
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    mod_name = f"openrtc_agents.{path.stem}_{next(_counter)}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise AgentLoadError(str(path), 0, "cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(mod_name, None)
        raise AgentLoadError(str(path), exc.lineno or 0, f"syntax error: {exc.msg}") from exc
    except BaseException as exc:  # an agent file may raise anything, SystemExit included
        sys.modules.pop(mod_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        line = _line_in(exc, path)
        raise AgentLoadError(str(path), line, f"import failed: {type(exc).__name__}: {exc}") from exc
    return module


def _line_in(exc: BaseException, path: Path) -> int:
    """The deepest traceback line that lies in `path`: where the user should look."""
    line = 0
    for frame in traceback.extract_tb(exc.__traceback__):
        if Path(frame.filename) == path:
            line = frame.lineno or 0
    return line


def _agent_of(module: ModuleType, path: Path) -> AgentSpec:
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type)
        and issubclass(obj, Agent)
        and obj is not Agent
        and obj.__module__ == module.__name__
    ]
    entry = vars(module).get("entrypoint")
    candidates: list[object] = [*classes, *([entry] if entry is not None else [])]
    if not candidates:
        raise AgentLoadError(
            str(path),
            0,
            "defines no agent: add a subclass of openrtc.Agent or `async def entrypoint(session)`",
        )
    if len(candidates) > 1:
        names = ", ".join(getattr(c, "__qualname__", repr(c)) for c in candidates)
        raise AgentLoadError(
            str(path), source_line(candidates[1]), f"defines more than one agent ({names}); keep one per file"
        )
    agent = candidates[0]
    name = getattr(agent, "name", None) if isinstance(agent, type) else None
    try:
        return make_spec(name or path.stem, agent, source=str(path))
    except ConfigError as exc:
        raise AgentLoadError(str(path), source_line(agent), str(exc)) from exc
