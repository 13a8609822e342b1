"""The static import graph of an agents folder (what hot reload follows)."""

from __future__ import annotations

from pathlib import Path

from openrtc.runtime.deps import ImportGraph, imported_modules, module_files, module_name


def test_imports_anywhere_in_the_source_with_parents_and_possible_submodules() -> None:
    source = (
        "import os, a.b.c\n"
        "from d import e, f as g\n"
        "def later():\n"
        "    import _lazy\n"
        "    from pkg.sub import *\n"
    )
    assert imported_modules(source, "agent") == {
        "os",
        "a",
        "a.b",
        "a.b.c",
        "d",
        "d.e",
        "d.f",
        "_lazy",
        "pkg",
        "pkg.sub",
    }


def test_relative_imports_resolve_against_the_module_or_package() -> None:
    assert imported_modules("from . import x\nfrom .y import z\n", "pkg.mod") == {
        "pkg",
        "pkg.x",
        "pkg.y",
        "pkg.y.z",
    }
    assert imported_modules("from .inner import q\n", "pkg", is_package=True) == {
        "pkg",
        "pkg.inner",
        "pkg.inner.q",
    }
    assert imported_modules("from .. import up\n", "mod") == set()  # above the folder: nothing
    assert imported_modules("def broken(:\n", "mod") == set()


def test_module_files_and_names(tmp_path: Path) -> None:
    for rel in ("a.py", "_h.py", "pkg/__init__.py", "pkg/util.py", "__pycache__/x.py", ".hidden/y.py"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    files = module_files(tmp_path)
    assert sorted(files) == ["_h", "a", "pkg", "pkg.util"]
    assert module_name(tmp_path, tmp_path / "pkg" / "util.py") == "pkg.util"
    assert module_name(tmp_path, tmp_path / "pkg" / "__init__.py") == "pkg"


def test_dependents_are_transitive_and_include_deleted_modules() -> None:
    files = {name: Path(f"/f/{name}.py") for name in ("agent", "other", "_helpers", "_base", "_unused")}
    sources = {
        files["agent"]: "import _helpers\n",
        files["other"]: "def f():\n    from _unused import x\n",
        files["_helpers"]: "from _base import VALUE\nimport _gone\n",
        files["_base"]: "VALUE = 1\n",
        files["_unused"]: "",
    }
    graph = ImportGraph(files, sources)
    assert graph.depends_on(["_base"]) == {"_base", "_helpers", "agent"}
    assert graph.files_depending_on(["_unused"]) == {files["_unused"], files["other"]}
    assert graph.files_depending_on(["_gone"]) == {files["_helpers"], files["agent"]}  # deleted file
    assert graph.depends_on(["agent"]) == {"agent"}
