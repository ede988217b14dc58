"""What the package's layout is held to, measured from its source (docs/architecture.md).

    .venv/bin/python tools/shape.py            # a report; exit 1 when a limit is broken
    .venv/bin/python tools/shape.py --json

- import circles among the package's modules (imports inside functions count too): 0
- modules over MAX_MODULE_LINES lines: none
- functions over MAX_FUNCTION_LINES lines (docstring included): none
- functions that take the whole Config (a parameter named `cfg` or annotated `Config`):
  listed, for the reader to judge; the count is reported
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "estimator_vgg"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def imports(tree: ast.AST) -> Set[str]:
    """The package's modules a module imports, anywhere in it."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "estimator_vgg":
                out.update(a.name for a in node.names)
            elif node.module.startswith("estimator_vgg."):
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names
                       if a.name.startswith("estimator_vgg."))
    return out


def circles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    found: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def measure() -> dict:
    graph, sizes, functions, whole_config = {}, {}, [], []
    for f in sorted(PACKAGE.glob("*.py")):
        text = f.read_text(encoding="utf-8")
        tree = ast.parse(text)
        name = f.stem
        graph[name] = imports(tree) - {name}
        sizes[name] = len(text.splitlines())
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            where = f"{f.name}:{node.lineno} {node.name}"
            functions.append((node.end_lineno - node.lineno + 1, where))
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            if any(a.arg == "cfg" or (a.annotation is not None and
                                      ast.unparse(a.annotation).strip("'\"") == "Config")
                   for a in args):
                whole_config.append(where)
    functions.sort(reverse=True)
    return {"circles": circles(graph),
            "largest_modules": sorted(((n, m) for m, n in sizes.items()), reverse=True)[:5],
            "longest_functions": functions[:5],
            "whole_config": whole_config,
            "whole_config_modules": len({w.split(":")[0] for w in whole_config})}


def main() -> int:
    r = measure()
    if sys.argv[1:] == ["--json"]:
        print(json.dumps(r, indent=2))
    else:
        print(f"import circles: {len(r['circles'])} {r['circles'] or ''}")
        print("largest modules: " + ", ".join(f"{m} {n}" for n, m in r["largest_modules"]))
        print("longest functions: " + ", ".join(f"{w} ({n})" for n, w in
                                                r["longest_functions"]))
        print(f"functions taking the whole Config: {len(r['whole_config'])} in "
              f"{r['whole_config_modules']} modules")
        for w in r["whole_config"]:
            print(f"  {w}")
    broken = (r["circles"] or r["largest_modules"][0][0] > MAX_MODULE_LINES
              or r["longest_functions"][0][0] > MAX_FUNCTION_LINES)
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
