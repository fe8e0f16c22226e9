"""Learning-curve budget and the MLP's seed spread, on a 686 x 1152 SurgWound-sized cache.

    .venv/bin/python bench/bench_curve.py                  # both parts
    .venv/bin/python bench/bench_curve.py --part curve     # `wound-compare curve`, wall + CPU vs 180 s
    .venv/bin/python bench/bench_curve.py --part seeds     # seed spread: single MLP vs seed ensemble

The cache is bench_report.py's (480 train / 69 val / 137 test, SurgWound-like label rates, a
planted signal). ``curve`` times the console command end to end in a fresh process (imports
included) and reports the child's CPU time and the load average (the machine is shared: compare
CPU time when the wall clock is noisy). ``seeds`` looks at the VALIDATION split only, never at
test, and applies the rule below, which was written (and committed) before any number was seen.

The last line is machine-readable: ``BENCH-SUMMARY {...}``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402
from bench_report import build_cache  # noqa: E402

CURVE_TARGET_S = 180.0
K = 5  # ensemble members
SEEDS = 5  # single-seed fits, and ensemble reseeds
MAX_ENSEMBLE_S = 60.0
#: Stated before looking (issue 15, section 2); applied to validation numbers only.
DECISION_RULE = (
    f"Adopt a {K}-member seed ensemble as the default MLP head if, over {SEEDS} reseeds on the 686-row "
    f"cache's VALIDATION split: (a) the standard deviation of the ensemble's val macro AUC across "
    f"reseeds is < half that of the single MLP across {SEEDS} seeds, (b) one ensemble fit takes "
    f"<= {K} x the median single fit AND <= {MAX_ENSEMBLE_S:.0f} s wall, and (c) the ensemble's mean "
    f"val macro AUC is not lower than the single MLP's mean by more than 0.005. Otherwise keep the "
    f"single MLP and say why."
)


def _child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def part_curve(cache: Path, tmp: Path, repeats: int) -> dict:
    cmd = [sys.executable, "-m", "woundscore.compare", "curve", str(cache), "--out", str(tmp / "curve"),
           "--repeats", str(repeats), "--quiet"]
    load0, cpu0, t0 = C.load_average(), _child_cpu(), time.perf_counter()
    subprocess.run(cmd, check=True, cwd=str(C.REPO), stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - t0, _child_cpu() - cpu0
    data = json.loads((tmp / "curve" / "curve.json").read_text())
    print(C.table(["what", "value"], [
        ["wall s (fresh process, imports included)", f"{wall:.1f}"], ["child CPU s", f"{cpu:.1f}"],
        ["load average before / after", f"{load0} / {C.load_average()}"],
        ["stage seconds (from curve.json)", json.dumps(data["timing"])],
        ["MLP settings of the curve", json.dumps(data["settings"]["mlp"])],
    ]))
    print("\n" + data["reading"])
    return {"wall_s": wall, "cpu_s": cpu, "timing": data["timing"]}


def part_seeds(cache: Path) -> dict:
    import numpy as np

    from woundscore.cache import read_cache
    from woundscore.classify.models import KerasMLPClassifier

    print("decision rule (stated before looking):", DECISION_RULE)
    es = read_cache(cache)
    tr, va = es.subset("train"), es.subset("val")
    single, single_s, ens, ens_s = [], [], [], []
    for s in range(SEEDS):
        m = KerasMLPClassifier(seed=s).fit(tr.X, tr.Y, va.X, va.Y)
        single.append(m.best_score_)
        single_s.append(m.fit_seconds_)
    for s in range(SEEDS):
        e = KerasMLPClassifier(seed=s, n_members=K).fit(tr.X, tr.Y, va.X, va.Y)
        ens.append(e.best_score_)
        ens_s.append(e.fit_seconds_)
        members = e.member_best_scores_
    sd1, sdk = float(np.std(single, ddof=1)), float(np.std(ens, ddof=1))
    med1, medk = statistics.median(single_s), statistics.median(ens_s)
    a, b = sdk < sd1 / 2, medk <= K * med1 and medk <= MAX_ENSEMBLE_S
    c = float(np.mean(ens)) >= float(np.mean(single)) - 0.005
    print(C.table(["head", "val macro AUC per seed", "mean", "sd", "range", "fit s (median)"], [
        ["single MLP", " ".join(f"{v:.4f}" for v in single), f"{np.mean(single):.4f}", f"{sd1:.4f}",
         f"{max(single) - min(single):.4f}", f"{med1:.1f}"],
        [f"{K}-member ensemble", " ".join(f"{v:.4f}" for v in ens), f"{np.mean(ens):.4f}", f"{sdk:.4f}",
         f"{max(ens) - min(ens):.4f}", f"{medk:.1f}"],
    ]))
    print(f"last ensemble's members (val macro AUC each): {' '.join(f'{v:.4f}' for v in members)}")
    print(f"(a) sd ratio {sdk / sd1 if sd1 else float('nan'):.2f} < 0.5: {a}; (b) cost {medk / med1:.2f}x single, "
          f"{medk:.1f} s: {b}; (c) mean {np.mean(ens) - np.mean(single):+.4f}: {c} -> ADOPT: {a and b and c}")
    return {"single": single, "single_s": single_s, "ensemble": ens, "ensemble_s": ens_s, "sd_single": sd1,
            "sd_ensemble": sdk, "adopt": bool(a and b and c), "rule": DECISION_RULE}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=["curve", "seeds", "both"], default="both")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    C.print_header("learning curve budget / MLP seed spread, 686 x 1152 cache")
    tmp = Path(tempfile.mkdtemp(prefix="bench_curve_"))
    cache = tmp / "c686.h5"
    build_cache(cache, 686, 1152)
    targets, results = [], {}
    if args.part in ("curve", "both"):
        r = results["curve"] = part_curve(cache, tmp, args.repeats)
        targets.append(C.target("wound-compare curve, 686 rows, 4 sizes x 5 repeats, probe + MLP",
                                f"<= {CURVE_TARGET_S:.0f} s wall on 2 cores", f"{r['wall_s']:.1f} s (CPU {r['cpu_s']:.1f} s)",
                                r["wall_s"] <= CURVE_TARGET_S, f"load {C.load_average()}"))
    if args.part in ("seeds", "both"):
        r = results["seeds"] = part_seeds(cache)
        targets.append(C.target("seed ensemble adopted (rule stated before looking)", "rule in bench_curve.py",
                                f"sd {r['sd_single']:.4f} -> {r['sd_ensemble']:.4f}", r["adopt"]))
    C.emit_summary("curve", targets, results=results)


if __name__ == "__main__":
    main()
