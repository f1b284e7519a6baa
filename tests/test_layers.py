"""The one-way import rule of docs/architecture.md, checked on the source (every import, at
module level or inside a function): a layer imports only the layers below it.

    tans (the public API), tans.pipeline.cli
      -> tans.pipeline.commands
        -> tans.pipeline.execution
          -> tans.pipeline.acquisition, tans.pipeline.datasets
            -> tans.retriever -> tans.workers -> tans.zoo_schema (imports nothing of tans)

`tans.layers` (the list of layer folders, a constant) may be imported from anywhere; and no
two modules import each other, directly or in a circle. The repository's layer folders
install as `tans.<folder>` (setup.py), so the module `tans.pipeline.cli` is the file
`pipeline/cli.py`.
"""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = runpy.run_path(str(ROOT / "tans" / "layers.py"))["LAYERS"]
Z, W, R, P = (f"tans.{name}" for name in ("zoo_schema", "workers", "retriever", "pipeline"))
# what each layer may import besides itself; a module's layer is its longest matching prefix
ALLOWED = {
    "tans.layers": set(),
    Z: set(),
    W: {Z},
    R: {Z, W},
    f"{P}.datasets": {Z, W},
    f"{P}.acquisition": {Z, W, R},
    f"{P}.execution": {Z, W, R, f"{P}.acquisition", f"{P}.datasets"},
    f"{P}.commands": {Z, W, R, f"{P}.acquisition", f"{P}.datasets", f"{P}.execution"},
    f"{P}.cli": {Z, W, R, f"{P}.acquisition", f"{P}.datasets", f"{P}.execution", f"{P}.commands"},
    P: set(),  # the package's __init__: a docstring only
    "tans": {Z, W, R, f"{P}.acquisition", f"{P}.datasets", f"{P}.execution", f"{P}.commands"},  # the public face
}
EVERYWHERE = {"tans.layers"}


def modules() -> dict[str, Path]:
    """{module name: file} of every module of the installed namespace, from the repository."""
    out = {}
    for folder, package in [("tans", "tans")] + [(layer, f"tans.{layer}") for layer in LAYERS]:
        for path in sorted((ROOT / folder).rglob("*.py")):
            name = ".".join([package, *path.relative_to(ROOT / folder).with_suffix("").parts])
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
    wrong = upward(module)
    assert not wrong, f"{module} (layer {layer(module)}) imports {wrong}, which are not below it"


def upward(module: str) -> list[str]:
    own = layer(module)
    return sorted(
        t
        for t in GRAPH[module]
        if layer(t) != own and layer(t) not in ALLOWED[own] and t not in EVERYWHERE and not module.startswith(t + ".")
    )  # a module may import its own package


def test_no_import_cycles():
    cycles = import_cycles()
    assert not cycles, f"import circles: {cycles}"


def layer_violations() -> tuple[list[str], list[list[str]]]:
    """(upward imports as 'module -> target', import circles): what bench/code_shape.py reports."""
    return [f"{m} -> {t}" for m in sorted(GRAPH) for t in upward(m)], import_cycles()


def import_cycles() -> list[list[str]]:
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
    return [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c)]


@pytest.mark.parametrize("package", [m for m, p in sorted(modules().items()) if p.name == "__init__.py"])
def test_packages_do_nothing_when_imported(package):
    """An import has no side effects: package __init__ files hold a docstring and imports."""
    tree = ast.parse(modules()[package].read_text())
    body = tree.body[1:] if tree.body and isinstance(tree.body[0], ast.Expr) else tree.body
    assert all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in body), (
        f"{package}/__init__.py does more than import"
    )


def test_the_rule_catches_an_upward_import(tmp_path):
    """The check itself can fail: a zoo_schema module importing the pipeline is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from tans.pipeline.execution.config import BuildConfig\n")
    found = imports(bad, modules())
    assert "tans.pipeline.execution.config" in found
    assert layer("tans.pipeline.execution.config") not in ALLOWED[layer("tans.zoo_schema.bad")]


def test_the_wheel_installs_one_top_level_package(tmp_path):
    """Built as users install it, the wheel holds `tans/...` and its metadata, nothing else at
    the top: no `pipeline`, `workers`, `retriever` or `zoo_schema` in their site-packages."""
    import subprocess
    import sys
    import zipfile

    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("tans-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"tans", wheel.name.split("-py3")[0] + ".dist-info"}
    for layer_name in LAYERS:
        assert f"tans/{layer_name}/__init__.py" in names
    assert (
        "tans/pipeline/cli/main.py" in names
        and "tans/workers/networks/pretrained/ofa-mbv3-w1.0-suite24-photos361-rescaled.json" in names
    )
