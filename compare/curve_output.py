"""The learning curve's files (curve.csv, curve.md, curve.png, curve.json) and its report section.

Blocks follow :mod:`woundscore.compare.document` (plain text; the renderers escape it).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from woundscore.cache.util import atomic_write_text
from woundscore.compare.curve import FLAT_GAIN, MIN_TRAIN_CLASS, NAMES, CurveResult, _fmt

COLUMNS = ["method", "train_images", "what", "mean", "sd", "min", "max", "ci_low", "ci_high", "train_positives",
           "note"]


def table_rows(res: CurveResult) -> list[list[str]]:
    """One row per (method, size, macro or label): the spread over repeats; the CI at full size."""
    rows = []
    for m in res.methods:
        for i, p in enumerate(res.points[m]):
            full = i == len(res.sizes) - 1
            items = [("macro", p["macro"], res.full_ci[m]["macro"] if full else None, "")]
            items += [(lab, e, res.full_ci[m]["per_label"].get(lab) if full else None, e["train_positives"])
                      for lab, e in p["per_label"].items()]
            for what, e, ci, pos in items:
                ci = ci or {}
                rows.append([m, str(p["n"]), what, _fmt(e["mean"]), _fmt(e["sd"]), _fmt(e["min"]), _fmt(e["max"]),
                             _fmt(ci.get("low")), _fmt(ci.get("high")), str(pos), e.get("reason") or ""])
    if res.finetune is not None:
        f = res.finetune["macro"]
        rows.append(["finetune", str(res.finetune["n_train"]), "macro", _fmt(f["value"]), "", "", "",
                     _fmt(f["low"]), _fmt(f["high"]), "", "one model; no repeats"])
    return rows


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(out + ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in rows]) + "\n"


def plot_curve(res: CurveResult, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Macro and per-label test AUC vs training images: mean of repeats, min-max band, 95% CI bar
    at the largest size, the fine-tune's point. Labels not estimable at a size are left out there."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    panels = ["macro", *res.label_names]
    fig = Figure(figsize=(14, 7), dpi=dpi)
    axes = fig.subplots(2, 4, squeeze=False).ravel()
    colors = {"probe": "tab:blue", "mlp": "tab:orange"}
    for ax, what in zip(axes, panels):
        for m in res.methods:
            pts = [p["macro"] if what == "macro" else p["per_label"][what] for p in res.points[m]]
            ok = [(n, e) for n, e in zip(res.sizes, pts) if e["mean"] is not None]
            if not ok:
                continue
            x = np.array([n for n, _ in ok])
            ax.plot(x, [e["mean"] for _, e in ok], "o-", color=colors.get(m), label=f"{NAMES.get(m, m)}, mean")
            ax.fill_between(x, [e["min"] for _, e in ok], [e["max"] for _, e in ok], color=colors.get(m), alpha=0.2)
            ci = res.full_ci[m]["macro"] if what == "macro" else res.full_ci[m]["per_label"].get(what, {})
            if ok[-1][0] == res.sizes[-1] and ci.get("low") is not None:
                ax.errorbar([x[-1] * 1.03], [ci["value"]], yerr=[[ci["value"] - ci["low"]], [ci["high"] - ci["value"]]],
                            color=colors.get(m), capsize=3, lw=1)
        if res.finetune is not None:
            f = res.finetune["macro"] if what == "macro" else res.finetune["per_label"].get(what, {})
            if f.get("value") is not None:
                yerr = None if f.get("low") is None else [[f["value"] - f["low"]], [f["high"] - f["value"]]]
                ax.errorbar([res.finetune["n_train"] * 0.97], [f["value"]], yerr=yerr, fmt="s", color="tab:green",
                            capsize=3, label="fine-tune (one model)")
        ax.set_xscale("log")
        ax.minorticks_off()  # log minor labels (2x10^1 ...) collide with the size ticks
        ax.set_xticks(res.sizes, [str(s) for s in res.sizes])
        ax.axhline(0.5, color="grey", lw=0.5, ls=":")
        ax.set_title(f"{what} AUC (test n={res.n_test})", fontsize=10)
        ax.set_xlabel("training images", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=7, loc="lower right")
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"Learning curve: mean of {res.repeats} repeats (line), min-max over repeats (band), "
                 "95% bootstrap CI at full size (bar)" + (f"\n{res.notice}" if res.notice else ""), fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, top=0.88, bottom=0.08, hspace=0.45, wspace=0.25)
    fig.savefig(path, dpi=dpi)
    return Path(path)


def write_curve(res: CurveResult, out_dir: str | os.PathLike) -> dict[str, Path]:
    """curve.csv, curve.md (table + reading), curve.png (150 dpi) and curve.json into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = table_rows(res)
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([COLUMNS, *rows])
    files = {"curve.csv": out / "curve.csv", "curve.md": out / "curve.md", "curve.png": out / "curve.png",
             "curve.json": out / "curve.json"}
    atomic_write_text(files["curve.csv"], buf.getvalue())
    md = ["# Learning curve", "", *([f"NOTICE: {res.notice}", ""] if res.notice else []), res.reading, "",
          _markdown(COLUMNS, rows), "![learning curve](curve.png)", ""]
    atomic_write_text(files["curve.md"], "\n".join(md))
    plot_curve(res, files["curve.png"])
    atomic_write_text(files["curve.json"], json.dumps(res.to_json(), indent=2, allow_nan=False,
                                                      default=lambda o: np.asarray(o).tolist()) + "\n")
    return files


def curve_blocks(res: CurveResult, *, image: str | os.PathLike | None = None) -> list[tuple]:
    """The report's learning-curve section as compare.document blocks.

    ``image``: where the plot is (drawn there when the file does not exist yet); None draws it
    into a new temporary folder. The image block carries that path: the report copies the file
    into its folder and keeps its name (compare.report).
    """
    import tempfile

    image = Path(tempfile.mkdtemp(prefix="woundscore-curve-")) / "curve.png" if image is None else Path(image)
    if not image.is_file():
        plot_curve(res, image)
    missing = sorted({f"{lab} at {p['n']} images ({e['train_positives']} positives, {e['train_negatives']} negatives)"
                      for m in res.methods for p in res.points[m] for lab, e in p["per_label"].items()
                      if e.get("reason", "").startswith("not estimable: ") and "training subset" in e["reason"]})
    mlp = res.settings.get("mlp", {})
    blocks: list[tuple] = [
        ("h2", "Learning curve: how many labelled photos are enough?"),
        ("p", f"The probe and the MLP were trained on nested, stratified subsets of the {res.sizes[-1]} training "
              f"images ({', '.join(map(str, res.sizes))}), {res.repeats} times per size with a different subset "
              f"and seed, and scored on the same {res.n_test} test images; early stopping and the probe's C use "
              f"the {res.n_val} validation images. Stratified on {res.settings.get('stratified_on')}. The curve's "
              f"MLP stops after at most {mlp.get('max_epochs')} epochs with patience {mlp.get('patience')} (the "
              "report's MLP: 300 and 25), to fit the time budget."),
        ("p", res.reading),
        ("table", COLUMNS, table_rows(res)),
        ("image", str(image), "Test AUC vs training images: mean of the repeats, min-max band, 95% CI at full size"),
        ("p", "Spread (sd, min, max) is training randomness over the repeats; the interval is test-sampling "
              "randomness (bootstrap over test images) of the mean over repeats. A label's AUC is shown at a "
              f"size only when each training subset has at least {MIN_TRAIN_CLASS} positives and negatives."),
    ]
    if missing:
        blocks.append(("p", "Not estimable (too few in the training subset): " + "; ".join(missing) + "."))
    return blocks


__all__ = ["COLUMNS", "FLAT_GAIN", "curve_blocks", "plot_curve", "table_rows", "write_curve"]
