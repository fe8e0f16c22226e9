"""`wound-classify calibrate`: refit a model's calibration and thresholds on a user's own labelled
photos (or a cache), into a NEW model folder (README, "Recalibrate on your own photos").

The same rules as training (classify.calibration, classify.thresholds) on EVERY row of the set:
there is no separate validation split here, so the "after" figures are measured on the rows the
calibration was fitted on (optimistic; the output says so). A label whose set has fewer than
``MIN_PER_CLASS`` positives or negatives keeps the model's calibration and threshold (a warning
says which and why); under ``SMALL`` of a class the figures are printed with a warning that their
intervals are wide. The old folder is read only; the new one is a copy with calibration.json,
thresholds.json and provenance.json replaced and recalibration.json (the figures) added.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.layout import now
from woundscore.cache.schema import LABEL_NAMES, MISSING
from woundscore.cache.util import canonical, replace_dir
from woundscore.classify.artifacts import (CALIBRATION_FILE, PROVENANCE_FILE, THRESHOLDS_FILE, LoadedModel,
                                           _write_json, check_writable, load_model_dir)
from woundscore.classify.calibration import MIN_PER_CLASS, Calibration, brier, ece
from woundscore.classify.metrics import roc_auc, sens_spec
from woundscore.classify.thresholds import DEFAULT_TARGET_SENSITIVITY, applied_thresholds

RECALIBRATION_FILE = "recalibration.json"
SMALL = 10  # fewer positives or negatives than this: figures come with a "wide intervals" warning
N_BOOT = 1000


class CalibrationSetError(WoundscoreError, ValueError):
    """The calibration set cannot recalibrate the model (no labelled rows, images unreadable ...)."""


@dataclass
class Recalibration:
    """What :func:`recalibrate` did: the new folder, per-label figures, warnings."""

    model_dir: Path
    figures: dict[str, Any]
    warnings: list[str]
    n_rows: int
    fitted_on: str


def _wilson(k: int, n: int, z: float = 1.959964) -> list[float] | None:
    if n == 0:
        return None
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return [float(max(0.0, c - h)), float(min(1.0, c + h))]


def _boot_ci(y: np.ndarray, p: np.ndarray, stat: Any, seed: int = 0) -> list[float] | None:
    """95 % percentile bootstrap interval of ``stat(y, p)`` over rows (fixed seed)."""
    if y.size < 2:
        return None
    idx = np.random.default_rng(seed).integers(0, y.size, size=(N_BOOT, y.size))
    vals = np.array([stat(y[i], p[i]) for i in idx], dtype=np.float64)
    return [float(np.quantile(vals, 0.025)), float(np.quantile(vals, 0.975))]


def _side(y: np.ndarray, p: np.ndarray, t: float) -> dict[str, Any]:
    """Brier, ECE (bootstrap CI), sensitivity and specificity at ``t`` (Wilson CI) of one label."""
    sens, spec = sens_spec(y, p, t)
    flag = p >= t
    tp, fn = int((flag & (y == 1)).sum()), int((~flag & (y == 1)).sum())
    tn, fp = int((~flag & (y == 0)).sum()), int((flag & (y == 0)).sum())
    return {"threshold": t, "brier": brier(y, p), "brier_ci": _boot_ci(y, p, brier),
            "ece": ece(y, p), "ece_ci": _boot_ci(y, p, ece),
            "sensitivity": sens, "sensitivity_ci": _wilson(tp, tp + fn), "sensitivity_n": tp + fn,
            "specificity": spec, "specificity_ci": _wilson(tn, tn + fp), "specificity_n": tn + fp}


def load_calibration_set(lm: LoadedModel, source: str, *, encoder: str | None = None, device: str = "auto",
                         dtype: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """(Y (n, 6), X (n, d), description) of a cache (every split) or a labelled SOURCE embedded
    with the model's encoder (as `predict` would load it)."""
    p = Path(source)
    if p.is_file() and p.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n":
        from woundscore.cache import read_cache

        es = read_cache(p)
        lm.check_compatible(es.provenance, offered=f"cache {source}")
        return es.Y, es.X, f"cache {source} ({len(es)} rows, all splits)"
    from woundscore.classify.scorer import WoundScorer
    from woundscore.embed.sources import open_source

    samples = open_source(p).samples()
    enc = WoundScorer(lm, encoder, device=device, dtype=dtype).encoder  # loaded and checked
    X = enc.embed_images([s.read_bytes() for s in samples])
    Y = np.stack([s.labels for s in samples]).astype(np.int8) if samples else np.zeros((0, 6), np.int8)
    return Y, X, f"{source} ({len(samples)} images, embedded with {enc.model_id})"


def _warnings(Y: np.ndarray) -> tuple[list[str], set[str]]:
    """Warnings per label and the labels too small to refit."""
    out, kept = [], set()
    for j, name in enumerate(LABEL_NAMES):
        y = Y[:, j][Y[:, j] != MISSING]
        pos, neg = int((y == 1).sum()), int((y == 0).sum())
        if min(pos, neg) < MIN_PER_CLASS:
            kept.add(name)
            out.append(f"{name}: {pos} positive and {neg} negative images; at least {MIN_PER_CLASS} of each are "
                       "needed to fit a calibration and threshold: kept the model's")
        elif min(pos, neg) < SMALL:
            out.append(f"{name}: only {pos} positive and {neg} negative images: refitted, but sensitivity/"
                       "specificity rest on so few images that their intervals are wide (see the CIs)")
    return out, kept


def recalibrate(model_dir: str | os.PathLike, source: str, out_dir: str | os.PathLike, *, encoder: str | None = None,
                device: str = "auto", dtype: str = "auto", overwrite: bool = False) -> Recalibration:
    """Refit calibration + thresholds of ``model_dir`` on ``source`` (a cache or a labelled
    SOURCE) and write the result to ``out_dir`` (``model_dir`` is never written)."""
    from woundscore.classify.train import post_hoc

    src = Path(model_dir).resolve()
    out = check_writable(out_dir, overwrite=overwrite)
    if out.resolve() == src:
        raise CalibrationSetError(f"{out}: --out must be a new folder, not MODEL_DIR itself")
    lm = load_model_dir(src)
    Y, X, described = load_calibration_set(lm, source, encoder=encoder, device=device, dtype=dtype)
    if not (np.asarray(Y) != MISSING).any():
        raise CalibrationSetError(f"{source}: no labelled images (every label is missing); calibration needs labels")
    P_raw = lm.predict_raw(X)
    pw = lm.provenance.get("pos_weight") or {}
    pos_weight = np.array([pw.get(n, np.nan) for n in LABEL_NAMES], dtype=np.float64) if pw else None
    target = float(lm.thresholds.get("target_sensitivity", DEFAULT_TARGET_SENSITIVITY))
    ph = post_hoc(Y, P_raw, None, None, pos_weight=pos_weight, target_sensitivity=target,
                  fitted_on=f"recalibration on {described}")
    warns, kept = _warnings(Y)
    cal = Calibration({n: lm.calibration.labels[n] if n in kept else ph.calibration.labels[n] for n in LABEL_NAMES},
                      fitted_on=ph.calibration.fitted_on)
    thresholds = dict(ph.thresholds, labels={n: lm.thresholds["labels"][n] if n in kept else ph.thresholds["labels"][n]
                                             for n in LABEL_NAMES})
    before_P, after_P = lm.calibration.apply(P_raw), cal.apply(P_raw)
    t_before, t_after = applied_thresholds(lm.thresholds), applied_thresholds(thresholds)
    figures: dict[str, Any] = {}
    for j, name in enumerate(LABEL_NAMES):
        m = Y[:, j] != MISSING
        y = Y[m, j].astype(np.int64)
        figures[name] = {"n": int(m.sum()), "positives": int((y == 1).sum()), "auc": roc_auc(y, P_raw[m, j]),
                         "method_before": lm.calibration.labels[name].method, "method_after": cal.labels[name].method,
                         "refitted": name not in kept, "before": _side(y, before_P[m, j], float(t_before[j])),
                         "after": _side(y, after_P[m, j], float(t_after[j]))}
    _write_folder(src, out, lm, cal, thresholds, figures, warns, described, overwrite=overwrite)
    return Recalibration(out, figures, warns, int(len(Y)), described)


def _write_folder(src: Path, out: Path, lm: LoadedModel, cal: Calibration, thresholds: dict[str, Any],
                  figures: dict[str, Any], warns: list[str], described: str, *, overwrite: bool) -> None:
    """Copy ``src`` beside ``out``, replace the refitted files, rename into place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        prov = dict(lm.provenance)
        prov["recalibration"] = {"from_model": str(src), "from_created": lm.provenance.get("created"),
                                 "calibration_set": described, "created": now(), "methods": cal.methods,
                                 "kept_from_model": [n for n in LABEL_NAMES if not figures[n]["refitted"]],
                                 "fitted_and_measured_on_the_same_rows": True}
        _write_json(tmp / CALIBRATION_FILE, cal.to_json())
        _write_json(tmp / THRESHOLDS_FILE, thresholds)
        _write_json(tmp / PROVENANCE_FILE, canonical(prov))
        _write_json(tmp / RECALIBRATION_FILE, {"calibration_set": described, "warnings": warns, "labels": figures})
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _ci(v: float | None, ci: list[float] | None, n: int | None = None) -> str:
    if v is None:
        return "n/a"
    s = f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
    return s + (f" n={n}" if n is not None else "")


def format_recalibration(r: Recalibration) -> str:
    """The text `calibrate` prints: per label before -> after, each with its 95 % CI and n."""
    lines = [f"calibration set: {r.fitted_on}",
             "NOTE: every row was used to fit; the 'after' figures are measured on the same rows (optimistic).",
             "AUC is unchanged by construction (a monotone map per label)."]
    for name, f in r.figures.items():
        b, a = f["before"], f["after"]
        auc = "n/a" if f["auc"] is None else f"{f['auc']:.3f}"
        lines.append(f"{name} (n={f['n']}, positives={f['positives']}, AUC {auc}, "
                     f"{f['method_before']} -> {f['method_after']}{'' if f['refitted'] else ', kept'})")
        for key in ("brier", "ece"):
            lines.append(f"  {key:<12} {_ci(b[key], b[key + '_ci'], f['n'])}  ->  {_ci(a[key], a[key + '_ci'], f['n'])}")
        lines.append(f"  {'threshold':<12} {b['threshold']:.3f}  ->  {a['threshold']:.3f}")
        for key in ("sensitivity", "specificity"):
            lines.append(f"  {key:<12} {_ci(b[key], b[key + '_ci'], b[key + '_n'])}  ->  "
                         f"{_ci(a[key], a[key + '_ci'], a[key + '_n'])}")
    lines += [f"WARNING: {w}" for w in r.warnings]
    lines.append(f"wrote {r.model_dir}")
    return "\n".join(lines)
