"""Hot reload for `openrtc dev`: poll the agents folder, re-import what changed, keep the old on failure."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from openrtc.errors import AgentLoadError
from openrtc.runtime.discovery import agent_files, load_agent_file

if TYPE_CHECKING:
    from openrtc.runtime.pool import AgentPool

log = logging.getLogger("openrtc.reload")


class Reloader:
    """Compares file mtimes every `interval` seconds and swaps agents in the pool.

    Polling, not inotify: no extra dependency, works on every file system, and an agents folder holds
    a few dozen files at most.
    """

    def __init__(self, pool: AgentPool, folder: str | Path, interval: float = 0.5) -> None:
        self.pool = pool
        self.folder = Path(folder).resolve()
        self.interval = interval
        self._mtimes: dict[Path, float] = {}
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

    def _scan(self) -> dict[Path, float]:
        mtimes: dict[Path, float] = {}
        for path in agent_files(self.folder):
            try:
                mtimes[path] = path.stat().st_mtime_ns
            except FileNotFoundError:
                continue
        return mtimes

    async def check(self) -> None:
        """One poll: reload changed or new files, unregister deleted ones."""
        current = self._scan()
        for path in sorted(set(self._mtimes) - set(current)):
            name = self._names.pop(path, None)
            if name is not None:
                self.pool.remove(name)
                log.info("agent %r removed (%s deleted)", name, path.name)
        changed = [p for p, m in sorted(current.items()) if self._mtimes.get(p) != m]
        self._mtimes = current
        for path in changed:
            await self._reload(path)

    async def _reload(self, path: Path) -> None:
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
        except Exception as exc:
            log.error("reload failed, keeping the previous version: %s: prewarm raised %r", path, exc)
            return
        if old is not None and old != spec.name:
            self.pool.remove(old)
        self._names[path] = spec.name
        log.info("agent %r %s from %s", spec.name, "reloaded" if old else "added", path.name)
