"""The layout's import rules (docs/layout.md): scripts on top, modules below, every import pointing
down. Imports inside functions count too: a lazy import still ties two files together."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "generate_relevancy",
    "generate_scenes",
    "train_ovssc",
    "train_vool",
    "eval",
    "summarize",
    "visualize",
    "demo",
    "app",
}


def root_imports() -> dict[str, set[str]]:
    """module name -> the repository's root modules it imports, for every .py at the root."""
    files = {path.stem: path for path in REPO.glob("*.py")}
    graph = {}
    for name, path in files.items():
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
        graph[name] = (imported & set(files)) - {name}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path [a, b, ..., a], or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        for child in sorted(graph[node]):
            if state.get(child) == "open":
                return path[path.index(child) :] + [child] if child in path else [node, child]
            if child not in state and (found := visit(child, path + [child])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_every_script_exists():
    assert SCRIPTS <= {path.stem for path in REPO.glob("*.py")}


def test_no_file_imports_a_script():
    graph = root_imports()
    offenders = {name: sorted(imported & SCRIPTS) for name, imported in graph.items()}
    assert {name: hit for name, hit in offenders.items() if hit} == {}


def test_evaluation_and_calibration_take_nothing_from_training():
    """training.py is the loop; what scoring shares with it (the network on its device, seeded
    samples, batches on the device, atomic pickles) lives below both."""
    graph = root_imports()
    assert "training" not in graph["evaluation"] and "training" not in graph["calibration"]


def test_imports_form_no_circle():
    assert cycle(root_imports()) is None


def test_cycle_finds_a_circle():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
