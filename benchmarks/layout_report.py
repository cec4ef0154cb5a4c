"""How easy the house is to read, in numbers: the package's own imports hidden inside functions,
the public names of training/, circles between modules, whether the pipeline pulls in training
code, error messages outside cli/ that name command-line flags, print() in library code, and the
largest function and module. Read from the source alone (nothing is run but one import of the
pipeline), so it can be pointed at any checkout to compare two commits:

    python benchmarks/layout_report.py                 # this checkout
    git worktree add /tmp/old <commit> && python benchmarks/layout_report.py --root /tmp/old
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")


def modules(package: Path) -> dict:
    """dotted name -> parsed tree, for every module of the package."""
    out = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def resolve(node: ast.ImportFrom, module: str, is_package: bool) -> list:
    """The package modules an ImportFrom names (relative ones resolved against ``module``)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("compress3d_lite"):
        return []
    if node.module:
        return [target] + [f"{target}.{a.name}" for a in node.names]
    return [f"{target}.{a.name}" for a in node.names]


def report(root: Path) -> dict:
    package = root / "compress3d_lite"
    mods = modules(package)
    graph, inner, flags, prints, functions = {}, [], [], [], []
    for name, (path, tree) in mods.items():
        is_package = path.name == "__init__.py"
        in_cli = name.startswith("compress3d_lite.cli")
        edges = set()
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            functions.append((fn.end_lineno - fn.lineno + 1, f"{path.relative_to(root)}:{fn.name}"))
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and resolve(node, name, is_package) and not in_cli:
                    inner.append(f"{path.relative_to(root)}:{node.lineno}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                edges |= {t for t in resolve(node, name, is_package) if t in mods and t != name}
            if in_cli:
                continue
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "print":
                prints.append(f"{path.relative_to(root)}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and FLAG.search(node.value) \
                    and not (node.value.lstrip().startswith(("\n", '"')) and len(node.value) > 200):
                flags.append(f"{path.relative_to(root)}:{node.lineno}: {FLAG.search(node.value).group()}")
        graph[name] = edges
    # docstrings mention commands freely; count only strings that are not a module's/function's docstring
    docstrings = set()
    for name, (path, tree) in mods.items():
        for node in [tree] + [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]:
            if node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant):
                docstrings.add(f"{path.relative_to(root)}:{node.body[0].value.lineno}")
    flags = [f for f in flags if f.rsplit(":", 1)[0] not in docstrings]
    training = {}
    for name, (path, tree) in mods.items():
        if name.startswith("compress3d_lite.training."):
            training[path.name] = sorted(
                n for node in tree.body
                for n in ([node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else
                          [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)])
                if not n.startswith("_") and n != "log")  # a module logger is no name of the design
    code = ("import sys, compress3d_lite.pipeline; "
            "print(sorted(m for m in sys.modules if m.startswith('compress3d_lite.training') "
            "or m.startswith('compress3d_lite.stages')))")
    pulled = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    module_lines = sorted((len(p.read_text().splitlines()), str(p.relative_to(root))) for p, _ in mods.values())
    return {
        "package_imports_inside_functions_outside_cli": len(inner),
        "where": inner,
        "circles": circles(graph),
        "pipeline_pulls_in": (ast.literal_eval(pulled.stdout.strip()) if pulled.returncode == 0
                              else pulled.stderr[-300:]),
        "training_public_names": training,
        "n_training_public_names": sum(len(v) for v in training.values()),
        "flag_names_in_library_strings": flags,
        "print_calls_in_library": prints,
        "largest_functions": [f"{n} lines {where}" for n, where in sorted(functions, reverse=True)[:5]],
        "largest_modules": [f"{n} lines {where}" for n, where in module_lines[::-1][:5]],
    }


def circles(graph: dict) -> list:
    """Strongly connected groups of two or more modules (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    # a package's __init__ importing its own modules is no circle of the design
    return [g for g in out if not all(g[0] == m or m.startswith(g[0] + ".") for m in g)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="a checkout of the project")
    ap.add_argument("--json", help="write the whole report here")
    args = ap.parse_args(argv)
    r = report(Path(args.root))
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
    for key, value in r.items():
        if key == "where":
            continue
        as_is = ("largest_functions", "largest_modules", "circles", "pipeline_pulls_in")
        if isinstance(value, list) and key not in as_is:
            print(f"{key}: {len(value)}")
            for v in value[:40]:
                print(f"    {v}")
        elif isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"    {k} ({len(v)}): {', '.join(v)}")
        else:
            print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
