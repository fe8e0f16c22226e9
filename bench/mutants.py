"""`make mutants`: mutation testing (mutmut 3) of the modules where stages meet and numbers are decided.

Outside CI; sized for a 2-core machine (about 20-30 minutes for the default set). Results go to
build/mutants/<module>/ (mutmut's own state) and build/mutants/summary.json; TESTING.md records them.

Why a driver and not a bare ``[tool.mutmut]`` block: the stage folders at the repository root install
as ``woundscore.<stage>`` (setuptools package-dir), and mutmut 3 copies the sources into ``mutants/``
and puts that folder first on ``sys.path``: a mutated ``compare/metrics.py`` would never be imported
as ``woundscore.compare.metrics`` (the editable install still points at the real folder). So each
module runs in a mirror with the installed layout, ``build/mutants/<slug>/woundscore/<stage>/...``
plus ``tests/``, and its own ``[tool.mutmut]`` naming the one module and its test subset. mutmut then
runs, per mutant, only the tests (of that subset) that executed the mutated function.

Usage:
    .venv/bin/python bench/mutants.py                       # the default modules, in order
    .venv/bin/python bench/mutants.py compare/metrics.py    # some of them
    .venv/bin/python bench/mutants.py --list                # the module -> tests table
Options: --max-children N (default 2), --budget-s S per module (default 600), --keep (reuse a
module's previous mutmut state: only changed functions are re-run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("cache", "embed", "classify", "compare")
WORK = ROOT / "build" / "mutants"

#: module -> the tests that exercise it (fast ones; mutmut picks, per mutant, those that reach it).
#: Order: the stable, fast modules first.
MODULES: dict[str, list[str]] = {
    "compare/metrics.py": ["tests/test_metrics.py", "tests/test_joints_report.py"],  # the latter: JSON keys
    "classify/thresholds.py": ["tests/test_thresholds.py"],
    "classify/metrics.py": ["tests/test_classify_metrics.py", "tests/test_thresholds.py"],
    "compare/predictions.py": ["tests/test_report.py", "tests/test_joints_report.py"],
    "cache/merge.py": ["tests/test_cache_store.py", "tests/test_cache_cli.py"],
    "compare/methods.py": ["tests/test_joints_report.py", "tests/test_report.py"],
    "classify/calibration.py": ["tests/test_classify_calibration.py", "tests/test_calibration.py"],
    "classify/scorer.py": ["tests/test_classify_predict.py"],
    "classify/serve.py": ["tests/test_serve.py"],
}
# conftest and fixtures every subset needs
ALWAYS = ["tests/__init__.py", "tests/conftest.py", "tests/fixtures_data.py", "tests/fixtures_model.py"]


def slug(module: str) -> str:
    return module.replace("/", "_").removesuffix(".py")


def mirror(dest: Path, module: str, tests: list[str], keep: bool) -> None:
    """The installed layout in ``dest``: woundscore/ with the four stages inside, tests/, pyproject."""
    if dest.exists() and not keep:
        shutil.rmtree(dest)
    dest.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    pkg = dest / "woundscore"
    if pkg.exists():
        shutil.rmtree(pkg)
    shutil.copytree(ROOT / "woundscore", pkg, ignore=ignore)
    for stage in STAGES:
        shutil.copytree(ROOT / stage, pkg / stage, ignore=ignore)
    if (dest / "tests").exists():
        shutil.rmtree(dest / "tests")
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=ignore)  # test modules import one another
    real = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    pytest_block = real[real.index("[tool.pytest.ini_options]"):]
    pytest_block = re.sub(r"(?m)^testpaths = .*$", 'testpaths = ["tests"]', pytest_block)
    (dest / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["woundscore"]\n'
        f'only_mutate = ["woundscore/{module}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-p", "no:randomly"]\n'
        'process_isolation = "forkserver"\n'  # torch/keras are not fork-safe after use
        "timeout_multiplier = 5.0\n"
        "\n" + pytest_block,
        encoding="utf-8",
    )


def parse_results(dest: Path) -> dict[str, list[str]]:
    """mutmut's verdicts: status -> mutant names (``mutmut results --all true``)."""
    r = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=dest,
                       capture_output=True, text=True)
    out: dict[str, list[str]] = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            out.setdefault(m.group(2).strip(), []).append(m.group(1))
    return out


def run_module(module: str, tests: list[str], *, max_children: int, budget_s: int, keep: bool) -> dict:
    present = [t for t in tests if (ROOT / t).is_file()]
    if not (ROOT / module).is_file() or not present:
        return {"module": module, "skipped": f"not present (module or tests {tests})"}
    dest = WORK / slug(module)
    mirror(dest, module, present, keep)
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "WOUNDSCORE_CPU_BF16": "0"}
    t0 = time.perf_counter()
    log = (dest / "mutmut.log").open("w")
    try:
        proc = subprocess.run([sys.executable, "-m", "mutmut", "run", "--max-children", str(max_children)],
                              cwd=dest, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=budget_s)
        finished = proc.returncode == 0
    except subprocess.TimeoutExpired:
        finished = False
    seconds = round(time.perf_counter() - t0, 1)
    res = parse_results(dest)
    counts = {k: len(v) for k, v in res.items()}
    killed = counts.get("killed", 0)
    total = sum(counts.values())
    judged = total - counts.get("not checked", 0)
    return {"module": module, "tests": present, "seconds": seconds, "finished": finished, "counts": counts,
            "total": total, "killed": killed,
            "score": round(killed / judged, 3) if judged else None,
            "survived": sorted(res.get("survived", []) + res.get("no tests", []) + res.get("timeout", [])),
            "workdir": str(dest.relative_to(ROOT))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("modules", nargs="*", help="repository paths (default: all of MODULES)")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--budget-s", type=int, default=600, help="time limit per module, seconds")
    ap.add_argument("--keep", action="store_true", help="reuse mutmut's state of a previous run")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        for m, t in MODULES.items():
            print(f"{m:28} {' '.join(t)}")
        return 0
    chosen = a.modules or list(MODULES)
    unknown = [m for m in chosen if m not in MODULES]
    if unknown:
        ap.error(f"unknown module(s) {unknown}; add them to MODULES with their tests")
    WORK.mkdir(parents=True, exist_ok=True)
    summary_path = WORK / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for m in chosen:
        print(f"== {m}", flush=True)
        r = run_module(m, MODULES[m], max_children=a.max_children, budget_s=a.budget_s, keep=a.keep)
        summary[m] = r
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: r.get(k) for k in ("seconds", "finished", "counts", "score", "skipped") if k in r}),
              flush=True)
        for name in r.get("survived", []):
            print(f"   survived: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
