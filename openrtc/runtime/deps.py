"""Which files of an agents folder import which: the static import graph behind hot reload. Pure.

Read from the source (`ast`), not from what ran: an import inside a function counts although it has
not run yet, and a module already cached in `sys.modules` is seen the same as a new one. What it cannot
see is an import built at run time (`importlib.import_module(name)` with a computed name).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SKIP_DIRS = frozenset({"__pycache__", "node_modules"})


def module_files(folder: Path) -> dict[str, Path]:
    """Module name -> file, for every `.py` file under `folder` (packages give dotted names)."""
    out: dict[str, Path] = {}
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") or p in SKIP_DIRS for p in parts[:-1]):
            continue
        names = [*parts[:-1], path.stem]
        if names[-1] == "__init__":
            names.pop()
        if names and all(n.isidentifier() for n in names):
            out[".".join(names)] = path
    return out


def imported_modules(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every absolute module name `source` may import, anywhere in it: for `import a.b`, `a` and `a.b`;
    for `from a import b`, `a` and `a.b` (b may be a submodule). Relative imports are resolved against
    `module`. A file that does not parse imports nothing (its own import will report the error)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return set()
    package = module if is_package else module.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.update(_with_parents(alias.name))
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module, node.level, package)
            if base is None:
                continue
            if base:
                out.update(_with_parents(base))
            for alias in node.names:
                if alias.name != "*":
                    out.add(f"{base}.{alias.name}" if base else alias.name)
    return out


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _resolve(name: str | None, level: int, package: str) -> str | None:
    if level == 0:
        return name
    parts = package.split(".") if package else []
    if level - 1 > len(parts):
        return None  # beyond the top of the folder
    base = parts[: len(parts) - (level - 1)]
    if name:
        base.append(name)
    return ".".join(base)


class ImportGraph:
    """The folder's modules and, for each, the folder's modules it imports."""

    def __init__(self, files: Mapping[str, Path], sources: Mapping[Path, str]) -> None:
        self.files = dict(files)
        self.names = {path: name for name, path in self.files.items()}
        self.imports: dict[str, set[str]] = {}
        for name, path in self.files.items():
            # Names outside the folder are kept too: a module just deleted is still imported by others.
            found = imported_modules(sources.get(path, ""), name, path.name == "__init__.py")
            self.imports[name] = found - {name}

    @classmethod
    def of_folder(cls, folder: Path) -> ImportGraph:
        files = module_files(folder)
        sources: dict[Path, str] = {}
        for path in files.values():
            try:
                sources[path] = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue  # deleted meanwhile: it imports nothing
        return cls(files, sources)

    def depends_on(self, changed: Iterable[str]) -> set[str]:
        """The modules that import any of `changed`, directly or through others (`changed` included)."""
        importers: dict[str, set[str]] = {}
        for name, imported in self.imports.items():
            for target in imported:
                importers.setdefault(target, set()).add(name)
        seen = set(changed)
        todo = list(seen)
        while todo:
            for importer in importers.get(todo.pop(), ()):
                if importer not in seen:
                    seen.add(importer)
                    todo.append(importer)
        return seen

    def files_depending_on(self, changed: Iterable[str]) -> set[Path]:
        """The files of the modules that import any of `changed` (module names), directly or not."""
        return {self.files[n] for n in self.depends_on(changed) if n in self.files}


def module_name(folder: Path, path: Path) -> str:
    """The module name a file of `folder` is imported by (`pkg/util.py` -> `pkg.util`)."""
    names = [*path.relative_to(folder).parts[:-1], path.stem]
    if names[-1] == "__init__":
        names.pop()
    return ".".join(names)
