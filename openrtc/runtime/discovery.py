"""Load agents from a folder: one agent per `.py` file, `_`-prefixed files skipped.

A broken file never stops the others from loading: each file yields either an `AgentSpec` or an
`AgentLoadError` naming the file and line.

Helper modules of the folder (`_helpers.py`, a package) are imported the usual way, once, and shared
by the agents that import them. Loading an agent file first forgets the helpers whose file changed
since they were imported, and every helper of the folder that imports them, so the agent (and each
agent loaded after it) runs the code as it is on disk now.
"""

from __future__ import annotations

import contextlib
import importlib.machinery
import importlib.util
import itertools
import logging
import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import CodeType, ModuleType

from openrtc.errors import AgentLoadError, ConfigError
from openrtc.runtime.agent import Agent, AgentSpec, make_spec, source_line
from openrtc.runtime.deps import ImportGraph

log = logging.getLogger("openrtc.discovery")

_counter = itertools.count()
AGENT_MODULES = "openrtc_agents."
_imported_mtimes: dict[str, int] = {}
"""Helper module name -> its file's mtime (ns) when it was imported."""
_agent_folders: set[str] = set()
"""Every agents folder put on `sys.path`."""


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


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles an agent file from its source on every load. The bytecode cache checks the source's
    mtime in whole seconds and its size: a file saved twice within a second, at the same size
    (`sleep(0.4)` -> `sleep(0.1)`), would load the previous version."""

    def get_code(self, fullname: str) -> CodeType:
        return self.source_to_code(self.get_data(self.path), self.path)


def folder_modules(folder: Path) -> dict[str, ModuleType]:
    """The modules in `sys.modules` imported from `folder` as a `sys.path` entry (`_helpers`,
    `pkg.util`): agent modules and openrtc itself left out."""
    prefix = str(folder) + os.sep
    out: dict[str, ModuleType] = {}
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if not isinstance(file, str) or not file.startswith(prefix) or name.startswith(AGENT_MODULES):
            continue
        if name == "openrtc" or name.startswith("openrtc."):
            continue
        stem = os.path.join(str(folder), *name.split("."))
        if file in (stem + ".py", os.path.join(stem, "__init__.py")):
            out[name] = module
    return out


def _mtime(module: ModuleType) -> int | None:
    try:
        return os.stat(str(module.__file__)).st_mtime_ns
    except (OSError, TypeError):
        return None


def forget_stale_helpers(folder: Path) -> list[str]:
    """Drop from `sys.modules` the helpers of `folder` changed since their import, and the helpers that
    import them (directly or not), so the next import reads them afresh. Returns their names."""
    modules = folder_modules(folder)
    # A helper never noted (imported later, from a session) counts as changed: its import time is unknown.
    stale = {name for name, m in modules.items() if (_mtime(m) or -1) != _imported_mtimes.get(name)}
    if not stale:
        return []
    stale |= ImportGraph.of_folder(folder).depends_on(stale) & modules.keys()
    for name in sorted(stale):
        module = sys.modules.pop(name, None)
        _imported_mtimes.pop(name, None)
        source = getattr(module, "__file__", None)
        if isinstance(source, str) and source.endswith(".py"):
            # Same reason as `_SourceLoader`: a same-second, same-size edit would load the old bytecode.
            with contextlib.suppress(OSError, ValueError):
                os.unlink(importlib.util.cache_from_source(source))
    log.debug("forgot changed helper modules: %s", ", ".join(sorted(stale)))
    return sorted(stale)


def _note_helpers(folder: Path) -> None:
    for name, module in folder_modules(folder).items():
        if name not in _imported_mtimes and (mtime := _mtime(module)) is not None:
            _imported_mtimes[name] = mtime


def _forget_shadowed(folder: Path) -> None:
    """Drop the modules named like a helper of `folder` but imported from another agents folder (its
    own `_helpers`): this folder's agents must import this folder's helpers."""
    others = tuple(f + os.sep for f in _agent_folders if f != str(folder))
    if not others:
        return
    try:
        names = {entry.removesuffix(".py") for entry in os.listdir(folder)}
    except OSError:
        return
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if name.partition(".")[0] in names and isinstance(file, str) and file.startswith(others):
            del sys.modules[name]


def _import_fresh(path: Path) -> ModuleType:
    # Sibling helper modules (`_helpers.py`) must be importable from agent files, ahead of any other
    # folder's helpers of the same name.
    folder = str(path.parent)
    if folder in sys.path:
        sys.path.remove(folder)
    sys.path.insert(0, folder)
    _forget_shadowed(path.parent)
    _agent_folders.add(folder)
    forget_stale_helpers(path.parent)
    mod_name = f"{AGENT_MODULES}{path.stem}_{next(_counter)}"
    loader = _SourceLoader(mod_name, str(path))
    spec = importlib.util.spec_from_file_location(mod_name, path, loader=loader)
    if spec is None or spec.loader is None:
        raise AgentLoadError(str(path), 0, "cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        try:
            spec.loader.exec_module(module)
        finally:
            _note_helpers(path.parent)
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
