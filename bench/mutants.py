"""`make mutants`: mutation testing (mutmut 3) of the modules where stages meet and numbers are decided.

Outside CI; sized for a 2-core machine (default set: about 25-35 minutes with ``--budget-s 300``).
Results go to build/mutants/<group>/ (mutmut's own state) and build/mutants/summary.json; TESTING.md
records them.

Why a driver and not a bare ``[tool.mutmut]`` block: the stage folders at the repository root install
as ``woundscore.<stage>`` (setuptools package-dir), and mutmut 3 copies the sources into ``mutants/``
and puts that folder first on ``sys.path``: a mutated ``compare/metrics.py`` would never be imported
as ``woundscore.compare.metrics`` (the editable install still points at the real folder). So each
group runs in a mirror with the installed layout, ``build/mutants/<group>/woundscore/<stage>/...``
plus ``tests/``, and its own ``[tool.mutmut]`` naming the group's modules and its test subset. mutmut
then runs, per mutant, only the tests (of that subset) that executed the mutated function.

Which functions: GROUPS lists, per group, the functions mutated (``None``: every function of the
module). They are passed to ``mutmut run`` as mutant-name globs; the others are generated but never
run and do not count. TESTING.md says why each excluded function is left out.

Stalls: each mutant has mutmut's own wall/CPU limit (``timeout_multiplier``); on top of that the
driver watches mutmut's progress counter and, when it has not moved for ``--stall-s`` seconds,
kills the run, reads mutmut's debug log for the mutants that were started and never finished,
records them as "stalled" (a hang is a detected mutant: the tests did not pass) and resumes with
the rest.

Usage:
    .venv/bin/python bench/mutants.py                       # every group, in order
    .venv/bin/python bench/mutants.py compare_metrics       # some of them
    .venv/bin/python bench/mutants.py --list                # group -> modules, functions, tests
Options: --max-children N (default 2), --budget-s S per group (default 300), --stall-s S (default 90),
--keep (resume: reuse a group's previous mutmut state and run only the mutants never judged),
--survivors (re-run only the previous run's survivors, e.g. after adding tests).
--recheck [--match GLOB] (the current tests/test_mutants_* files against the recorded survivors, one
process per group, no mutmut run; verdicts merged into build/mutants/recheck.json).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("cache", "embed", "classify", "compare")
WORK = ROOT / "build" / "mutants"
PY = sys.executable

#: group -> {"modules": {repo path: functions or None (all)}, "tests": [...]}.
#: A function is "name" (module level) or "Class.method". Order: stable, fast groups first; the
#: service and scorer last.
GROUPS: dict[str, dict] = {
    "classify_metrics": {
        "modules": {"classify/metrics.py": ["roc_auc", "macro_auc", "sens_spec", "evaluate"]},
        "tests": ["tests/test_classify_metrics.py", "tests/test_mutants_classify_metrics.py"],
    },
    "classify_thresholds": {
        "modules": {"classify/thresholds.py": None},
        "tests": ["tests/test_thresholds.py", "tests/test_mutants_thresholds.py"],
    },
    "compare_metrics": {
        "modules": {"compare/metrics.py": [
            "not_estimable", "one_class_reason", "wilson_interval", "sensitivity_specificity", "_estimate",
            "_method_metrics", "_label_metrics", "paired_delta", "_macro", "_comparison", "evaluate",
            "stratified_bootstrap_counts", "_observed"]},
        # test_metrics.py's bootstrap-heavy tests (n_boot 200-400 on 300 rows) made each evaluate()
        # mutant take seconds; its fast tests plus the hand-pinned file cover the same functions
        "tests": ["tests/test_mutants_compare_metrics.py"] + [f"tests/test_metrics.py::{t}" for t in (
            "test_stratified_counts_keep_class_sizes_and_plain_counts_keep_n", "test_wilson_interval_known_values",
            "test_sensitivity_specificity_at_threshold_mask_missing",
            "test_one_class_label_is_not_estimable_and_json_has_no_nan", "test_shape_errors_name_the_method",
            "test_point_estimates_come_from_classify_metrics")],
    },
    "classify_calibration": {
        "modules": {"classify/calibration.py": None},
        "tests": ["tests/test_calibration.py", "tests/test_mutants_calibration.py"],
    },
    "cache_merge": {
        "modules": {"cache/merge.py": None, "cache/reconcile.py": None},
        "tests": ["tests/test_cache_merge.py", "tests/test_reconcile.py", "tests/test_mutants_cache_merge.py"],
    },
    "compare_methods": {
        "modules": {
            # not zero_shot_method / trained_method: each of their tests runs a whole report or trains a
            # head (seconds per mutant); their row matching is pinned by tests/test_joints_report.py
            "compare/methods.py": ["_val_rows", "_calibrate_and_threshold", "external_method"],
            "compare/predictions.py": ["_check_header", "_parse_row", "read_predictions", "write_predictions",
                                       "read_predictions_meta"],
        },
        "tests": ["tests/test_mutants_compare_methods.py",
                  "tests/test_joints_report.py::test_predictions_file_in_shuffled_order_is_matched_by_image_id"],
    },
    "classify_scorer": {
        "modules": {"classify/scorer.py": ["origin", "finite_or_none", "_calibration_info", "model_info",
                                           "WoundScorer.result", "WoundScorer.results_for_embeddings",
                                           "WoundScorer.score_batch", "WoundScorer._one_by_one", "_error_text"]},
        # the stand-in model and encoder of test_mutants_scorer.py only: test_classify_predict.py's module
        # fixture trains a model and loads a checkpoint (seconds per mutant; 257 of 310 never ran)
        "tests": ["tests/test_mutants_scorer.py"],
    },
    "classify_serve": {
        "modules": {"classify/serve.py": ["read_body", "multipart_file", "decode_or_refuse", "_check_token",
                                          "_image_from_request", "error_body", "model_description"]},
        # in-process tests only: tests/test_serve.py starts server subprocesses (mutmut's stats run
        # failed on them, "runner returned 1", and a subprocess never imports the mutant anyway)
        "tests": ["tests/test_mutants_serve.py"],
    },
}
#: lines never mutated (a regular expression per line): a ``raise ...(`` line, i.e. an error's message
DO_NOT_MUTATE = r"^\s*raise \w+\("
# conftest and fixtures every subset needs
ALWAYS = ["tests/__init__.py", "tests/conftest.py", "tests/fixtures_data.py", "tests/fixtures_model.py"]


def dotted(module: str) -> str:
    return "woundscore." + module.removesuffix(".py").replace("/", ".")


def patterns(group: dict) -> list[str]:
    """mutmut mutant-name globs of the group's selected functions."""
    out = []
    for module, funcs in group["modules"].items():
        if funcs is None:
            out.append(f"{dotted(module)}.x*__mutmut_*")
            continue
        for f in funcs:
            cls, _, meth = f.rpartition(".")
            out.append(f"{dotted(module)}.xǁ{cls}ǁ{meth}__mutmut_*" if cls else f"{dotted(module)}.x_{f}__mutmut_*")
    return out


def mirror(dest: Path, group: dict, tests: list[str], keep: bool) -> None:
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
    only = [f"woundscore/{m}" for m in group["modules"]]
    (dest / "pyproject.toml").write_text(
        "[tool.mutmut]\n"
        'source_paths = ["woundscore"]\n'
        f"only_mutate = {json.dumps(only)}\n"
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-p", "no:randomly"]\n'
        'process_isolation = "forkserver"\n'  # torch/keras are not fork-safe after use
        # a mutant may take 4x its tests' clean time (+2 s) before it counts as a timeout
        "timeout_multiplier = 4.0\n"
        "timeout_constant = 2.0\n"
        "log_to_file = true\n"  # the driver reads it to name a mutant that hangs the run
        # the text of a raised error is not mutated (the condition that raises it is): one mutant per
        # word of every message cost a second each; the tests pin the messages exactly anyway
        f"do_not_mutate_patterns = {json.dumps([DO_NOT_MUTATE])}\n"
        "\n" + pytest_block,
        encoding="utf-8",
    )


def parse_results(dest: Path) -> dict[str, str]:
    """mutmut's verdicts: mutant name -> status (``mutmut results --all true``)."""
    r = subprocess.run([PY, "-m", "mutmut", "results", "--all", "true"], cwd=dest, capture_output=True, text=True)
    out: dict[str, str] = {}
    for line in r.stdout.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


def _unfinished(dest: Path) -> set[str]:
    """Mutants mutmut's debug log shows as started ("Received") and never completed."""
    log = dest / "mutants" / "mutmut-debug.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    started = set(re.findall(r"Received mutant: (\S+)", text))
    done = set(re.findall(r"Completed (\S+): exit=", text))
    return started - done


def _progress(logfile: Path) -> str:
    tail = logfile.read_bytes()[-400:].decode(errors="replace") if logfile.is_file() else ""
    found = re.findall(r"(\d+)/(\d+)", tail)
    return "/".join(found[-1]) if found else ""


def _mutmut(dest: Path, names: list[str], *, max_children: int, deadline: float, stall_s: int) -> str:
    """One ``mutmut run`` over ``names``; returns "finished", "budget" or "stalled"."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "WOUNDSCORE_CPU_BF16": "0"}
    logfile = dest / "mutmut.log"
    with logfile.open("a") as log:
        proc = subprocess.Popen([PY, "-m", "mutmut", "run", "--max-children", str(max_children), *names],
                                cwd=dest, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        last, moved = "", time.monotonic()
        while proc.poll() is None:
            time.sleep(2)
            now, prog = time.monotonic(), _progress(logfile)
            if prog != last:
                last, moved = prog, now
            why = "budget" if now > deadline else "stalled" if prog and now - moved > stall_s else None
            if why:
                os.killpg(proc.pid, signal.SIGKILL)  # mutmut's own process group (start_new_session)
                proc.wait()
                return why
    return "finished" if proc.returncode == 0 else f"exit {proc.returncode}"


def run_group(name: str, group: dict, *, max_children: int, budget_s: int, stall_s: int, keep: bool,
              only: list[str] | None = None) -> dict:
    present = [t for t in group["tests"] if (ROOT / t.split("::")[0]).is_file()]
    missing = [m for m in group["modules"] if not (ROOT / m).is_file()]
    if missing or not present:
        return {"group": name, "skipped": f"not present: {missing or group['tests']}"}
    dest = WORK / name
    mirror(dest, group, present, keep)
    (dest / "mutmut.log").unlink(missing_ok=True)
    pats = patterns(group)
    t0 = time.monotonic()
    deadline = t0 + budget_s
    stalled: set[str] = set()
    names = only or pats  # only: re-judge these mutants (e.g. last run's survivors), keep the rest
    if keep and not only and (dest / "mutants").is_dir():  # resume: only what was never judged
        names = [m for m, s in parse_results(dest).items() if s == "not checked"
                 and any(fnmatch.fnmatchcase(m, p) for p in pats)] or pats
    outcome = ""
    for _ in range(5):  # resume after each stall, without the mutant(s) that hung
        outcome = _mutmut(dest, names, max_children=max_children, deadline=deadline, stall_s=stall_s)
        if outcome != "stalled":
            break
        hung = _unfinished(dest) - stalled
        stalled |= hung
        res = parse_results(dest)
        names = [m for m, s in res.items() if s == "not checked" and m not in stalled
                 and any(fnmatch.fnmatchcase(m, p) for p in pats)]
        print(f"   stalled; hung mutants {sorted(hung)}; resuming {len(names)}", flush=True)
        if not names:
            outcome = "finished"
            break
    res = {m: s for m, s in parse_results(dest).items() if any(fnmatch.fnmatchcase(m, p) for p in pats)}
    for m in stalled:
        if res.get(m) == "not checked":
            res[m] = "stalled"
    counts: dict[str, int] = {}
    for s in res.values():
        counts[s] = counts.get(s, 0) + 1
    caught = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("stalled", 0)
    judged = len(res) - counts.get("not checked", 0)
    return {"group": name, "modules": group["modules"], "tests": present, "seconds": round(time.monotonic() - t0, 1),
            "outcome": outcome, "counts": counts, "total": len(res), "caught": caught,
            "score": round(caught / judged, 3) if judged else None,
            "survived": sorted(m for m, s in res.items() if s in ("survived", "no tests", "suspicious")),
            "timeout_or_stalled": sorted(m for m, s in res.items() if s in ("timeout", "stalled")),
            "workdir": str(dest.relative_to(ROOT))}


_RECHECK_RUNNER = """
import os, sys, json, pytest
tests, names = json.loads(sys.argv[1]), json.loads(sys.argv[2])
out = {}
for m in names:  # one process: the trampoline reads MUTANT_UNDER_TEST at every call
    os.environ["MUTANT_UNDER_TEST"] = m
    rc = pytest.main(["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--rootdir=.", *tests])
    out[m] = "survived" if rc == 0 else "killed" if rc == 1 else f"exit {int(rc)}"
    print("RECHECK", out[m], m, flush=True)
"""


def recheck(name: str, group: dict, survivors: list[str], match: list[str] | None = None) -> dict[str, str]:
    """Each recorded survivor against the CURRENT tests, without a new mutmut run (which would reset
    every verdict when the test list changed): the group's tests are copied into mutmut's work
    folder and pytest runs once per survivor with ``MUTANT_UNDER_TEST`` selecting it (mutmut's own
    switch), all in ONE process (imports paid once). Tests were only added since the run, so a kill
    there stays a kill. ``match``: only survivors matching one of these globs."""
    dest = WORK / name / "mutants"
    shutil.rmtree(dest / "tests")
    shutil.copytree(ROOT / "tests", dest / "tests", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    # the survivors passed every other test of the group already: only the added ones can kill them
    tests = [t for t in group["tests"] if "test_mutants_" in t and (ROOT / t).is_file()]
    names = [m for m in survivors if not match or any(fnmatch.fnmatchcase(m, p) for p in match)]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "WOUNDSCORE_CPU_BF16": "0"}
    r = subprocess.run([PY, "-c", _RECHECK_RUNNER, json.dumps(tests), json.dumps(names)], cwd=dest, env=env,
                       capture_output=True, text=True, timeout=60 * 30)
    out = {}
    for line in r.stdout.splitlines():
        if line.startswith("RECHECK "):
            _, verdict, m = line.split(" ", 2)
            out[m] = verdict
            print(f"   {verdict}: {m}", flush=True)
    for m in names:
        out.setdefault(m, f"not rechecked (runner exit {r.returncode})")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("groups", nargs="*", help="group names (default: all of GROUPS)")
    ap.add_argument("--max-children", type=int, default=2)
    ap.add_argument("--budget-s", type=int, default=300, help="time limit per group, seconds")
    ap.add_argument("--stall-s", type=int, default=90, help="no progress for this long: kill and resume")
    ap.add_argument("--keep", action="store_true", help="reuse mutmut's state of a previous run")
    ap.add_argument("--survivors", action="store_true",
                    help="re-run only the previous run's survivors (implies --keep): after adding tests")
    ap.add_argument("--recheck", action="store_true",
                    help="run the current tests against the recorded survivors only (no mutmut run)")
    ap.add_argument("--match", action="append", default=None,
                    help="with --recheck: only survivors matching this glob (repeatable)")
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args(argv)
    if a.list:
        for g, spec in GROUPS.items():
            print(f"{g}: tests {' '.join(spec['tests'])}")
            for m, f in spec["modules"].items():
                print(f"    {m}: {'every function' if f is None else ', '.join(f)}")
        return 0
    chosen = a.groups or list(GROUPS)
    unknown = [g for g in chosen if g not in GROUPS]
    if unknown:
        ap.error(f"unknown group(s) {unknown}; known: {list(GROUPS)}")
    WORK.mkdir(parents=True, exist_ok=True)
    summary_path = WORK / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for g in chosen:
        print(f"== {g}", flush=True)
        if a.recheck:  # its own file: a mutation run going on at the same time rewrites summary.json
            path = WORK / "recheck.json"
            done = json.loads(path.read_text()) if path.is_file() else {}
            # merged per mutant: a partial recheck (--match) keeps the earlier verdicts of the others
            done[g] = {**done.get(g, {}), **recheck(g, GROUPS[g], summary.get(g, {}).get("survived", []), a.match)}
            path.write_text(json.dumps(done, indent=2) + "\n")
            continue
        only = summary.get(g, {}).get("survived") if a.survivors else None
        if a.survivors and not only:
            print("   no survivors recorded; skipped", flush=True)
            continue
        r = run_group(g, GROUPS[g], max_children=a.max_children, budget_s=a.budget_s, stall_s=a.stall_s,
                      keep=a.keep or a.survivors, only=only)
        summary[g] = r
        summary_path.write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: r.get(k) for k in ("seconds", "outcome", "counts", "score", "skipped") if k in r}),
              flush=True)
        for name in r.get("survived", []):
            print(f"   survived: {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
