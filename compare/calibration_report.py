"""The report's calibration section: Brier and ECE on test before and after each method's
calibration (fitted on its val scores only, ``classify.calibration``), each with its bootstrap CI
and n, and the equal-count bins of the reliability diagram.

Before and after are scored on the *same* stratified resamples (per label), so the two intervals
are comparable. ECE and the reliability diagram use the same equal-count bins as the model folder
(``classify.calibration.bin_by_rank``: about 15 images a bin, 2 to 10), so 20 images draw two
honest points instead of a zig-zag through ten half-empty bins.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.classify.calibration import bin_by_rank
from woundscore.compare import metrics as M

def equal_count_bins(y: np.ndarray, p: np.ndarray, n_bins: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reliability points over equal-count bins of the observed entries (y != -1) of (n,) y, p.

    Returns (mean probability, fraction positive, images) per bin, each (k,); k = ``n_bins`` or
    ``classify.calibration.n_bins_for`` (n). Rows are ordered by p (ties by position), then cut into k runs whose
    sizes differ by at most one.
    """
    y = np.asarray(y)
    p = np.asarray(p, dtype=np.float64)
    m = y != -1
    y, p = y[m].astype(np.float64), p[m]
    if not len(y):
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    b = bin_by_rank(p, n_bins)
    count = np.bincount(b)
    return np.bincount(b, weights=p) / count, np.bincount(b, weights=y) / count, count.astype(np.int64)


def _pair(yo: np.ndarray, raw: np.ndarray, cal: np.ndarray, W: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, p in (("before", raw), ("after", cal)):
        out[f"brier_{key}"] = M._estimate(M.weighted_brier(yo, p)[0], M.weighted_brier(yo, p, W), len(yo)).to_dict()
        out[f"ece_{key}"] = M._estimate(M.weighted_ece(yo, p)[0], M.weighted_ece(yo, p, W), len(yo)).to_dict()
    return out


def calibration_metrics(
    Y: np.ndarray, raw: Mapping[str, np.ndarray], calibrated: Mapping[str, np.ndarray], *,
    label_names: Sequence[str], n_boot: int, seed: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """label -> method -> {"n", "positives", "brier_before", "brier_after", "ece_before",
    "ece_after"} (Estimate dicts) on (n, L) test labels Y and method -> (n, L) raw / calibrated
    probabilities. Each label draws its own seeded stratified resamples, shared by every method
    and by before and after."""
    Y = np.asarray(Y)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for j, label in enumerate(label_names):
        m = Y[:, j] != -1
        yo = Y[m, j].astype(np.int64)
        W = M.stratified_bootstrap_counts(yo, n_boot, np.random.default_rng([seed, 20_000 + j]))
        out[label] = {}
        for name in raw:
            head = {"n": int(m.sum()), "positives": int((yo == 1).sum())}
            if not m.any():
                e = M.not_estimable(0, "not estimable: no observed labels in the test split").to_dict()
                out[label][name] = {**head, **{k: e for k in ("brier_before", "brier_after", "ece_before", "ece_after")}}
                continue
            p_raw = np.asarray(raw[name], dtype=np.float64)[m, j]
            p_cal = np.asarray(calibrated[name], dtype=np.float64)[m, j]
            out[label][name] = {**head, **_pair(yo, p_raw, p_cal, W)}
    return out


def calibration_blocks(d: Mapping[str, Any], fmt_est: Any) -> list[tuple]:
    """The calibration section's blocks from the report dict ``d`` (``d["calibration"]``)."""
    cal = d["calibration"]
    rows = [[lab, n, str(r["n"]), str(r["positives"]), fmt_est(r["brier_before"]), fmt_est(r["brier_after"]),
             fmt_est(r["ece_before"]), fmt_est(r["ece_after"])]
            for lab in d["label_names"] for n, r in cal["metrics"][lab].items()]
    methods = [f"{n}: {m['calibration_note'] or 'not calibrated'}." for n, m in d["methods"].items()]
    return [
        ("h2", "Calibration"),
        ("p", "Each method's scores are calibrated per label on its own validation scores only "
              f"({cal['rule']}); the thresholds and every metric above use the calibrated scores. "
              "Below: Brier score (lower is better) and expected calibration error "
              f"({cal['ece_bins']}) on the test split, before and after calibration, "
              "on the same stratified bootstrap resamples."),
        ("list", methods),
        ("table", ["label", "method", "n", "positives", "Brier before (95% CI)", "Brier after (95% CI)",
                   "ECE before (95% CI)", "ECE after (95% CI)"], rows),
        ("image", "reliability.png", "Reliability diagrams per label, before (left) and after (right) "
                                     "calibration; equal-count bins, images per bin in each panel's title"),
    ]
