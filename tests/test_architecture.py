"""The shape issue #11 asked for, kept: imports flow one way, and no function or module grows past a reader's
glance. Walks ``src/masklm`` with ``ast``; imports inside functions count (they hid two cycles before)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "masklm"
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 500
GENERATED = {"hf/remote/modeling_masklm_ltg.py"}  # generated from models/ (tests/test_remote_code.py)


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules of masklm that ``name`` imports, at the top or inside functions."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_counting_imports_inside_functions():
    modules = _modules()
    # a package's __init__ re-exporting its own submodules is not a cycle of concepts: drop package -> own child
    graph = {n: {t for t in _imports(n, p, modules) if not (p.name == "__init__.py" and t.startswith(n + "."))}
             for n, p in modules.items()}
    assert _cycles(graph) == []


def test_lower_stages_never_import_the_package_root():
    modules = _modules()
    offenders = [n for n, p in modules.items() if n != "masklm" and "masklm" in _imports(n, p, modules)
]
    assert offenders == []


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_over_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        if str(path.relative_to(SRC)) in GENERATED:
            continue
        for fn in _functions(ast.parse(path.read_text(encoding="utf-8"))):
            lines = fn.end_lineno - fn.lineno + 1
            if lines > MAX_FUNCTION_LINES:
                long.append(f"{path.relative_to(SRC)}:{fn.lineno} {fn.name} ({lines} lines)")
    assert long == []


def test_no_module_over_500_lines():
    long = [f"{p.relative_to(SRC)} ({n})" for p in sorted(SRC.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
            and str(p.relative_to(SRC)) not in GENERATED]
    assert long == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_every_import_inside_a_function_says_why():
    """Imports inside functions only keep start-up light (CLI commands, optional extras); a ``# lazy:``
    comment above them says which."""
    silent = []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for fn in _functions(ast.parse("\n".join(lines))):
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    said = " ".join(lines[fn.lineno - 1: node.end_lineno])  # from the def to the import
                    if "# lazy:" not in said:
                        silent.append(f"{path.relative_to(SRC)}:{node.lineno}")
    assert silent == []
