"""Simple, pure evaluation helpers over arrays (numpy in, plain Python out).

The ROC AUC here is the Mann-Whitney statistic with average ranks for ties, which is exactly what
``sklearn.metrics.roc_auc_score`` returns for binary labels (tests compare the two). It is
computed here rather than imported because scikit-learn (with scipy) costs ~2 s to import, and
training the MLP must finish in a few seconds including imports; early stopping calls it every
epoch. ``compare.metrics`` has the bootstrap CIs; these are the point estimates.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.schema import LABEL_NAMES, MISSING


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float | None:
    """Binary ROC AUC of ``scores`` (n,) against ``y`` (n,) in {0, 1}; None with one class.

    Ties count one half (average ranks), as in scikit-learn.
    """
    y = np.asarray(y).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int((y == 1).sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average 1-based rank of each run of equal scores
    boundaries = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def macro_auc(Y: np.ndarray, P: np.ndarray) -> float | None:
    """Mean ROC AUC over labels (columns) with both classes observed; -1 entries ignored.

    Args:
        Y: (n, L) 1 / 0 / -1. P: (n, L) scores.
    Returns:
        The mean, or None when no label has both classes.
    """
    aucs = []
    for j in range(Y.shape[1]):
        m = Y[:, j] != MISSING
        a = roc_auc(Y[m, j], P[m, j])
        if a is not None:
            aucs.append(a)
    return float(np.mean(aucs)) if aucs else None


def sens_spec(y: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(sensitivity, specificity) of the rule ``score >= threshold``; None where undefined."""
    y = np.asarray(y).ravel()
    flag = np.asarray(scores).ravel() >= threshold
    pos, neg = y == 1, y == 0
    sens = float(flag[pos].mean()) if pos.any() else None
    spec = float((~flag[neg]).mean()) if neg.any() else None
    return sens, spec


def evaluate(
    Y: np.ndarray,
    P: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    label_names: Sequence[str] = LABEL_NAMES,
) -> dict[str, Any]:
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
        per[name] = {
            "n": int(m.sum()),
            "positives": int((y == 1).sum()),
            "auc": roc_auc(y, p),
            "threshold": t,
            "sensitivity": sens,
            "specificity": spec,
        }
    aucs = [v["auc"] for v in per.values() if v["auc"] is not None]
    return {
        "n_rows": int(Y.shape[0]),
        "labels": per,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
    }


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
    lines.append("-" * len(head))
    lines.append(f"{'macro AUC':<16}{'':>10}{_fmt(result['macro_auc']):>8}   (labels with both classes)")
    return "\n".join(lines)


__all__ = ["evaluate", "format_table", "macro_auc", "roc_auc", "sens_spec"]
