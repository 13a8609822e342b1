"""Hot reload for `openrtc dev`: poll the agents folder, re-import what changed, keep the old on failure.

Any module of the folder counts, not only agent files: when a helper (`_helpers.py`, a package)
changes, every agent that imports it, directly or through other helpers, is reloaded (the import graph
is read from the source, `runtime.deps`). New sessions run the new code; running ones finish on the
code they started with.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from openrtc.errors import AgentLoadError
from openrtc.runtime.deps import ImportGraph, module_files, module_name
from openrtc.runtime.discovery import agent_files, load_agent_file

if TYPE_CHECKING:
    from openrtc.runtime.pool import Pool

log = logging.getLogger("openrtc.reload")


class Reloader:
    """Compares file mtimes every `interval` seconds and swaps agents in the pool.

    Polling, not inotify: no extra dependency, works on every file system, and an agents folder holds
    a few dozen files at most.
    """

    def __init__(self, pool: Pool, folder: str | Path, interval: float = 0.5) -> None:
        self.pool = pool
        self.folder = Path(folder).resolve()
        self.interval = interval
        self._mtimes: dict[Path, int] = {}
        self._names: dict[Path, str] = {}

    def prime(self) -> None:
        """Remember the current files and the agents they registered (call after `pool.discover`)."""
        self._mtimes = self._scan()
        by_source = {
            spec.source: name for name in self.pool.agent_names if (spec := self.pool.agent(name)).source
        }
        self._names = {path: by_source[str(path)] for path in self._mtimes if str(path) in by_source}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.check()

    def _scan(self) -> dict[Path, int]:
        mtimes: dict[Path, int] = {}
        for path in module_files(self.folder).values():
            try:
                mtimes[path] = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
        return mtimes

    async def check(self) -> None:
        """One poll: reload changed or new agent files and the agents importing a changed helper,
        unregister deleted agents."""
        current = self._scan()
        agents = set(agent_files(self.folder))
        deleted = sorted(set(self._mtimes) - set(current))
        changed = [p for p, m in sorted(current.items()) if self._mtimes.get(p) != m]
        self._mtimes = current
        for path in deleted:
            name = self._names.pop(path, None)
            if name is not None:
                self.pool.remove(name)
                log.info("agent %r removed (%s deleted)", name, path.name)
        helpers = [p for p in [*changed, *deleted] if p not in agents and p not in self._names]
        because: dict[Path, list[str]] = {}
        if helpers:
            graph = ImportGraph.of_folder(self.folder)
            for helper in helpers:
                rel = helper.relative_to(self.folder).as_posix()
                users = sorted(
                    p for p in graph.files_depending_on([module_name(self.folder, helper)]) if p in agents
                )
                for path in users:
                    because.setdefault(path, []).append(rel)
                names = ", ".join(repr(self._names.get(p, p.stem)) for p in users)
                what = "deleted" if helper in deleted else "changed"
                log.info(
                    "helper %s %s: %s", rel, what, f"reloading {names}" if users else "no agent imports it"
                )
        for path in sorted({*(p for p in changed if p in agents), *because}):
            await self._reload(path, because.get(path))

    async def _reload(self, path: Path, helpers: list[str] | None = None) -> None:
        try:
            spec = load_agent_file(path)
        except AgentLoadError as exc:
            log.error("reload failed, keeping the previous version: %s", exc)
            return
        old = self._names.get(path)
        owner = next((p for p, n in self._names.items() if n == spec.name and p != path), None)
        if owner is not None:
            log.error(
                "reload failed, keeping the previous version: %s:%d: agent name %r already used by %s",
                path,
                spec.line,
                spec.name,
                owner,
            )
            return
        try:
            await self.pool.replace(spec)
        except AgentLoadError as exc:
            log.error("reload failed, keeping the previous version: %s", exc)
            return
        if old is not None and old != spec.name:
            self.pool.remove(old)
        self._names[path] = spec.name
        reason = f" ({', '.join(helpers)} changed)" if helpers else ""
        log.info("agent %r %s from %s%s", spec.name, "reloaded" if old else "added", path.name, reason)
