"""The shape of the library: a one-way import graph, no module reaching into another's private names,
and small modules."""

import ast
from pathlib import Path

import pytest

from avg_lib.paths import REPO_ROOT

LIB = REPO_ROOT / "avg_lib"
MODULES = sorted(LIB.rglob("*.py"))
MAX_LINES = 400  # a guard against sprawl, not a reason to cut one idea in two


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(importer: str, is_package: bool, node: ast.ImportFrom) -> list[tuple[str, list[str]]]:
    """``(imported module, names taken from it)`` for one ``from ... import ...`` inside the library."""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level:
        base = base[: len(base) - node.level + 1]
        target = ".".join(base + (node.module.split(".") if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("avg_lib"):
        return []
    names = [a.name for a in node.names]
    known = {module_name(p) for p in MODULES}
    subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in known]  # `from . import x` names modules
    return [(s, []) for s in subs] + (
        [(target, [n for n in names if f"{target}.{n}" not in known])] if len(subs) < len(names) else []
    )


def imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every avg_lib import of a module, at any depth (lazy imports inside functions count too)."""
    me, out = module_name(path), []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            out += resolve(me, path.name == "__init__.py", node)
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name.startswith("avg_lib")]
    return out


GRAPH = {module_name(p): sorted({t for t, _ in imports(p)} - {module_name(p)}) for p in MODULES}


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in graph.get(n, []):
            if state.get(m) == "open":
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        state[n] = "done"
        stack.pop()
        return None

    for n in graph:
        if n not in state and (c := visit(n)):
            return c
    return None


def test_import_graph_has_no_cycle():
    assert find_cycle(GRAPH) is None, " -> ".join(find_cycle(GRAPH))


def test_the_cycle_check_can_fail():
    assert find_cycle({"a": ["b"], "b": ["c"], "c": ["a"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["b"], "b": [], "c": ["a", "b"]}) is None


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_no_module_imports_another_modules_private_names(path):
    private = [(t, n) for t, names in imports(path) for n in names if n.startswith("_") and not n.startswith("__")]
    assert not private, f"{module_name(path)} imports private names {private}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_modules_are_small(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(REPO_ROOT)} has {n} lines (at most {MAX_LINES})"


def test_generator_is_a_package_of_small_parts():
    assert {
        "avg_lib.models.generator.config",
        "avg_lib.models.generator.minilm",
        "avg_lib.models.generator.t5",
        "avg_lib.models.generator.training",
    } <= set(GRAPH)
    # backends know the interface, not each other
    assert "avg_lib.models.generator.t5" not in GRAPH["avg_lib.models.generator.minilm"]
    assert "avg_lib.models.generator.minilm" not in GRAPH["avg_lib.models.generator.t5"]


def test_import_graph_as_text():
    """The graph the stop note quotes (printed with -s)."""
    for mod, deps in GRAPH.items():
        print(f"{mod}: {', '.join(d.removeprefix('avg_lib.') for d in deps)}")


# the floors of the library, bottom up: a module imports from its own floor or lower ones only
FLOORS = {"core": 0, "data": 1, "retrieval": 1, "models": 2, "evaluation": 3, "runs": 4, "tools": 5}


def floor_of(module: str) -> str:
    """The subpackage a module belongs to (``core``: the top-level helpers paths, progress, cache, results)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLOORS else "core"


def test_subpackages_import_one_way():
    """data and retrieval over the core helpers, models over them, then evaluation, runs and tools: no module
    imports from a higher floor (``python -m avg_lib``'s ``__main__`` is the entry point, above every floor)."""
    upward = [
        (module_name(p), target)
        for p in MODULES
        if module_name(p) != "avg_lib.__main__"
        for target, _ in imports(p)
        if FLOORS[floor_of(target)] > FLOORS[floor_of(module_name(p))]
    ]
    assert not upward, upward
    assert {floor_of(module_name(p)) for p in MODULES} == set(FLOORS)
