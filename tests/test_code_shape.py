"""The codebase's shape, checked: what a newcomer relies on to find the place to change.

- no module over 400 lines outside tests;
- no function over 60 lines, and none with more than 6 parameters (a config object takes the rest);
- no import cycle among the project's own modules, counting imports inside functions too;
- the pipeline (llm2clip, training, index_builder, service) never imports the research package.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 6
PIPELINE = ("llm2clip", "training", "index_builder", "service")


def _sources() -> list[Path]:
    """The project's Python files outside tests/: every .py under the repository root but virtual environments,
    caches and work folders (anything under a dot folder, __pycache__ or a folder git ignores by name here)."""
    skip = {"tests", "__pycache__", "llm2clip-work", "work", "build", "dist"}
    return sorted(p for p in ROOT.rglob("*.py")
                  if not any(part.startswith(".") or part in skip for part in p.relative_to(ROOT).parts[:-1]))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parameters(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs if p.arg not in ("self", "cls")]


def shape_problems(paths: list[Path]) -> list[str]:
    problems = []
    for path in paths:
        text = path.read_text()
        rel = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            problems.append(f"{rel}: {text.count(chr(10))} lines (at most {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            lines = node.end_lineno - node.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                problems.append(f"{rel}:{node.lineno} {node.name}: {lines} lines (at most {MAX_FUNCTION_LINES})")
            params = _parameters(node)
            if len(params) > MAX_PARAMETERS:
                problems.append(f"{rel}:{node.lineno} {node.name}: {len(params)} parameters "
                                f"(at most {MAX_PARAMETERS}; pass a config object)")
    return problems


def import_graph(paths: list[Path]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (at module level or inside functions)."""
    modules = {_module_name(p): p for p in paths}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            for name in names:
                target = resolve(name)
                if target and target != mod and not mod.startswith(target + "."):
                    graph[mod].add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (cycle := visit(n)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            return cycle
    return None


def test_modules_and_functions_stay_small():
    problems = shape_problems(_sources())
    assert not problems, "\n".join(problems)


def test_no_import_cycle():
    cycle = find_cycle(import_graph(_sources()))
    assert cycle is None, " -> ".join(cycle or [])


def test_pipeline_never_imports_research():
    graph = import_graph(_sources())
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.split(".")[0] in PIPELINE
                 for t in ts if t.split(".")[0] == "research")
    assert not bad, "\n".join(bad)


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    # the checkers themselves, on a made-up package: a long function, too many parameters and a cycle
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n\ndef f(a, b, c, d, e, f, g):\n" + "    x = 1\n" * 60)
    (pkg / "b.py").write_text("def g():\n    from . import a\n    return a\n")
    paths = [pkg / "__init__.py", pkg / "a.py", pkg / "b.py"]
    problems = shape_problems(paths)
    assert any("f: 61 lines" in p for p in problems) and any("7 parameters" in p for p in problems)
    assert find_cycle(import_graph(paths)) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    (pkg / "b.py").write_text("def g():\n    return 1\n")
    assert find_cycle(import_graph(paths)) is None
