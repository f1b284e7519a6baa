"""The one-way import rule of README "Architecture", checked on the source (every import,
at module level or inside a function): a layer imports only the layers below it.

    tans (the public API), pipeline.cli
      -> pipeline.commands
        -> pipeline.build
          -> pipeline.acquisition, pipeline.datasets
            -> retriever -> workers -> zoo_schema (imports nothing of tans)

and no two modules import each other, directly or in a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("zoo_schema", "workers", "retriever", "pipeline", "tans")
# what each layer may import besides itself; a module's layer is its longest matching prefix
ALLOWED = {
    "zoo_schema": set(),
    "workers": {"zoo_schema"},
    "retriever": {"zoo_schema", "workers"},
    "pipeline.datasets": {"zoo_schema", "workers"},
    "pipeline.acquisition": {"zoo_schema", "workers", "retriever"},
    "pipeline.build": {"zoo_schema", "workers", "retriever", "pipeline.acquisition", "pipeline.datasets"},
    "pipeline.commands": {"zoo_schema", "workers", "retriever", "pipeline.acquisition", "pipeline.datasets",
                          "pipeline.build"},
    "pipeline.cli": {"zoo_schema", "workers", "retriever", "pipeline.acquisition", "pipeline.datasets",
                     "pipeline.build", "pipeline.commands"},
    "pipeline": set(),  # the package's __init__: a docstring only
    "tans": {"zoo_schema", "workers", "retriever", "pipeline.acquisition", "pipeline.datasets",
             "pipeline.build", "pipeline.commands"},  # the public face, on top
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def layer(module: str) -> str:
    return max((name for name in ALLOWED if module == name or module.startswith(name + ".")), key=len)


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports (resolved to the longest known module name)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


GRAPH = {m: imports(p, modules()) - {m} for m, p in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_only_point_down(module):
    own = layer(module)
    wrong = sorted(t for t in GRAPH[module]
                   if layer(t) != own and layer(t) not in ALLOWED[own]
                   and not module.startswith(t + "."))  # a module may import its own package
    assert not wrong, f"{module} (layer {own}) imports {wrong}, which are not below it"


def test_no_import_cycles():
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))
    for v in GRAPH:
        if v not in index:
            visit(v)
    # a package's __init__ importing its own modules (to register them) is not a circle
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]
    assert not cycles, f"import circles: {cycles}"


@pytest.mark.parametrize("package", [m for m, p in sorted(modules().items()) if p.name == "__init__.py"])
def test_packages_do_nothing_when_imported(package):
    """An import has no side effects: package __init__ files hold a docstring and imports."""
    tree = ast.parse(modules()[package].read_text())
    body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) else tree.body
    assert all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body), \
        f"{package}/__init__.py does more than import"


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself can fail: a zoo_schema module importing the pipeline is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from pipeline.build.config import BuildConfig\n")
    found = imports(bad, modules())
    assert "pipeline.build.config" in found
    assert layer("pipeline.build.config") not in ALLOWED[layer("zoo_schema.bad")]
