"""The layers of `openrtc/`, read from the imports themselves (ast): the runtime at the bottom imports
none of its plug-ins or front ends, and no two packages import each other."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "openrtc"
FRONT_ENDS = {"top", "cli"}


def imports_of(path: Path) -> set[str]:
    """Every `openrtc...` module a file imports, anywhere in it (lazy imports in functions too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("openrtc"))
        elif (
            isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("openrtc")
        ):
            out.add(str(node.module))
    return out


def package_of(module: str) -> str | None:
    """`openrtc.runtime.pool` -> `runtime`; None for top-level modules (`openrtc.errors`)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    candidate = PACKAGE / parts[1]
    return parts[1] if candidate.is_dir() else None


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) < 2:
            continue  # top-level modules (the composition in `openrtc/pool.py`, errors, framing)
        source = rel.parts[0]
        for module in imports_of(path):
            target = package_of(module)
            if target is not None and target != source:
                graph[source].add(target)
    return graph


def test_the_runtime_imports_none_of_its_plug_ins_or_front_ends() -> None:
    offenders = []
    for path in (PACKAGE / "runtime").rglob("*.py"):
        for module in imports_of(path):
            package = package_of(module)
            if package is not None and package != "runtime":
                offenders.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not offenders, offenders


def test_no_two_packages_import_each_other_and_nothing_imports_a_front_end() -> None:
    graph = package_graph()
    cycles = [(a, b) for a, targets in graph.items() for b in targets if a in graph.get(b, set())]
    assert not cycles, cycles
    into_front_ends = [
        (a, b) for a, targets in graph.items() for b in targets if b in FRONT_ENDS and a != "cli"
    ]
    assert not into_front_ends, into_front_ends  # only the CLI starts `top`


def test_the_reader_finds_the_imports_it_checks(tmp_path: Path) -> None:
    sample = tmp_path / "m.py"
    sample.write_text("import openrtc.runtime.pool\ndef f():\n    from openrtc.introspection import hook\n")
    assert imports_of(sample) == {"openrtc.runtime.pool", "openrtc.introspection"}
    assert (
        package_of("openrtc.introspection.hook") == "introspection" and package_of("openrtc.errors") is None
    )
