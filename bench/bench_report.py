"""Benchmark `wound-compare run` (probe + MLP + bootstrap) on a SurgWound-sized cache.

    .venv/bin/python bench/bench_report.py                 # 686 x 1152, 2,000 resamples, target < 60 s
    .venv/bin/python bench/bench_report.py --repeat 3      # median of 3 runs
    .venv/bin/python bench/bench_report.py --rows 200 --bootstrap 500   # quick
    .venv/bin/python bench/bench_report.py --auc           # vectorised bootstrap AUC vs a roc_auc_score loop

Builds a synthetic cache with the SurgWound split sizes (480 train / 69 val / 137 test at 686 rows,
scaled otherwise; planted signal so that early stopping behaves as on real data), then times the
console command end to end in a fresh subprocess: Python start, imports (Keras, scikit-learn,
matplotlib), cache read, probe and MLP training, 2,000-resample bootstrap with paired
differences, three figures, report.md / report.html / metrics.json. Prints the stage breakdown
that the report itself records, the child's CPU time, the load average before and after (other
work on the machine slows the wall clock; compare CPU time then), and the ratio to the 60 s target.

The last line is machine-readable: ``BENCH-SUMMARY {...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from woundscore.cache import CacheWriter  # noqa: E402

TARGET_S = 60.0


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def build_cache(path: Path, rows: int, dim: int, seed: int = 0) -> None:
    """A cache with the SurgWound split proportions, realistic label rates and a planted signal."""
    rng = np.random.default_rng(seed)
    n_train = round(rows * 480 / 686)
    n_val = round(rows * 69 / 686)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (rows - n_train - n_val))
    z = rng.normal(size=(rows, 6))
    rates = np.array([0.25, 0.30, 0.30, 0.25, 0.13, 0.25])  # roughly SurgWound's positive rates
    latent = z + 0.8 * rng.normal(size=(rows, 6))
    Y = (latent > np.array([np.quantile(latent[:, j], 1 - rates[j]) for j in range(6)])).astype(np.int8)
    Y[rng.random((rows, 6)) < 0.04] = -1
    X = (z @ rng.normal(size=(6, dim)) * 0.2 + rng.normal(size=(rows, dim))).astype(np.float32)
    urgency = np.where(Y[:, 4] == 1, np.where(rng.random(rows) < 0.2, "Red", "Yellow"), "Green")
    location = rng.choice(["Abdomen", "Ankle", "Facial region", "Other", ""], rows)
    prov = {
        "encoder_id": "bench/synthetic", "encoder_revision": "", "embedding_dim": dim,
        "preprocessing": {"size": [448, 448]}, "compute_dtype": "float32", "device": "cpu",
        "notice": "benchmark: synthetic vectors; means nothing clinically",
    }
    with CacheWriter(path, prov, overwrite=True) as w:
        w.append([f"{i}.jpg" for i in range(rows)], [f"{i:064x}" for i in range(rows)], list(split), Y,
                 {"urgency_level": list(urgency), "location": list(location)}, X)


def run_once(cache: Path, out: Path, n_boot: int) -> dict:
    cmd = [sys.executable, "-m", "woundscore.compare", "run", str(cache), "--out", str(out), "--no-zero-shot",
           "--bootstrap", str(n_boot), "--quiet"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"wound-compare run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    m = json.loads((out / "metrics.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    costs = m["methods"]
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "in_process_s": m["timing"]["total_seconds"],
        "probe_import_s": costs["probe"]["cost"].get("import_seconds"),
        "probe_train_s": costs["probe"]["cost"]["train_seconds"],
        "mlp_import_s": costs["mlp"]["cost"].get("import_seconds"),
        "mlp_train_s": costs["mlp"]["cost"]["train_seconds"],
        "metrics_s": m["timing"]["metrics_seconds"],
        "figures_s": m["timing"]["figures_seconds"],
        "max_rss_mb": after.ru_maxrss / 1024,
    }


def bench_auc(n_boot: int, n: int = 137, labels: int = 6, methods: int = 4) -> None:
    """Why compare.metrics keeps its vectorised AUC: the report's full bootstrap AUC work (per-label
    stratified and macro image resamples) timed with it and with sklearn's roc_auc_score(sample_weight)."""
    from sklearn.metrics import roc_auc_score

    from woundscore.compare import metrics as M

    rng = np.random.default_rng(0)
    Y = (rng.random((n, labels)) < 0.25).astype(np.int8)
    Y[rng.random((n, labels)) < 0.04] = -1
    Ps = [1 / (1 + np.exp(-(rng.normal(size=(n, labels)) + 1.5 * (Y == 1)))) for _ in range(methods)]

    def sklearn_loop(y, p, W):
        return [roc_auc_score(y, p, sample_weight=w) for w in W if w[y == 1].sum() and w[y == 0].sum()]

    def full_bootstrap(auc) -> float:
        t0 = time.perf_counter()
        Wimg = M.bootstrap_counts(n, n_boot, np.random.default_rng(1))
        for j in range(labels):
            m = Y[:, j] != -1
            W = M.stratified_bootstrap_counts(Y[m, j], n_boot, np.random.default_rng(j))
            for P in Ps:
                auc(Y[m, j], P[m, j], W)
                auc(Y[m, j], P[m, j], Wimg[:, m])
        return time.perf_counter() - t0

    vec, sk = full_bootstrap(M.weighted_auc), full_bootstrap(sklearn_loop)
    print(f"bootstrap AUC, {n} rows x {labels} labels x {methods} methods x {n_boot} resamples "
          f"(per label + macro): vectorised {vec:.2f} s, sklearn loop {sk:.1f} s ({sk / vec:.0f}x); "
          f"load average {load_average()}")
    summary = {"bench": "report-auc", "targets": [{
        "name": f"bootstrap AUC {n}x{labels}x{methods}x{n_boot}", "target": "sklearn unless much slower",
        "measured": f"vectorised {vec:.2f} s, sklearn loop {sk:.1f} s", "met": True,
        "why": "kept the vectorised AUC" if sk > 10 * vec else "sklearn would do"}]}
    print("BENCH-SUMMARY " + json.dumps(summary), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=686)
    ap.add_argument("--dim", type=int, default=1152)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--keep", type=Path, help="keep the cache and the report here")
    ap.add_argument("--auc", action="store_true", help="only time the bootstrap AUC: vectorised vs sklearn loop")
    args = ap.parse_args()
    if args.auc:
        return bench_auc(args.bootstrap)

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench_report_"))
    work.mkdir(parents=True, exist_ok=True)
    cache = work / "bench.h5"
    build_cache(cache, args.rows, args.dim)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"## wound-compare run: {args.rows} x {args.dim} cache, probe + MLP, {args.bootstrap} resamples\n")
    print(f"cores: {cores} | python {sys.version.split()[0]} | load average before: {load_average()}")
    runs = []
    for k in range(args.repeat):
        runs.append(run_once(cache, work / f"report{k}", args.bootstrap))
    print(f"load average after: {load_average()}\n")
    keys = list(runs[0])
    print("| " + " | ".join(["run"] + keys) + " |")
    print("|" + "|".join("---" for _ in range(len(keys) + 1)) + "|")
    for k, r in enumerate(runs):
        print("| " + " | ".join([str(k + 1)] + [f"{r[key]:.2f}" if r[key] is not None else "-" for key in keys]) + " |")
    wall = statistics.median(r["wall_s"] for r in runs)
    ratio = wall / TARGET_S
    print(f"\nmedian wall {wall:.1f} s = {ratio:.2f} x the {TARGET_S:.0f} s target "
          f"({'met' if wall < TARGET_S else 'NOT met'}); report in {work / 'report0'}")
    summary = {
        "bench": "report",
        "targets": [{
            "name": f"wound-compare run, {args.rows} rows, probe + MLP + {args.bootstrap} bootstraps",
            "target": f"< {TARGET_S:.0f} s wall on 2 cores",
            "measured": f"{wall:.1f} s (ratio {ratio:.2f}; CPU {statistics.median(r['cpu_s'] for r in runs):.1f} s)",
            "met": wall < TARGET_S,
            "why": f"load average at the end {load_average()}",
        }],
    }
    print("BENCH-SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
