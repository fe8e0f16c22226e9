"""The comparison report: MLP vs logistic probe vs zero-shot vs fine-tune, on the same test images.

:func:`run_comparison` gathers the methods (:mod:`~woundscore.compare.methods`), computes every
metric with its 95% interval (:mod:`~woundscore.compare.metrics`), draws the figures
(:mod:`~woundscore.compare.plots`), says it all as blocks (:mod:`~woundscore.compare.document`) and
renders them (:mod:`~woundscore.compare.render`). The files it writes: README, `wound-compare run`.
metrics.json is the content as data (``null`` + a reason where not estimable); report.html is
self-contained, and every string in it that comes from data is HTML-escaped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from woundscore.cache import read_cache
from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import SPLITS
from woundscore.cache.types import EmbeddingSet
from woundscore.cache.util import atomic_write_text, replace_dir
from woundscore.compare import metrics as M
from woundscore.compare import plots
from woundscore.compare.calibration_report import calibration_metrics
from woundscore.compare.document import build_document, notices, report_data
from woundscore.compare.headline import all_pairs, headline
from woundscore.compare.methods import (
    FINETUNE, MLP, PROBE, ZERO_SHOT, MethodRun, ReportError, external_method, seed_members, trained_method,
    zero_shot_method,
)
from woundscore.compare.render import printable, render_html, render_markdown
from woundscore.compare.sections import deploy_data, leakage_data, seed_spread

FINETUNE_PREDICTIONS = "predictions.csv"


@dataclass
class ComparisonResult:
    """Where the report went, and its content as data."""

    out_dir: Path
    files: dict[str, Path]
    metrics: dict[str, Any]
    seconds: float


def _check_request(predictions: Mapping[str, Any], finetune_dir: Any, methods: Sequence[str], n_boot: int) -> None:
    for name in predictions:
        if not str(name).strip():
            raise ReportError("a --predictions NAME is empty; use NAME=FILE with a non-empty name")
        if name in (PROBE, MLP, ZERO_SHOT) or (name == FINETUNE and finetune_dir is not None):
            raise ReportError(f"method name {name!r} is taken by a built-in method; choose another NAME in NAME=FILE")
    unknown = [m for m in methods if m not in (PROBE, MLP)]
    if unknown:
        raise ReportError(f"unknown method(s) to train: {', '.join(map(repr, unknown))}; choose from probe, mlp")
    if n_boot < 100:
        raise ReportError(f"--bootstrap {n_boot} is too few for a 95% interval; use at least 100")


def _load_cache(cache: str | os.PathLike | EmbeddingSet, methods: Sequence[str]) -> tuple[EmbeddingSet, str]:
    """The cache and its name, checked for the splits the run needs."""
    if isinstance(cache, EmbeddingSet):
        data, name = cache, "<in-memory EmbeddingSet>"
    else:
        data, name = read_cache(cache), str(cache)
    n_train, n_val, n_test = (len(data.subset(s)) for s in SPLITS)
    if n_test == 0:
        raise ReportError(f"{name}: no rows in the test split; nothing to compare on")
    if methods and (n_train == 0 or n_val == 0):
        raise ReportError(f"{name}: training the {'/'.join(methods)} needs train and val rows; "
                          f"the cache has {n_train} train and {n_val} val rows")
    return data, name


def _external_runs(
    data: EmbeddingSet, finetune_dir: Any, predictions: Mapping[str, Any], say: Callable[[str], None],
) -> dict[str, MethodRun]:
    """Predictions files, read and matched first: a bad file fails before any training."""
    external: list[tuple[str, Path, str]] = []
    if finetune_dir is not None:
        ft = Path(finetune_dir) / FINETUNE_PREDICTIONS
        if not ft.is_file():
            raise ReportError(f"{finetune_dir}: no {FINETUNE_PREDICTIONS} in the fine-tune folder")
        external.append((FINETUNE, ft, "selective-unfreeze fine-tune"))
    external += [(str(n), Path(p), "external predictions") for n, p in predictions.items()]
    runs = {}
    for name, path, desc in external:
        say(f"reading predictions of {name} from {path}")
        runs[name] = external_method(name, path, data, desc)
    return runs


def _trained_runs(
    data: EmbeddingSet, methods: Sequence[str], seed: int, mlp_params: Any, models_dir: Path, source: str,
    say: Callable[[str], None],
) -> dict[str, MethodRun]:
    """Train the probe / MLP, each saved as a model folder under ``models_dir`` (what wound-serve deploys)."""
    n_train, n_val = len(data.subset("train")), len(data.subset("val"))
    runs = {}
    for name, what in ((PROBE, f"the logistic probe on {n_train} rows"),
                       (MLP, f"the MLP on {n_train} rows (early stopping on {n_val} val rows)")):
        if name in methods:
            say(f"training {what}")
            runs[name] = trained_method(name, data, seed, mlp_params if name == MLP else None,
                                        models_dir / name, source)
    return runs


def _check_zero_shot_source(data: EmbeddingSet, zero_shot: bool, source: Any, model: Any) -> None:
    """Before any compute: the source's val and test images must be the cache's (sha256 per id);
    otherwise the run is refused (SourceMismatchError). Ids the source lacks are left to zero-shot,
    which is then skipped with the reason."""
    if not (zero_shot and source is not None and model is not None):
        return
    from woundscore.compare.zeroshot import SourceMismatchError, check_same_images
    from woundscore.embed.sources import open_source

    try:
        src = open_source(source)
        wanted = {str(i) for s in ("val", "test") for i in data.subset(s).ids}
        chosen = [s for s in src.samples() if str(s.image_id) in wanted]
    except WoundscoreError:
        return  # an unreadable source: zero-shot is skipped with the reason
    try:
        check_same_images(src.path, chosen, {str(i): str(h) for i, h in zip(data.ids, data.sha256)})
    except SourceMismatchError as e:
        raise ReportError(f"--source: {e}") from None


def _zero_shot_run(
    data: EmbeddingSet, zero_shot: bool, source: Any, model: Any, quiet: bool, say: Callable[[str], None],
) -> tuple[dict[str, MethodRun], dict[str, str]]:
    """({zero-shot: run}, {}) or ({}, {zero-shot: why skipped}): zero-shot never fails the report."""
    if not zero_shot:
        return {}, {ZERO_SHOT: "not requested (--no-zero-shot)"}
    if source is None or model is None:
        return {}, {ZERO_SHOT: "needs both --source (the images) and --model (a full SigLIP checkpoint with its "
                               "text tower)"}
    say(f"zero-shot scoring with {model}")
    try:
        return {ZERO_SHOT: zero_shot_method(source, model, data, quiet)}, {}
    # A refusal (named error), a missing/unreadable file or a missing optional package (the
    # tokenizer's sentencepiece) skips zero-shot with the reason; anything else is a bug and raises.
    except (WoundscoreError, OSError, ImportError) as e:
        say(f"zero-shot skipped: {type(e).__name__}: {e}")
        return {}, {ZERO_SHOT: f"{type(e).__name__}: {e}"}


def _draw_figures(out: Path, data: EmbeddingSet, runs: Mapping[str, MethodRun], result: dict,
                  calibration: dict) -> dict[str, Path]:
    Y, names = data.subset("test").Y, data.label_names
    probs = {n: r.P_test for n, r in runs.items()}
    notice = "; ".join(notices(data, runs)) or None
    per_label = result["per_label"]
    return {
        "roc.png": plots.plot_roc(Y, probs, names, per_label, out / "roc.png", notice=notice),
        "reliability.png": plots.plot_reliability(Y, {n: r.P_test_raw for n, r in runs.items()}, probs, names,
                                                  calibration["metrics"], out / "reliability.png", notice=notice),
        "forest.png": plots.plot_forest(result["comparisons"], names, out / "forest.png", notice=notice),
    }


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.generic, np.ndarray)):
        return o.tolist()  # a numpy scalar's tolist() is the Python scalar
    return o.decode("utf-8", "replace") if isinstance(o, (bytes, bytearray)) else str(o)


def _write_report(out: Path, doc: dict[str, Any], figures: dict[str, Path],
                  extra_blocks: list | None = None) -> dict[str, Path]:
    blocks = build_document(doc, extra_blocks)
    files = {name: out / name for name in ("report.md", "report.html", "metrics.json")}
    atomic_write_text(files["report.md"], render_markdown(blocks))
    atomic_write_text(files["report.html"], render_html(blocks, base_dir=out))
    atomic_write_text(files["metrics.json"], json.dumps(doc, indent=2, allow_nan=False, default=_json_default) + "\n")
    return {**files, **figures}


def _evaluate(data: EmbeddingSet, runs: Mapping[str, MethodRun], n_boot: int, seed: int,
              exclude_leaked: bool, leakage: dict | None) -> tuple[dict, dict, dict, dict | None]:
    """(result with the first method's comparisons, headline, calibration section, metrics
    without the leaked test images or None). Every pair of methods is compared once."""
    test = data.subset("test")
    first = next(iter(runs))
    probs = {n: r.P_test for n, r in runs.items()}
    thresholds = {n: r.thresholds for n, r in runs.items()}
    result = M.evaluate(test.Y, probs, label_names=data.label_names, thresholds=thresholds,
                        comparisons=all_pairs(list(runs)), n_boot=n_boot, seed=seed)
    head = headline(result["macro_auc"], result["comparisons"], data.label_names)
    result["comparisons"] = [c for c in result["comparisons"] if c["a"] == first]
    from woundscore.classify.calibration import RULE

    calibration = {"rule": RULE, "ece_bins": M.ECE_BINS, "metrics": calibration_metrics(
        test.Y, {n: r.P_test_raw for n, r in runs.items()}, probs, label_names=data.label_names,
        n_boot=n_boot, seed=seed)}
    excluded = None
    if exclude_leaked:
        leaked = set((leakage or {}).get("leaked_test_ids") or [])
        keep = ~np.isin(np.asarray(test.ids, dtype=str), sorted(leaked))
        excluded = {"n_excluded": int((~keep).sum()), "n_test_images": int(keep.sum()), "metrics": None,
                    "excluded_ids": sorted(leaked)}
        if leakage is None:
            excluded["reason"] = "the leakage audit could not run"
        elif not keep.any():
            excluded["reason"] = "every test image has a duplicate in train/val"
        else:
            excluded["metrics"] = M.evaluate(test.Y[keep], {n: P[keep] for n, P in probs.items()},
                                             label_names=data.label_names, thresholds=thresholds, n_boot=n_boot,
                                             seed=seed)
    return result, head, calibration, excluded


def _leakage(data: EmbeddingSet, say: Callable[[str], None]) -> dict | None:
    """The cache's leakage audit as JSON; None (with a message) where it cannot run."""
    try:
        return leakage_data(data)
    except (WoundscoreError, MemoryError) as e:  # the audit informs the report; a bug still raises
        say(f"leakage audit skipped: {type(e).__name__}: {e}")
        return None


def _stage_output(out: Path) -> Path:
    """Check, before any compute, that the report folder can be written; return the empty folder
    beside it where the report is built (swapped into place by :func:`woundscore.cache.util.replace_dir`).

    ``out`` may be absent, empty, or an earlier report (it has metrics.json); anything else is
    refused, so that a report never replaces a folder of other files.
    """
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out}: exists and is not a folder; choose a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / "metrics.json").is_file():
        raise ReportError(f"{out}: folder exists, is not empty and holds no earlier report (no metrics.json); "
                          "choose a new or empty folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    except OSError as e:
        raise ReportError(f"{out}: cannot write the report there ({e.strerror or e})") from None


def _seed_spread(data: EmbeddingSet, runs: Mapping[str, MethodRun], seeds: int, seed: int, mlp_params: Any,
                 say: Callable[[str], None]) -> dict | None:
    """The MLP's seed spread: its own members when the head is a seed ensemble, else ``seeds``
    members trained for the measurement (one Keras fit); None without an MLP."""
    if MLP not in runs:
        return None
    Y_val, Y_test = data.subset("val").Y, data.subset("test").Y
    if runs[MLP].member_P_test is not None:
        return seed_spread(None, runs[MLP].member_P_test, Y_val, Y_test, source="the members of the MLP seed ensemble")
    if seeds < 2:
        return seed_spread(None, None, Y_val, Y_test, source="", reason="not requested; wound-compare run --seeds N "
                           "(N >= 2) trains N seeds to measure it")
    say(f"MLP seed spread: {seeds} seeds in one fit")
    val, test = seed_members(data, seed, mlp_params, seeds)
    return seed_spread(val, test, Y_val, Y_test, source=f"{seeds} seeds trained for this measurement, seeds from {seed}")


def _curve(data: EmbeddingSet, curve: bool | Mapping[str, Any], methods: Sequence[str], seed: int, n_boot: int,
           finetune_dir: Any, stage: Path, say: Callable[[str], None]) -> tuple[dict | None, list]:
    """The learning curve (``compare.curve``) as (JSON, document blocks with its figure drawn into
    ``stage``), when asked; ``curve`` may be a mapping of learning_curve options."""
    if not curve:
        return None, []
    from woundscore.compare.curve import curve_blocks, learning_curve

    say("learning curve (nested subsets of the train split)")
    options = {"n_boot": n_boot, "methods": tuple(methods) or (PROBE, MLP), "on_progress": say,
               **(dict(curve) if isinstance(curve, Mapping) else {})}
    if finetune_dir is not None:
        options.setdefault("finetune_predictions", str(Path(finetune_dir) / FINETUNE_PREDICTIONS))
    res = learning_curve(data, seed=seed, **options)
    return res.to_json(), list(curve_blocks(res, image=stage / "curve.png"))


def run_comparison(
    cache: str | os.PathLike | EmbeddingSet,
    out_dir: str | os.PathLike,
    *,
    source: str | os.PathLike | None = None,
    model: str | os.PathLike | None = None,
    finetune_dir: str | os.PathLike | None = None,
    predictions: Mapping[str, str | os.PathLike] | None = None,
    zero_shot: bool = True,
    n_boot: int = M.DEFAULT_N_BOOT,
    seed: int = 0,
    methods: Sequence[str] = (PROBE, MLP),
    mlp_params: Mapping[str, Any] | None = None,
    exclude_leaked: bool = False,
    curve: bool | Mapping[str, Any] = False,
    seeds: int = 0,
    quiet: bool = False,
) -> ComparisonResult:
    """Benchmark the MLP against the probe, zero-shot and external predictions; write the report.

    Args:
        cache: cache file (or an EmbeddingSet) with train / val / test rows.
        out_dir: report folder, written all-or-nothing: built beside it, then swapped in (it may
            be absent, empty or an earlier report; anything else is refused before any compute).
        source, model: the image source and full SigLIP checkpoint for zero-shot (both needed;
            otherwise zero-shot is skipped with the reason in the report).
        finetune_dir: a ``wound-compare finetune`` output folder (reads its predictions.csv).
        predictions: method name -> predictions CSV (see compare.predictions), matched by image id.
        n_boot, seed: bootstrap resamples and the seed of every random choice (training too).
        methods: which of ("probe", "mlp") to train here; each is saved as a model folder
            (``models/<name>``) that ``wound-serve`` deploys.
        mlp_params: extra constructor arguments of KerasMLPClassifier.
        exclude_leaked: also report the test metrics without the test images that have an exact
            or near duplicate in train/val (``cache.leakage``).
        curve: add the learning-curve section (``compare.curve``); a mapping passes its options.
        seeds: N >= 2 trains an N-seed MLP ensemble to show the MLP's seed spread (not needed
            when the MLP head is itself a seed ensemble: its members are used).

    Raises:
        ReportError, compare.predictions.PredictionsError, cache errors. Predictions files are
        read and matched *before* any training, so a bad file costs nothing.
    """
    t_start = time.perf_counter()
    say = (lambda msg: None) if quiet else (lambda msg: print(printable(msg), file=sys.stderr, flush=True))
    predictions = dict(predictions or {})
    _check_request(predictions, finetune_dir, methods, n_boot)
    data, cache_name = _load_cache(cache, methods)
    _check_zero_shot_source(data, zero_shot, source, model)
    out = Path(out_dir)
    stage = _stage_output(out)
    try:
        files, doc = _build(stage, out, data, cache_name, say, source=source, model=model, finetune_dir=finetune_dir,
                            predictions=predictions, zero_shot=zero_shot, n_boot=n_boot, seed=seed, methods=methods,
                            mlp_params=mlp_params, exclude_leaked=exclude_leaked, curve=curve, seeds=seeds,
                            quiet=quiet, t_start=t_start)
        replace_dir(stage, out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t_start
    files = {k: out / p.relative_to(stage) for k, p in files.items()}
    say(f"wrote {files['report.md']} and {files['report.html']} in {seconds:.1f} s")
    return ComparisonResult(out_dir=out, files=files, metrics=doc, seconds=seconds)


def _build(stage: Path, out: Path, data: EmbeddingSet, cache_name: str, say: Callable[[str], None], *,
           source: Any, model: Any, finetune_dir: Any, predictions: dict, zero_shot: bool, n_boot: int, seed: int,
           methods: Sequence[str], mlp_params: Any, exclude_leaked: bool, curve: Any, seeds: int, quiet: bool,
           t_start: float) -> tuple[dict[str, Path], dict[str, Any]]:
    """Everything :func:`run_comparison` computes, written into ``stage``: (files, metrics.json's dict)."""
    timing = {"load_seconds": round(time.perf_counter() - t_start, 3)}
    runs = _external_runs(data, finetune_dir, predictions, say)
    runs.update(_trained_runs(data, methods, seed, mlp_params, stage / "models", cache_name, say))
    zs_run, skipped = _zero_shot_run(data, zero_shot, source, model, quiet, say)
    runs.update(zs_run)
    # Order: the MLP first, then the fine-tune, the probe, zero-shot, other predictions.
    runs = {n: runs[n] for n in dict.fromkeys([MLP, FINETUNE, PROBE, ZERO_SHOT, *runs]) if n in runs}
    if not runs:
        raise ReportError("no method to compare: train one (probe, mlp) or pass predictions")
    leakage = _leakage(data, say)

    say(f"metrics with {n_boot} bootstrap resamples")
    t0 = time.perf_counter()
    result, head, calibration, excluded = _evaluate(data, runs, n_boot, seed, exclude_leaked, leakage)
    timing["metrics_seconds"] = round(time.perf_counter() - t0, 3)
    curve_json, curve_section = _curve(data, curve, methods, seed, n_boot, finetune_dir, stage, say)

    say("figures")
    t0 = time.perf_counter()
    figures = _draw_figures(stage, data, runs, result, calibration)
    timing["figures_seconds"] = round(time.perf_counter() - t0, 3)
    macro = result["macro_auc"]
    order = sorted((n for n in runs if macro[n]["value"] is not None), key=lambda n: -macro[n]["value"])
    deploy = deploy_data(head["best"], {n: out / "models" / n for n, r in runs.items() if r.model_dir is not None},
                         finetune_dir, FINETUNE if finetune_dir is not None else None, order)
    extra = {"headline": head, "calibration": calibration, "leakage": leakage, "excluded_leaked": excluded,
             "deploy": deploy, "seed_spread": _seed_spread(data, runs, seeds, seed, mlp_params, say),
             "curve": curve_json}
    doc = report_data(data=data, cache_name=cache_name, runs=runs, skipped=skipped, result=result,
                      n_boot=n_boot, seed=seed, extra=extra)
    timing["total_seconds"] = round(time.perf_counter() - t_start, 3)  # before writing the files
    doc["timing"] = timing
    for block in curve_section:  # the curve's figure: into the report folder, named relative to it
        if block[0] == "image" and not (stage / Path(block[1]).name).is_file():
            shutil.copyfile(block[1], stage / Path(block[1]).name)
    curve_section = [("image", Path(b[1]).name, b[2]) if b[0] == "image" else b for b in curve_section]
    if curve_section:
        figures["curve.png"] = stage / "curve.png"
    return _write_report(stage, doc, figures, curve_section), doc
