"""Longest functions and classes of the package, by source lines (def/class line to its last line).

The house rule is no function over 60 lines without a reason written beside it; this lists the ones
that come closest and the largest classes. Pure `ast`, imports nothing of the package.

    python benchmarks/code_size.py [--root uit_reid] [--top 12]
"""

from __future__ import annotations

import argparse
import ast
from pathlib import Path


def spans(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(functions, classes) as (lines, "path:line name"), longest first."""
    functions, classes = [], []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                row = (node.end_lineno - node.lineno + 1, f"{path}:{node.lineno} {node.name}")
                (classes if isinstance(node, ast.ClassDef) else functions).append(row)
    return sorted(functions, reverse=True), sorted(classes, reverse=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="uit_reid")
    parser.add_argument("--top", type=int, default=12)
    parser.add_argument("--limit", type=int, default=60, help="count the functions longer than this")
    args = parser.parse_args()
    functions, classes = spans(Path(args.root))
    print(f"functions over {args.limit} lines: {sum(n > args.limit for n, _ in functions)}")
    for n, where in functions[: args.top]:
        print(f"  {n:4d} {where}")
    print("largest classes:")
    for n, where in classes[: args.top // 2]:
        print(f"  {n:4d} {where}")


if __name__ == "__main__":
    main()
