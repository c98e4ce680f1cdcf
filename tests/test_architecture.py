"""The house rules, read from the source: imports point down the floors, no circles, short functions.

Floors, top to bottom (docs/architecture.md):

    cli → extend → train | eval → dist | policies → interop → checkpoint | config → models → layers
        → ops | hippo | reparam;   data beside them (imports only itself)

A module may import its own room (package or module) and any room on a lower floor; rooms on
one floor never import each other. Every ``import``/``from`` is read, at module level and inside
functions, and so is every string naming a longssm module to ``importlib`` ("longssm.x.y" or
"longssm.x.y:Name"), so a dependency hidden from static analysis is still seen.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "longssm"
FLOORS = [
    {"cli"},
    {"extend"},
    {"train", "eval", "analysis", "tasks", "adapt"},
    {"dist", "policies", "runtime"},
    {"interop"},
    {"checkpoint", "config"},
    {"models"},
    {"layers"},
    {"ops", "hippo", "reparam"},
    {"data"},
]
FLOOR_OF = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
# Kernels compiled by numba or Triton: one long function each is the natural unit there.
KERNEL_MODULES = {"ops/selective_scan/_fused_kernels.py", "ops/selective_scan/_triton_kernels.py",
                  "ops/longhorn/_fused_kernels.py", "ops/ssd/_fused_kernels.py", "ops/_numba.py"}
MAX_FUNCTION_LINES = 80
MODULE_STRING = re.compile(r"^longssm(\.[A-Za-z_][A-Za-z0-9_]*)+(:[A-Za-z_][A-Za-z0-9_]*)?$")


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module under src/longssm."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imported(path: Path, name: str, known: dict[str, Path] | None = None) -> set[str]:
    """The longssm modules ``path`` (module ``name``) imports, importlib strings included.

    ``from package import submodule`` counts as an import of the submodule only (``known``: the
    modules that exist).
    """
    known = known or {}
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            names = {f"{base}.{a.name}" for a in node.names}
            found.update(names)
            if not names <= set(known):
                found.add(base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if MODULE_STRING.match(node.value):
                found.add(node.value.split(":")[0])
    return {m for m in found if m == "longssm" or m.startswith("longssm.")}


def resolve(target: str, known: dict[str, Path]) -> str | None:
    """The module a dotted import target names (``from m import f`` gives m.f: back off to m)."""
    while target and target not in known:
        target = target.rpartition(".")[0]
    return target or None


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def graph() -> dict[str, set[str]]:
    known = modules()
    edges = {}
    for name, path in known.items():
        targets = {resolve(t, known) for t in imported(path, name, known)}
        edges[name] = {t for t in targets if t and t != name and t != "longssm"}
    return edges


def test_every_room_has_a_floor():
    rooms = {room(m) for m in modules()} - {""}
    assert rooms <= set(FLOOR_OF), f"rooms without a floor: {sorted(rooms - set(FLOOR_OF))}"


def test_imports_point_down_the_floors():
    bad = []
    for source, targets in graph().items():
        for target in targets:
            a, b = room(source), room(target)
            if a == b or not a:
                continue
            if FLOOR_OF[b] <= FLOOR_OF[a]:
                kind = "sideways" if FLOOR_OF[b] == FLOOR_OF[a] else "upward"
                bad.append(f"{source} -> {target} ({kind})")
    assert not bad, "imports that climb or cross a floor:\n" + "\n".join(sorted(bad))


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                # a package importing its own submodules (``__init__`` re-exports) is not a circle
                cycle = stack[stack.index(nxt):] + [nxt]
                if not all(c == cycle[0] or c.startswith(cycle[0] + ".") for c in cycle):
                    cycles.append(" -> ".join(cycle))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import circles:\n" + "\n".join(cycles)


def test_the_checker_sees_what_it_must(tmp_path):
    # an importlib string and a function-level import are edges too
    source = tmp_path / "mod.py"
    source.write_text(
        "import importlib\n"
        "def f():\n"
        "    from longssm.train import loop\n"
        "    return importlib.import_module('longssm.cli')\n"
        "X = 'longssm.layers.mamba:Mamba'\n"
    )
    assert imported(source, "longssm.models.mod") >= {
        "longssm.train", "longssm.train.loop", "longssm.cli", "longssm.layers.mamba"
    }


def long_functions() -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in KERNEL_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    out.append(f"{rel}:{node.lineno} {node.name} ({lines} lines)")
    return out


def test_no_long_functions_outside_kernels():
    assert not long_functions(), "functions over 80 lines:\n" + "\n".join(long_functions())


@pytest.mark.parametrize("name", ["longssm.cli", "longssm.extend", "longssm.eval.cli"])
def test_cli_modules_are_not_imported_by_the_library(name):
    # a CLI module is argument parsing plus one call into the library: only the CLI imports it
    importers = [m for m, targets in graph().items() if name in targets and m != "longssm.cli"]
    assert importers == [], importers
