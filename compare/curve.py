"""Learning curves: how test AUC grows with the number of labelled training images.

The probe and the MLP are trained on nested, stratified subsets of the train split (e.g. 10, 25,
50, 100 %), ``repeats`` times per size with a different subset order and seed each time, and always
scored on the FULL test split; early stopping and the probe's C use the full val split, as in
training. Nested: within one repeat each subset is a prefix of the next (the 25 % set contains the
10 % set). Stratified on a multi-label key, :func:`stratum_key`: each row's RAREST positive label
(by train prevalence among observed entries; missing counts as not positive), or "no positive";
every prefix holds about its share of each stratum, so the rare labels' positives are spread
evenly over the sizes instead of by chance.

Spread over repeats (mean, sd, min-max) is training randomness (subset and seed); the 95% intervals
(bootstrap over test images, woundscore.compare.metrics) are test-sampling randomness of the mean
over repeats. Both are shown, never mixed. Output: :mod:`woundscore.compare.curve_output`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, MISSING
from woundscore.cache.types import EmbeddingSet
from woundscore.classify.metrics import macro_auc, roc_auc
from woundscore.compare.metrics import CI_LEVEL, bootstrap_counts, stratified_bootstrap_counts, weighted_auc

DEFAULT_FRACTIONS = (0.1, 0.25, 0.5, 1.0)
METHODS = ("probe", "mlp")
#: Training positives AND negatives a label needs at a size for its per-label AUC to be shown.
MIN_TRAIN_CLASS = 5
#: "Flattened": the upper end of the 95% CI of the last step's macro AUC gain is below this.
FLAT_GAIN = 0.02
#: The curve's MLP: the default head except max_epochs 300 -> 100 and patience 25 -> 10 (the
#: budget; bench/RESULTS.md), and its repeats trained together (classify.ensemble.fit_members).
CURVE_MLP = {"max_epochs": 100, "patience": 10}


class CurveError(WoundscoreError, ValueError):
    """The learning curve cannot run as asked (no rows in a split, bad fractions, unknown method...)."""


@dataclass
class CurveResult:
    """What :func:`learning_curve` found; ``to_json()`` is curve.json.

    sizes: training images per size; points[method][i]: the size's macro and per-label summary;
    full_ci[method]: 95% intervals at the largest size; steps[method]: the last step's gain;
    finetune: the fine-tune's point (or None); reading: the plain-language paragraph.
    """

    sizes: list[int]
    fractions: list[float]
    repeats: int
    methods: list[str]
    label_names: list[str]
    n_test: int
    n_val: int
    points: dict[str, list[dict]]
    full_ci: dict[str, dict]
    steps: dict[str, dict]
    finetune: dict | None
    reading: str
    settings: dict[str, Any]
    timing: dict[str, float] = field(default_factory=dict)
    notice: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def stratum_key(Y: np.ndarray) -> np.ndarray:
    """(n, 6) labels 1 / 0 / -1 -> (n,) int: index of the row's rarest positive label, 6 if none."""
    Y = np.asarray(Y)
    obs = (Y != MISSING).sum(0)
    prevalence = np.where(obs > 0, (Y == 1).sum(0) / np.maximum(obs, 1), np.inf)
    rarity = np.where(Y == 1, prevalence[None, :], np.inf)
    return np.where(np.isfinite(rarity.min(1)), rarity.argmin(1), Y.shape[1])


def nested_orders(Y: np.ndarray, repeats: int, seed: int) -> np.ndarray:
    """(repeats, n) row orders: any prefix of a row holds ~its share of every stratum.

    Within a stratum of m rows the i-th (shuffled) row gets the key (i + u) / m, u ~ U(0, 1); the
    order is by key, so the first k rows take ~k m / n of each stratum.
    """
    key = stratum_key(Y)
    out = np.empty((repeats, len(key)), np.int64)
    for r in range(repeats):
        rng = np.random.default_rng([seed, r])
        pos = np.empty(len(key))
        for s in np.unique(key):
            rows = rng.permutation(np.flatnonzero(key == s))
            pos[rows] = (np.arange(len(rows)) + rng.random(len(rows))) / len(rows)
        out[r] = np.argsort(pos, kind="stable")
    return out


def subset_sizes(n_train: int, fractions: Sequence[float]) -> list[int]:
    """Training images per fraction (rounded, at least 2), increasing, duplicates dropped."""
    fr = [float(f) for f in fractions]
    if not fr or any(not (0 < f <= 1) for f in fr) or sorted(fr) != fr:
        raise CurveError(f"fractions must be increasing values in (0, 1], got {list(fractions)}")
    return list(dict.fromkeys(max(2, round(f * n_train)) for f in fr))


def _spread(values: Sequence[float | None]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None], float)
    if not v.size:
        return {"mean": None, "sd": None, "min": None, "max": None, "values": list(values)}
    return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else 0.0, "min": float(v.min()),
            "max": float(v.max()), "values": [None if x is None else float(x) for x in values]}


def _point(Y_test: np.ndarray, P: np.ndarray, Y_subsets: list[np.ndarray], n: int) -> dict[str, Any]:
    """One (method, size): P (R, n_test, 6) test probabilities; Y_subsets: the R training label sets."""
    point: dict[str, Any] = {"n": n, "macro": _spread([macro_auc(Y_test, p) for p in P]), "per_label": {}}
    for j, lab in enumerate(LABEL_NAMES):
        pos = [int((y[:, j] == 1).sum()) for y in Y_subsets]
        neg = [int((y[:, j] == 0).sum()) for y in Y_subsets]
        m = Y_test[:, j] != MISSING
        entry: dict[str, Any] = {"train_positives": min(pos), "train_negatives": min(neg)}
        if min(pos) < MIN_TRAIN_CLASS or min(neg) < MIN_TRAIN_CLASS:
            few = f"{min(pos)} positives" if min(pos) < MIN_TRAIN_CLASS else f"{min(neg)} negatives"
            entry.update(_spread([]), reason=f"not estimable: {few} in the training subset (< {MIN_TRAIN_CLASS})")
        else:
            entry.update(_spread([roc_auc(Y_test[m, j], p[m, j]) for p in P]))
            if entry["mean"] is None:
                entry["reason"] = "not estimable: one class only in the test split"
        point["per_label"][lab] = entry
    return point


def _fit_probe(X: list[np.ndarray], Y: list[np.ndarray], val: EmbeddingSet, X_test: np.ndarray, seed: int) -> np.ndarray:
    from woundscore.classify.models import LogisticProbe

    return np.stack([LogisticProbe(seed=seed).fit(x, y, val.X, val.Y).predict_proba(X_test) for x, y in zip(X, Y)])


def _fit_mlp(X: list[np.ndarray], Y: list[np.ndarray], val: EmbeddingSet, X_test: np.ndarray, seed: int,
             params: Mapping[str, Any]) -> np.ndarray:
    """All repeats of one size in one Keras fit (one member each; classify.ensemble): (R, n_test, 6)."""
    from scipy.special import expit

    from woundscore.classify.ensemble import fit_members

    fit = fit_members(X, Y, val.X, val.Y, seed=seed, **params)
    return np.stack([expit(m.predict(X_test, batch_size=1024, verbose=0).astype(np.float64)) for m in fit.members])


def _macro_boot(Y: np.ndarray, P: np.ndarray, W: np.ndarray) -> np.ndarray:
    """(B,) mean over repeats of the macro AUC of each resample W (B, n); P (R, n, 6). NaN where a
    test-estimable label lost a class (the resample is dropped, as in the report)."""
    labels = [j for j in range(Y.shape[1]) if roc_auc(Y[Y[:, j] != MISSING, j], np.zeros((Y[:, j] != MISSING).sum()))
              is not None]
    out = np.zeros((len(P), W.shape[0]))
    for j in labels:
        m = Y[:, j] != MISSING
        out += np.stack([weighted_auc(Y[m, j], p[m, j], W[:, m]) for p in P]) / len(labels)
    return out.mean(0)


def _interval(point: float | None, boot: np.ndarray, n: int) -> dict[str, Any]:
    v = boot[np.isfinite(boot)]
    a = (1 - CI_LEVEL) / 2
    lo, hi = (float(q) for q in np.quantile(v, [a, 1 - a])) if v.size and point is not None else (None, None)
    return {"value": point, "low": lo, "high": hi, "n": int(n), "n_resamples": int(v.size), "ci": "bootstrap"}


def _full_ci(Y: np.ndarray, P: np.ndarray, W: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    """95% intervals of the repeat-mean macro and per-label AUC at one size; P (R, n, 6)."""
    per: dict[str, Any] = {}
    for j, lab in enumerate(LABEL_NAMES):
        m = Y[:, j] != MISSING
        y = Y[m, j]
        vals = [roc_auc(y, p[m, j]) for p in P]
        if None in vals:
            per[lab] = {"value": None, "reason": "not estimable: one class only in the test split", "n": int(m.sum())}
            continue
        Wl = stratified_bootstrap_counts(y, n_boot, np.random.default_rng([seed, 7, j]))
        boot = np.mean([weighted_auc(y, p[m, j], Wl) for p in P], axis=0)
        per[lab] = _interval(float(np.mean(vals)), boot, int(m.sum()))
    macro = [macro_auc(Y, p) for p in P]
    point = None if None in macro else float(np.mean(macro))
    return {"macro": _interval(point, _macro_boot(Y, P, W), len(Y)), "per_label": per}


def _step(Y: np.ndarray, P_prev: np.ndarray, P_last: np.ndarray, W: np.ndarray, sizes: tuple[int, int]) -> dict:
    """Gain of the repeat-mean macro AUC from the second-largest to the largest size, with its CI
    (paired: the same resampled test images) and the range of the per-repeat paired gains."""
    last, prev = [macro_auc(Y, p) for p in P_last], [macro_auc(Y, p) for p in P_prev]
    if None in last or None in prev:
        return {"from": sizes[0], "to": sizes[1], "value": None, "verdict": "not estimable"}
    gains = np.asarray(last) - np.asarray(prev)
    est = _interval(float(gains.mean()), _macro_boot(Y, P_last, W) - _macro_boot(Y, P_prev, W), len(Y))
    if est["high"] is not None and est["high"] < FLAT_GAIN:
        verdict = "flattened"
    elif est["low"] is not None and est["low"] > 0:
        verdict = "rising"
    else:
        verdict = "unclear"
    return {"from": sizes[0], "to": sizes[1], **est, "repeat_gains": gains.tolist(), "verdict": verdict}


def _finetune_point(path: str, test: EmbeddingSet, W: np.ndarray, n_boot: int, seed: int, n: int) -> dict:
    from woundscore.compare.predictions import read_predictions

    ids, P = read_predictions(path)
    where = {str(i): k for k, i in enumerate(ids)}
    missing = [str(i) for i in test.ids if str(i) not in where]
    if missing:
        raise CurveError(f"{path}: no prediction for {len(missing)} test image(s), e.g. {missing[:3]}")
    Pt = P[[where[str(i)] for i in test.ids]][None]
    ci = _full_ci(test.Y, Pt, W, n_boot, seed)
    return {"path": str(path), "n_train": n, **ci,
            "note": "one fine-tuned model, assumed trained on this cache's whole train split; no repeats"}


def learning_curve(es: EmbeddingSet, *, fractions: Sequence[float] = DEFAULT_FRACTIONS, repeats: int = 5, seed: int = 0,
                   methods: Sequence[str] = METHODS, n_boot: int = 2000, mlp_params: Mapping[str, Any] | None = None,
                   finetune_predictions: str | None = None,
                   on_progress: Callable[[str], None] | None = None) -> CurveResult:
    """Train ``methods`` on nested stratified train subsets, ``repeats`` times per size; score test.

    Args:
        es: a cache's rows (train, val and test splits needed).
        fractions: of the train split, increasing, in (0, 1]. repeats: subsets/seeds per size.
        methods: "probe" and/or "mlp". n_boot: bootstrap resamples of the intervals.
        mlp_params: KerasMLPClassifier arguments for the curve's MLP (default :data:`CURVE_MLP`).
        finetune_predictions: a predictions.csv (compare.predictions) to place as one point at the
            full train size.
    """
    t0 = time.perf_counter()
    say = on_progress or (lambda _m: None)
    train, val, test = es.subset("train"), es.subset("val"), es.subset("test")
    if not (len(train) and len(val) and len(test)):
        raise CurveError(f"needs train, val and test rows; has {len(train)}, {len(val)}, {len(test)}")
    if int(repeats) < 1 or not methods or any(m not in METHODS for m in methods):
        raise CurveError(f"repeats must be >= 1 and methods among {METHODS}; got {repeats}, {list(methods)}")
    sizes = subset_sizes(len(train), fractions)
    orders = nested_orders(train.Y, int(repeats), seed)
    params = {**CURVE_MLP, **(mlp_params or {})}
    preds: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    points: dict[str, list[dict]] = {m: [] for m in methods}
    timing = {m: 0.0 for m in methods}
    for i, n in enumerate(sizes):
        X = [train.X[o[:n]] for o in orders]
        Y = [train.Y[o[:n]] for o in orders]
        for m in methods:
            t = time.perf_counter()
            P = (_fit_probe(X, Y, val, test.X, seed) if m == "probe"
                 else _fit_mlp(X, Y, val, test.X, seed * 1000 + i, params))
            timing[m] += time.perf_counter() - t
            preds[m].append(P)
            points[m].append(_point(test.Y, P, Y, n))
            say(f"{m}: {n} training images x {repeats} repeats: test macro AUC "
                f"{_fmt(points[m][-1]['macro']['mean'])} (mean), {time.perf_counter() - t:.1f} s")
    t = time.perf_counter()
    W = bootstrap_counts(len(test), n_boot, np.random.default_rng([seed, 99]))
    full_ci = {m: _full_ci(test.Y, preds[m][-1], W, n_boot, seed) for m in methods}
    steps = {m: _step(test.Y, preds[m][-2], preds[m][-1], W, (sizes[-2], sizes[-1])) for m in methods if len(sizes) > 1}
    ft = None if finetune_predictions is None else _finetune_point(finetune_predictions, test, W, n_boot, seed, len(train))
    timing.update(bootstrap=time.perf_counter() - t, total=time.perf_counter() - t0)
    settings = {"fractions": [float(f) for f in fractions], "repeats": int(repeats), "seed": int(seed),
                "n_boot": int(n_boot), "mlp": params, "min_train_class": MIN_TRAIN_CLASS, "flat_gain": FLAT_GAIN,
                "stratified_on": "each row's rarest positive label (train prevalence), or none",
                "mlp_training": "each size's repeats in one Keras fit, one member per repeat (classify.ensemble)"}
    res = CurveResult(sizes=sizes, fractions=settings["fractions"], repeats=int(repeats), methods=list(methods),
                      label_names=list(LABEL_NAMES), n_test=len(test), n_val=len(val), points=points,
                      full_ci=full_ci, steps=steps, finetune=ft, reading="", settings=settings,
                      timing={k: round(v, 2) for k, v in timing.items()},
                      notice=(es.provenance or {}).get("notice") or None)
    res.reading = reading(res)
    return res


def _fmt(v: float | None, signed: bool = False) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else (f"{v:+.3f}" if signed else f"{v:.3f}")


NAMES = {"probe": "logistic probe", "mlp": "MLP"}


def reading(res: CurveResult) -> str:
    """The plain-language paragraph: per method, the last step's gain, its CI and the verdict."""
    words = {"flattened": f"has flattened (the interval's upper end is below +{FLAT_GAIN:.2f}: another step like "
                          "this one is unlikely to add that much)",
             "rising": "is still rising (the interval lies above zero: more images would likely help)",
             "unclear": f"cannot be called flat or rising from this test split (the interval includes 0 and "
                        f"reaches +{FLAT_GAIN:.2f} or more)",
             "not estimable": "cannot be judged (macro AUC not estimable)"}
    parts = [f"Rule: a curve has flattened when the 95% interval of its last step's macro AUC gain lies below "
             f"+{FLAT_GAIN:.2f}; it is rising when the interval lies above 0."]
    for m, s in res.steps.items():
        if s.get("value") is None:
            parts.append(f"The {NAMES.get(m, m)}'s curve {words['not estimable']}.")
            continue
        verb = "rose" if s["value"] >= 0 else "fell"
        ci = "no interval" if s["low"] is None else f"95% CI {_fmt(s['low'], True)} to {_fmt(s['high'], True)}"
        parts.append(
            f"From {s['from']} to {s['to']} training images the {NAMES.get(m, m)}'s macro AUC (mean of {res.repeats} "
            f"repeats) {verb} by {abs(s['value']):.3f} ({ci}, n={s['n']} test images; per repeat "
            f"{min(s['repeat_gains']):+.3f} to {max(s['repeat_gains']):+.3f}); the curve {words[s['verdict']]}.")
    if res.finetune is not None:
        parts.append(f"The fine-tune (one model, {res.finetune['n_train']} training images) reaches macro AUC "
                     f"{_fmt(res.finetune['macro']['value'])}.")
    return " ".join(parts)


def curve_blocks(result: CurveResult, *, image: str | None = None) -> list:
    """The report section (compare.document blocks; the image block names a drawn PNG); see
    compare.curve_output.curve_blocks."""
    from woundscore.compare.curve_output import curve_blocks as blocks

    return blocks(result, image=image)
