"""The shape of the code, measured on the source tree with `ast`: the longest modules,
classes and functions outside bench/ and tests/, and the import layers.

    python bench/code_shape.py

Goals: no module over 400 lines, no class over 15 methods, no function over 60 lines, no
upward import and no import circle (tests/test_layers.py checks the last two on every run),
a README of at most 250 lines. Prints the offenders and, on its last line, one JSON object.
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ("tans", "pipeline", "workers", "retriever", "zoo_schema")
LIMITS = {"module_lines": 400, "class_methods": 15, "function_lines": 60, "readme_lines": 250}


def measure() -> dict:
    modules, classes, functions = [], [], []
    for folder in SOURCE:
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            text = path.read_text()
            modules.append((len(text.splitlines()), rel))
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef):
                    methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                    classes.append((len(methods), f"{rel}:{node.name}"))
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.name}"))
    sys.path.insert(0, str(ROOT))
    from tests.test_layers import layer_violations  # the same check the suite runs

    upward, circles = layer_violations()
    readme = len((ROOT / "README.md").read_text().splitlines())
    return {
        "modules": modules,
        "classes": classes,
        "functions": functions,
        "upward": upward,
        "circles": circles,
        "readme": readme,
    }


def main() -> None:
    m = measure()
    over = {
        "module_lines": sorted((n, w) for n, w in m["modules"] if n > LIMITS["module_lines"]),
        "class_methods": sorted((n, w) for n, w in m["classes"] if n > LIMITS["class_methods"]),
        "function_lines": sorted((n, w) for n, w in m["functions"] if n > LIMITS["function_lines"]),
    }
    for kind, rows in over.items():
        for n, where in rows:
            print(f"over the {kind} limit of {LIMITS[kind]}: {where} ({n})")
    funcs = sorted(n for n, _ in m["functions"])
    print(
        json.dumps(
            {
                "modules": len(m["modules"]),
                "max_module_lines": max(n for n, _ in m["modules"]),
                "modules_over_400": len(over["module_lines"]),
                "max_class_methods": max((n for n, _ in m["classes"]), default=0),
                "classes_over_15_methods": len(over["class_methods"]),
                "functions": len(funcs),
                "median_function_lines": funcs[len(funcs) // 2],
                "max_function_lines": funcs[-1],
                "functions_over_60": len(over["function_lines"]),
                "upward_imports": len(m["upward"]),
                "import_circles": len(m["circles"]),
                "readme_lines": m["readme"],
                "readme_ok": m["readme"] <= LIMITS["readme_lines"],
            }
        )
    )


if __name__ == "__main__":
    main()
