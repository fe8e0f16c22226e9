"""The report's figures: ROC curves, reliability diagrams, and a forest plot of paired ΔAUC.

matplotlib with the Agg backend and the object API (``Figure``), so no GUI and no pyplot global
state. Every figure says n in its titles; text from data is passed through :func:`_safe` so that a
``$`` in a method or label name is drawn literally rather than as mathtext.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from woundscore.compare.document import fmt_est
from woundscore.classify.calibration import n_bins_for
from woundscore.compare.calibration_report import equal_count_bins

DPI = 150  # figures are written at this resolution (README: >= 150 dpi)
_NOTICE_FONT = 8
_LINE_IN = 0.16  # height of one notice line at 8 pt, inches


def _notice_lines(notice: str | None, width_in: float) -> list[str]:
    """The notice wrapped to the figure's width (about 0.075 in per 8-pt character)."""
    if not notice:
        return []
    import textwrap

    return textwrap.wrap(f"NOTICE: {notice}", width=max(20, int(width_in / 0.075)))


def _figure(nrows: int, ncols: int, size: tuple[float, float], notice: str | None = None):
    """A figure with a strip below the axes reserved for the notice: (fig, axes, strip inches)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lines = _notice_lines(notice, size[0])
    strip = (len(lines) * _LINE_IN + 0.12) if lines else 0.0
    # no layout engine: "constrained" doubles the drawing time; margins are set per figure
    fig = Figure(figsize=(size[0], size[1] + strip), dpi=100)
    FigureCanvasAgg(fig)  # a canvas with a renderer, so text extents can be measured
    fig._woundscore_notice = (lines, strip)  # read by _margins and _save
    return fig, fig.subplots(nrows, ncols, squeeze=False).ravel()


def _margins(fig, *, bottom_in: float, top_in: float, **kw: float) -> None:
    """subplots_adjust with the bottom and top margins in inches, above the notice strip."""
    h = fig.get_figheight()
    strip = fig._woundscore_notice[1]
    fig.subplots_adjust(bottom=(bottom_in + strip) / h, top=1 - top_in / h, **kw)


def _suptitle(fig, title: str, size: float) -> None:
    """The figure's title 0.12 in below its top edge (a fixed distance: panel titles start lower)."""
    fig.suptitle(title, fontsize=size, y=1 - 0.12 / fig.get_figheight(), va="top")


def _safe(text: object) -> str:
    """Data text drawn literally: escape mathtext's ``$``."""
    return str(text).replace("$", r"\$")


def _label_panels(
    Y: np.ndarray, label_names: Sequence[str], draw: Callable[[Any, int, np.ndarray], None], title: str,
    path: str | os.PathLike, notice: str | None,
) -> Path:
    """One panel per label, titled with its observed n and positives; ``draw(ax, j, y)`` fills it."""
    ncols = min(3, max(1, len(label_names)))
    rows = (len(label_names) + ncols - 1) // ncols
    fig, axes = _figure(rows, ncols, (4.2 * ncols, 3.9 * rows), notice)
    for ax, (j, label) in zip(axes, enumerate(label_names)):
        y = np.asarray(Y)[:, j]
        ax.set_title(_safe(f"{label} (n={int((y != -1).sum())}, positives={int((y == 1).sum())})"), fontsize=10)
        draw(ax, j, y)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=7)
    for ax in axes[len(label_names):]:
        ax.set_visible(False)
    _suptitle(fig, title, 11)
    _margins(fig, bottom_in=0.45, top_in=0.7, left=0.07, right=0.98, wspace=0.28, hspace=0.42)
    return _save(fig, path)


def plot_roc(
    Y: np.ndarray, probs: Mapping[str, np.ndarray], label_names: Sequence[str],
    per_label: Mapping[str, Mapping[str, Mapping]], path: str | os.PathLike, *, notice: str | None = None,
) -> Path:
    """One panel per label: every method's ROC curve on the observed test rows; legend has AUC and CI.

    Y: (n, L) test labels 1 / 0 / -1; probs: method -> (n, L); per_label: ``evaluate``'s per-label dicts.
    """
    from sklearn.metrics import roc_curve

    def draw(ax, j: int, y: np.ndarray) -> None:
        m = y != -1
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        if len(np.unique(y[m])) < 2:
            ax.text(0.5, 0.5, "not estimable:\none class in test", ha="center", va="center", fontsize=9)
        else:
            for name, P in probs.items():
                fpr, tpr, _ = roc_curve(y[m], np.asarray(P)[m, j])
                auc = per_label[label_names[j]][name]["auc"]
                ax.plot(fpr, tpr, lw=1.4, label=_safe(f"{name}: AUC {fmt_est(auc, digits=2)}"))
            ax.legend(fontsize=7, loc="lower right")
        ax.set_xlabel("1 - specificity (false positive rate)", fontsize=8)
        ax.set_ylabel("sensitivity (true positive rate)", fontsize=8)
        ax.set_ylim(0, 1.01)

    return _label_panels(Y, label_names, draw, "ROC curves on the test split (95% bootstrap CI in the legend)",
                         path, notice)


def plot_reliability(
    Y: np.ndarray, raw: Mapping[str, np.ndarray], calibrated: Mapping[str, np.ndarray], label_names: Sequence[str],
    cal_metrics: Mapping[str, Mapping[str, Mapping]], path: str | os.PathLike, *, notice: str | None = None,
) -> Path:
    """One row per label, before (left) and after (right) calibration: fraction positive vs mean
    predicted probability over equal-count bins (fewer when n is small), every method.

    Y: (n, L) test labels; raw / calibrated: method -> (n, L); cal_metrics: calibration_metrics()."""
    L = len(label_names)
    fig, axes = _figure(L, 2, (8.4, 3.3 * L), notice)
    for j, label in enumerate(label_names):
        y = np.asarray(Y)[:, j]
        n = int((y != -1).sum())
        k = n_bins_for(n)
        sizes = np.array_split(np.arange(n), k) if n else []
        per_bin = f"{min(map(len, sizes))}-{max(map(len, sizes))}" if n and len(set(map(len, sizes))) > 1 else (
            str(len(sizes[0])) if n else "0")
        for ax, (when, probs) in zip(axes[2 * j: 2 * j + 2], (("before", raw), ("after", calibrated))):
            ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
            for name, P in probs.items():
                mean_p, frac, _ = equal_count_bins(y, np.asarray(P)[:, j], k)
                ece = cal_metrics[label][name][f"ece_{when}"]
                ax.plot(mean_p, frac, marker="o", ms=3, lw=1.2, label=_safe(f"{name}: ECE {fmt_est(ece, digits=2)}"))
            if n:
                ax.legend(fontsize=6.5, loc="upper left")
            ax.set_title(_safe(f"{label} {when} calibration (n={n}; {k} bins of {per_bin})"), fontsize=9)
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.02, 1.02)
            ax.tick_params(labelsize=7)
            ax.set_xlabel("mean predicted probability (bin)", fontsize=8)
            ax.set_ylabel("fraction positive (bin)", fontsize=8)
    _suptitle(fig, "Reliability on the test split, equal-count bins (ECE on the same bins, 95% CI)", 10)
    _margins(fig, bottom_in=0.45, top_in=0.7, left=0.09, right=0.98, wspace=0.28, hspace=0.55)
    return _save(fig, path)


def plot_forest(
    comparisons: Sequence[Mapping], label_names: Sequence[str], path: str | os.PathLike, *,
    notice: str | None = None,
) -> Path:
    """ΔAUC (A - B) with 95% paired-bootstrap CI per label and macro, one row per comparison x label."""
    rows: list[tuple[str, Mapping]] = []
    for c in comparisons:
        for label in label_names:
            rows.append((f"{c['a']} - {c['b']}: {label}", c["per_label"][label]))
        rows.append((f"{c['a']} - {c['b']}: macro", c["macro"]))
    height = max(2.5, 0.28 * len(rows) + 1.2)
    longest = max((len(name) for name, _ in rows), default=10) + 8
    width = 5.0 + 0.065 * longest  # room for the row labels on the left
    fig, axes = _figure(1, 1, (width, height), notice)
    _margins(fig, bottom_in=0.55, top_in=0.45, left=0.065 * longest / width, right=0.97)
    ax = axes[0]
    ypos = np.arange(len(rows))[::-1]
    for yv, (name, d) in zip(ypos, rows):
        if d.get("value") is None or d.get("low") is None:
            ax.text(0, yv, "not estimable" if d.get("value") is None else "no interval",
                    ha="center", va="center", fontsize=7, color="0.4")
            continue
        macro = name.endswith(": macro")
        ax.errorbar(
            d["value"], yv,
            xerr=[[d["value"] - d["low"]], [d["high"] - d["value"]]],
            fmt="D" if macro else "o", ms=5 if macro else 4, capsize=2,
            color="black" if macro else "tab:blue",
        )
    ax.axvline(0.0, color="0.5", lw=0.8, ls="--")
    ax.set_yticks(ypos)
    ax.set_yticklabels([_safe(f"{name} (n={d.get('n')})") for name, d in rows], fontsize=7)
    ax.set_xlabel("ΔAUC (A - B), 95% paired bootstrap CI; > 0 favours A", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title("Paired differences in ROC AUC on the same test images", fontsize=10)
    if not rows:
        ax.text(0.5, 0.5, "no comparison (one method only)", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    """Draw the notice once, in the strip reserved below the axes (a figure copied out of the
    report keeps its warning, e.g. demo: random weights), and write the PNG at :data:`DPI`."""
    path = Path(path)
    lines, strip = fig._woundscore_notice
    if lines:
        fig.text(0.5, 0.05 / fig.get_figheight(), _safe("\n".join(lines)), ha="center", va="bottom",
                 fontsize=_NOTICE_FONT, color="#b00020", linespacing=1.2)
    fig.savefig(path, format="png", dpi=DPI)
    return path
