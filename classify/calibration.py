"""Per-label probability calibration, fitted on the validation split only (README, "Calibration").

Every candidate is a monotone increasing map of the head's logit ``z = logit(p)``::

    calibrated = sigmoid(a * z + b),  a > 0

so ranking (and ROC AUC) is unchanged, and what is stored per label is two finite numbers.

Candidates, simplest first (``k`` = parameters fitted on the validation rows):

- ``identity`` (k=0): a=1, b=0.
- ``prior_shift`` (k=0): a=1, b=-log(w). BCE with positive-class weight ``w`` makes the head's
  optimum logit log(w) + the true log-odds, so subtracting log(w) undoes the known part of the
  bias. Needs the training ``pos_weight``; nothing is fitted.
- ``temperature`` (k=1): a=1/T, b=-a*log(w) (b=0 without pos_weight): prior shift, then one scale.
- ``platt`` (k=2): a, b free (Platt scaling), a in [1e-3, 100], |b| <= 30.

The rule, stated before looking at any data: per label, over the validation rows with a label
(not -1), pick the candidate with the smallest AIC = 2 * (summed log-loss) + 2 * k; ties go to the
simpler (earlier) candidate. A label whose validation rows have fewer than ``MIN_PER_CLASS``
positives or negatives cannot support a fit: it gets ``prior_shift`` when ``pos_weight`` is known,
else ``identity``, and ``note`` says why. Isotonic regression is not a candidate: on SurgWound's
69 validation rows (about 10 positives for the rare labels) it is a step function with as many
steps as positive runs, which AIC would penalise out of every choice anyway, and its flat steps
tie scores that the head ranked apart (AUC would change).

Nothing here is random: the fits are deterministic L-BFGS-B minimisations from a fixed start.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, MISSING

FORMAT = "woundscore.calibration"
FORMAT_VERSION = 1
METHODS: tuple[str, ...] = ("identity", "prior_shift", "temperature", "platt")
N_PARAMS = {"identity": 0, "prior_shift": 0, "temperature": 1, "platt": 2}
MIN_PER_CLASS = 3  # fewer validation positives (or negatives) than this: no fitted calibration
RULE = ("per label: smallest AIC (2 * validation log-loss sum + 2 * fitted parameters) among identity, "
        f"prior_shift, temperature, platt; fewer than {MIN_PER_CLASS} validation positives or negatives: "
        "prior_shift (identity without pos_weight)")
_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] before the logit (float32 heads saturate)
_A_BOUNDS = (1e-3, 100.0)
_B_BOUND = 30.0


class CalibrationError(WoundscoreError, ValueError):
    """Bad calibration input (shapes) or a calibration.json entry that is not finite / not known."""


def logit(p: np.ndarray) -> np.ndarray:
    """(…) probabilities -> logits, clipped so that 0 and 1 stay finite."""
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _expit(z: np.ndarray) -> np.ndarray:
    from scipy.special import expit

    return expit(z)


def _nll_sum(y: np.ndarray, z: np.ndarray, a: float, b: float) -> float:
    """Summed binary log-loss of sigmoid(a * z + b) against y (n,) in {0, 1}."""
    s = a * z + b
    # log(1 + e^s) - y * s, computed stably
    return float(np.sum(np.logaddexp(0.0, s) - y * s))


def _fit_ab(y: np.ndarray, z: np.ndarray, *, shift: float, free_b: bool) -> tuple[float, float]:
    """(a, b) minimising the log-loss; temperature when not ``free_b`` (b = -a * shift)."""
    from scipy.optimize import minimize

    if free_b:
        fun = lambda v: _nll_sum(y, z, v[0], v[1])  # noqa: E731
        res = minimize(fun, x0=np.array([1.0, -shift]), method="L-BFGS-B",
                       bounds=[_A_BOUNDS, (-_B_BOUND, _B_BOUND)])
        return float(res.x[0]), float(res.x[1])
    fun1 = lambda v: _nll_sum(y, z - shift, v[0], 0.0)  # noqa: E731
    res = minimize(fun1, x0=np.array([1.0]), method="L-BFGS-B", bounds=[_A_BOUNDS])
    a = float(res.x[0])
    return a, -a * shift


@dataclass
class LabelCalibration:
    """One label's map ``sigmoid(a * logit(p) + b)`` and how it was chosen."""

    method: str
    a: float = 1.0
    b: float = 0.0
    n: int = 0
    positives: int = 0
    aic: dict[str, float] = field(default_factory=dict)  # candidate -> AIC on the validation rows
    note: str = ""

    def apply(self, p: np.ndarray) -> np.ndarray:
        """(n,) raw probabilities -> (n,) calibrated ones (identity returns ``p`` unchanged)."""
        p = np.asarray(p, dtype=np.float64)
        if self.method == "identity" or (self.a == 1.0 and self.b == 0.0):
            return p.copy()
        return _expit(self.a * logit(p) + self.b)


@dataclass
class Calibration:
    """Per-label calibration of a head's (n, 6) probabilities (see the module docstring)."""

    labels: dict[str, LabelCalibration]
    rule: str = RULE
    fitted_on: str = ""  # what the rows were, e.g. "val split of cache.h5 (69 rows)"
    label_names: tuple[str, ...] = LABEL_NAMES

    @property
    def methods(self) -> dict[str, str]:
        """label -> method name."""
        return {n: self.labels[n].method for n in self.label_names}

    @classmethod
    def identity(cls, label_names: Sequence[str] = LABEL_NAMES) -> "Calibration":
        """No calibration (model folders written before calibration existed)."""
        return cls({n: LabelCalibration("identity", note="no calibration.json: scores are the head's own")
                    for n in label_names}, rule="none", fitted_on="", label_names=tuple(label_names))

    @property
    def is_identity(self) -> bool:
        return all(c.method == "identity" for c in self.labels.values())

    def apply(self, P: np.ndarray) -> np.ndarray:
        """(n, 6) raw probabilities -> (n, 6) calibrated probabilities (float64)."""
        P = np.asarray(P, dtype=np.float64)
        if P.ndim != 2 or P.shape[1] != len(self.label_names):
            raise CalibrationError(f"expected (n, {len(self.label_names)}) probabilities, got shape {P.shape}")
        return np.stack([self.labels[n].apply(P[:, j]) for j, n in enumerate(self.label_names)], axis=1) \
            if P.shape[0] else P.copy()

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict (what calibration.json holds)."""
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "rule": self.rule, "fitted_on": self.fitted_on,
                "form": "sigmoid(a * logit(p) + b)",
                "labels": {n: {"method": c.method, "a": c.a, "b": c.b, "n": c.n, "positives": c.positives,
                               "aic": c.aic, "note": c.note} for n, c in self.labels.items()}}

    @classmethod
    def from_json(cls, d: Mapping[str, Any], origin: str = "calibration.json") -> "Calibration":
        """Inverse of :meth:`to_json`; CalibrationError naming ``origin`` and the key when an entry is
        missing, of an unknown method, or not finite (a must be > 0)."""
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise CalibrationError(f"{origin}: not a woundscore calibration file (format {FORMAT!r} expected)")
        labels = d.get("labels")
        if not isinstance(labels, Mapping):
            raise CalibrationError(f"{origin}: key 'labels' is missing or not an object")
        out: dict[str, LabelCalibration] = {}
        for n in LABEL_NAMES:
            e = labels.get(n)
            if not isinstance(e, Mapping):
                raise CalibrationError(f"{origin}: labels.{n} is missing")
            if e.get("method") not in METHODS:
                raise CalibrationError(f"{origin}: labels.{n}.method {e.get('method')!r} is not one of {list(METHODS)}")
            for key in ("a", "b"):
                v = e.get(key)
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                    raise CalibrationError(f"{origin}: labels.{n}.{key} is {v!r}, not a finite number")
            if not e["a"] > 0:
                raise CalibrationError(f"{origin}: labels.{n}.a is {e['a']!r}; must be > 0 (a monotone map)")
            out[n] = LabelCalibration(e["method"], float(e["a"]), float(e["b"]), int(e.get("n", 0)),
                                      int(e.get("positives", 0)), dict(e.get("aic") or {}), str(e.get("note", "")))
        return cls(out, rule=str(d.get("rule", RULE)), fitted_on=str(d.get("fitted_on", "")))


def fit_label(y: np.ndarray, p: np.ndarray, w: float | None) -> LabelCalibration:
    """Choose and fit one label's calibration on (n,) labels in {0, 1} and raw probabilities."""
    y = np.asarray(y, dtype=np.float64)
    z = logit(p)
    n, n_pos = int(y.size), int((y == 1).sum())
    shift = math.log(w) if w is not None and math.isfinite(w) and w > 0 else None
    if min(n_pos, n - n_pos) < MIN_PER_CLASS:
        method = "identity" if shift is None else "prior_shift"
        return LabelCalibration(method, 1.0, 0.0 if shift is None else -shift, n, n_pos, note=(
            f"{n_pos} positive and {n - n_pos} negative rows (fewer than {MIN_PER_CLASS} of a class): "
            f"nothing fitted, {method}"))
    cands: dict[str, tuple[float, float]] = {"identity": (1.0, 0.0)}
    if shift is not None:
        cands["prior_shift"] = (1.0, -shift)
    cands["temperature"] = _fit_ab(y, z, shift=shift or 0.0, free_b=False)
    cands["platt"] = _fit_ab(y, z, shift=shift or 0.0, free_b=True)
    aic = {m: round(2.0 * _nll_sum(y, z, a, b) + 2.0 * N_PARAMS[m], 6) for m, (a, b) in cands.items()}
    best = min(cands, key=lambda m: (aic[m], METHODS.index(m)))  # ties: the simpler candidate
    a, b = cands[best]
    return LabelCalibration(best, a, b, n, n_pos, aic)


def fit_calibration(Y_val: np.ndarray, P_val: np.ndarray, *, pos_weight: Sequence[float] | np.ndarray | None = None,
                    fitted_on: str = "validation split") -> Calibration:
    """Per-label calibration chosen and fitted by the module's rule.

    Args:
        Y_val: (n, 6) int labels 1 / 0 / -1 (-1 rows are left out per label).
        P_val: (n, 6) the head's raw probabilities on the same rows.
        pos_weight: (6,) the positive-class weights the head was trained with (None: unknown,
            so no prior-shift candidates).
        fitted_on: free text recorded in calibration.json.
    """
    Y_val = np.asarray(Y_val)
    P_val = np.asarray(P_val, dtype=np.float64)
    L = len(LABEL_NAMES)
    if Y_val.shape != P_val.shape or Y_val.ndim != 2 or Y_val.shape[1] != L:
        raise CalibrationError(f"Y_val {Y_val.shape} and P_val {P_val.shape} must both be (n, {L})")
    pw = [None] * L if pos_weight is None else [float(w) for w in np.asarray(pos_weight, dtype=np.float64)]
    labels = {}
    for j, name in enumerate(LABEL_NAMES):
        m = Y_val[:, j] != MISSING
        labels[name] = fit_label(Y_val[m, j], P_val[m, j], pw[j])
    return Calibration(labels, fitted_on=fitted_on)


def brier(y: np.ndarray, p: np.ndarray) -> float | None:
    """Mean squared error of probabilities ``p`` (n,) against ``y`` (n,) in {0, 1}; None if n = 0."""
    y = np.asarray(y, dtype=np.float64)
    return float(np.mean((np.asarray(p, dtype=np.float64) - y) ** 2)) if y.size else None


def n_bins_for(n: int) -> int:
    """Equal-count bins for ECE and reliability diagrams: about 15 rows a bin, 2 to 10 bins."""
    return int(min(10, max(2, n // 15)))


def bin_by_rank(p: np.ndarray, n_bins: int | None = None) -> np.ndarray:
    """(n,) bin index of each of the (n,) probabilities ``p``: rows ordered by p (ties by position)
    and cut into k = ``n_bins`` or ``n_bins_for(n)`` runs whose sizes differ by at most one. The one
    binning of every ECE and reliability diagram in woundscore (model folder, report, calibrate)."""
    p = np.asarray(p, dtype=np.float64).ravel()
    idx = np.zeros(p.size, dtype=np.int64)
    for b, rows in enumerate(np.array_split(np.argsort(p, kind="stable"), min(p.size, n_bins or n_bins_for(p.size)) or 1)):
        idx[rows] = b
    return idx


def ece(y: np.ndarray, p: np.ndarray, n_bins: int | None = None) -> float | None:
    """Expected calibration error over :func:`bin_by_rank` bins: sum over bins of
    (bin size / n) * |mean(p) - mean(y)|. None if n = 0."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.size == 0:
        return None
    b = bin_by_rank(p, n_bins)
    size = np.bincount(b)
    gap = np.abs(np.bincount(b, weights=p) - np.bincount(b, weights=y))  # size * |mean p - mean y|
    return float(gap[size > 0].sum() / y.size)
