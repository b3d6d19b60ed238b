"""The layout holds: no import circle anywhere in SkyDeck, and the arrow runs from experiments to clusters."""

import ast
from pathlib import Path

from tests.support import ROOT

PACKAGES = ("clusters", "experiments", "skydeck_site")


def modules():
    """module name -> its file, for every SkyDeck module (migrations left out: Django writes them)."""
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports_of(name, path, known):
    """The SkyDeck modules ``name`` imports, at the top or inside functions alike."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            candidates = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        for candidate in candidates:
            # The longest SkyDeck module the import names (``from x import y`` may name a module or a name).
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def graph():
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def cycles(edges):
    """Every cycle found by a depth-first walk, as a list of module names."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            # A package importing its own submodules (its __init__ re-exporting them) is not a circle.
            if nxt.startswith(node + "."):
                continue
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_there_is_no_import_circle():
    assert cycles(graph()) == []


def test_the_cycle_finder_finds_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_clusters_imports_nothing_from_experiments_or_the_site():
    offenders = {
        name: sorted(t for t in targets if not t.startswith("clusters"))
        for name, targets in graph().items()
        if name.startswith("clusters")
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_only_the_skypilot_backend_imports_sky():
    importers = set()
    for name, path in modules().items():
        for node in ast.walk(ast.parse(Path(path).read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            if any(n == "sky" or n.startswith("sky.") for n in names):
                importers.add(name)
    assert importers <= {"clusters.backends.skypilot"}


def test_no_test_module_imports_another():
    """Shared test code lives in tests/support.py, tests/factories.py and the conftest files."""
    offenders = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [
                f"{path.relative_to(ROOT)}: {name}" for name in names if name.rpartition(".")[2].startswith("test_")
            ]
    assert offenders == []
