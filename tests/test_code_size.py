"""Rooms a person reads in one sitting: no module over 500 lines, no function over 80.

`python -m tests.test_code_size` prints the line counts per package and the largest modules and
functions.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("woundscore", "cache", "embed", "classify", "compare")
MAX_MODULE, MAX_FUNCTION = 500, 80


def measure() -> tuple[dict[str, int], list[tuple[int, str]], list[tuple[int, str]]]:
    """(physical lines per package, [(lines, module)], [(lines, "module:line name")])."""
    totals: dict[str, int] = {}
    modules, functions = [], []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            src = f.read_text(encoding="utf-8")
            n = src.count("\n")
            rel = str(f.relative_to(ROOT))
            totals[pkg] = totals.get(pkg, 0) + n
            modules.append((n, rel))
            for node in ast.walk(ast.parse(src)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    functions.append((node.end_lineno - node.lineno + 1, f"{rel}:{node.lineno} {node.name}"))
    return totals, sorted(modules, reverse=True), sorted(functions, reverse=True)


def test_no_module_or_function_outgrows_one_sitting() -> None:
    _, modules, functions = measure()
    assert [m for m in modules if m[0] > MAX_MODULE] == []
    assert [f for f in functions if f[0] > MAX_FUNCTION] == []


def test_measure_counts_what_it_reads() -> None:
    totals, modules, functions = measure()
    assert sum(totals.values()) == sum(n for n, _ in modules)
    assert functions[0][0] >= functions[-1][0] > 0


if __name__ == "__main__":
    totals, modules, functions = measure()
    for pkg, n in totals.items():
        print(f"{n:6d}  {pkg}/")
    print(f"{sum(totals.values()):6d}  total\nlargest modules:")
    for n, name in modules[:5]:
        print(f"{n:6d}  {name}")
    print("longest functions:")
    for n, name in functions[:5]:
        print(f"{n:6d}  {name}")
