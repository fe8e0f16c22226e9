"""Point estimates over arrays (numpy in, plain Python out): ROC AUC, macro AUC, sensitivity and
specificity, on ``sklearn.metrics``. ``compare.metrics`` has the bootstrap CIs.

scikit-learn is imported inside the functions: it costs about a second (scipy), and the CLI's
``--help`` should not pay it.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.schema import LABEL_NAMES, MISSING


def roc_auc(y: np.ndarray, scores: np.ndarray, *, sample_weight: np.ndarray | None = None) -> float | None:
    """Binary ROC AUC of ``scores`` (n,) against ``y`` (n,) in {0, 1}; None with one class.

    Ties count one half. ``sample_weight`` (n,) as in ``sklearn.metrics.roc_auc_score`` (rows of
    weight 0 do not count as a class being present).
    """
    from sklearn.metrics import auc, roc_curve

    y = np.asarray(y).ravel()
    present = y if sample_weight is None else y[np.asarray(sample_weight).ravel() > 0]
    if not ((present == 1).any() and (present == 0).any()):
        return None
    # roc_auc_score's own binary path, without its input checks (done above): half the time per
    # call, which the MLP pays 6 times an epoch for early stopping; the same value to the bit
    fpr, tpr, _ = roc_curve(y, np.asarray(scores, dtype=np.float64).ravel(), sample_weight=sample_weight)
    return float(auc(fpr, tpr))


def macro_auc(Y: np.ndarray, P: np.ndarray) -> float | None:
    """Mean ROC AUC over the labels (columns) with both classes observed; -1 entries ignored.

    ``Y`` (n, L) 1 / 0 / -1, ``P`` (n, L) scores. None when no label has both classes.
    """
    observed = np.asarray(Y) != MISSING
    aucs = [roc_auc(Y[observed[:, j], j], P[observed[:, j], j]) for j in range(Y.shape[1])]
    aucs = [a for a in aucs if a is not None]
    return float(np.mean(aucs)) if aucs else None


def sens_spec(y: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of the rule ``score >= threshold`` over ``y`` (n,) in {0, 1}
    (other values are left out); None where a class is absent."""
    from sklearn.metrics import confusion_matrix

    y = np.asarray(y).ravel()
    if y.size == 0:
        return None, None
    flag = (np.asarray(scores).ravel() >= threshold).astype(y.dtype)
    (tn, fp), (fn, tp) = confusion_matrix(y, flag, labels=[0, 1])
    return (float(tp / (tp + fn)) if tp + fn else None, float(tn / (tn + fp)) if tn + fp else None)


def evaluate(Y: np.ndarray, P: np.ndarray, thresholds: Mapping[str, float] | None = None,
             label_names: Sequence[str] = LABEL_NAMES) -> dict[str, Any]:
    """Per label n, positives, ROC AUC and sensitivity/specificity at a threshold; macro AUC.

    Args:
        Y: (n, L) int labels 1 / 0 / -1 (missing rows of a label are left out of that label).
        P: (n, L) probabilities.
        thresholds: label -> threshold applied (``p >= t`` flags); 0.5 where absent.
    Returns:
        ``{"labels": {name: {"n", "positives", "auc", "threshold", "sensitivity",
        "specificity"}}, "macro_auc": float | None, "n_rows": int}``; an AUC of a label whose rows
        have one class is None ("not estimable"), never NaN.
    """
    Y = np.asarray(Y)
    P = np.asarray(P, dtype=np.float64)
    if Y.shape != P.shape or Y.ndim != 2 or Y.shape[1] != len(label_names):
        raise ValueError(f"Y {Y.shape} and P {P.shape} must both be (n, {len(label_names)})")
    thresholds = dict(thresholds or {})
    per: dict[str, Any] = {}
    for j, name in enumerate(label_names):
        m = Y[:, j] != MISSING
        y, p = Y[m, j], P[m, j]
        t = float(thresholds.get(name, 0.5))
        sens, spec = sens_spec(y, p, t)
        per[name] = {"n": int(m.sum()), "positives": int((y == 1).sum()), "auc": roc_auc(y, p), "threshold": t,
                     "sensitivity": sens, "specificity": spec}
    aucs = [v["auc"] for v in per.values() if v["auc"] is not None]
    return {"n_rows": int(Y.shape[0]), "labels": per, "macro_auc": float(np.mean(aucs)) if aucs else None}


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def format_table(result: Mapping[str, Any], *, title: str = "") -> str:
    """A fixed-width text table of :func:`evaluate`'s result (what the CLI prints); a "rules"
    entry (label -> threshold rule) in ``result`` adds a rule column."""
    rules = result.get("rules") or {}
    head = f"{'label':<16}{'n':>5}{'pos':>5}{'AUC':>8}{'thresh':>8}{'sens':>7}{'spec':>7}"
    if rules:
        head += "  rule"
    lines = [title] if title else []
    lines += [head, "-" * len(head)]
    for name, v in result["labels"].items():
        line = (f"{name:<16}{v['n']:>5}{v['positives']:>5}{_fmt(v['auc']):>8}{v['threshold']:>8.3f}"
                f"{_fmt(v['sensitivity'], 2):>7}{_fmt(v['specificity'], 2):>7}")
        if rules:
            line += f"  {rules.get(name, '')}"
        lines.append(line)
    lines += ["-" * len(head), f"{'macro AUC':<16}{'':>10}{_fmt(result['macro_auc']):>8}   (labels with both classes)"]
    return "\n".join(lines)

