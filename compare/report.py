"""The comparison report: MLP vs logistic probe vs zero-shot vs fine-tune, on the same test images.

:func:`run_comparison` trains the probe and the MLP on the cache's train split (the MLP early-stops
on val), chooses thresholds on val, scores the test split, adds zero-shot MedSigLIP and any
external predictions files (a fine-tune run elsewhere), computes every metric with its 95%
interval (:mod:`compare.metrics`), draws the figures (:mod:`compare.plots`) and writes:

- ``report.md``: the answer first, then the tables; every estimate carries its n and a 95% CI;
- ``report.html``: the same document, self-contained (figures embedded as base64 PNG); every
  string that comes from data (ids, labels, file and method names, notices) is HTML-escaped;
- ``metrics.json``: everything above as data (``null`` + a reason where not estimable);
- ``roc.png``, ``reliability.png``, ``forest.png``.

The document is built once as a list of blocks and rendered to Markdown and to HTML, so the two
say the same thing and escaping happens in one place.
"""

from __future__ import annotations

import base64
import html
import json
import os
import re
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.types import EmbeddingSet
from woundscore.compare import metrics as M
from woundscore.cache.util import atomic_write_text
from woundscore.compare.predictions import read_predictions, read_predictions_meta

PROBE, MLP, ZERO_SHOT, FINETUNE = "probe", "mlp", "zero-shot", "finetune"
RESERVED_NAMES = (PROBE, MLP, ZERO_SHOT, FINETUNE)
FINETUNE_PREDICTIONS = "predictions.csv"
REPORT_FILES = ("report.md", "report.html", "metrics.json", "roc.png", "reliability.png", "forest.png")
METRICS_SCHEMA_VERSION = 1

#: The nearest public result (external; quoted, never recomputed here).
EXTERNAL_REFERENCE: dict[str, Any] = {
    "what": "fine-tune of the last 8 encoder blocks on the same 6 labels and the same "
    "137-image test split",
    "per_label_auc": {
        "healing_status": 0.718,
        "erythema": 0.686,
        "edema": 0.713,
        "infection_risk": 0.810,
        "urgency": 0.822,
        "exudate": 0.721,
    },
    "macro_auc": 0.745,
    "n_test_images": 137,
    "train_time": "22.5 min on a T4",
    "status": "external, quoted as published, not recomputed here; no confidence interval published",
}

POOLING_NOTE = (
    "SiglipForImageClassification (the fine-tune's model class) mean-pools the patch tokens of the "
    "last layer and ignores the attention-pooling head that the cached embeddings (and so the MLP "
    "and the probe) come from. The fine-tune therefore classifies a different feature than the "
    "other methods; `wound-compare finetune --pooling attention` classifies the attention-pooled "
    "feature instead."
)

FIXED_CAVEATS = (
    "SurgWound images are mostly not C-section scars: results may not transfer to the maternal-health "
    "population this is meant for.",
    "The images are social-media photos (varied cameras, lighting, framing and selection), not a "
    "prospective clinical sample.",
    "Research use only. Not a medical device; the scores are not a diagnosis.",
    "The intervals cover the sampling of test images only: training randomness (seed, early "
    "stopping) is not included, and each method was trained once.",
    "Thresholds are chosen on the validation split, which is small; their operating points on test "
    "are therefore themselves uncertain.",
)


class ReportError(WoundscoreError):
    """The comparison cannot run as asked (no test rows, bad predictions, clashing names, ...)."""


# ---------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------


@dataclass
class MethodRun:
    """One method's test-split scores and what it cost.

    P_test: (n_test, 6) probabilities aligned with the cache's test rows.
    thresholds: label -> {operating point name: threshold}, chosen on validation ({} when none).
    """

    name: str
    description: str
    origin: str
    P_test: np.ndarray
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold_rule: str = "0.5 only"
    cost: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    notice: str | None = None


@dataclass
class ComparisonResult:
    """Where the report went, and its content as data."""

    out_dir: Path
    files: dict[str, Path]
    metrics: dict[str, Any]
    seconds: float


class _PeakRSS:
    """Peak resident memory of this process while a block runs (sampled every 5 ms, Linux /proc).

    Reports the increase over the RSS at entry, in MiB: what training added, not what the process
    (Python, torch, Keras) already held. Falls back to None where /proc is unavailable.
    """

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.base = self.peak = None
        self._stop = threading.Event()

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            r = self._rss()
            if r is not None and (self.peak is None or r > self.peak):
                self.peak = r

    def __enter__(self) -> "_PeakRSS":
        self.base = self.peak = self._rss()
        if self.base is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.base is not None:
            self._stop.set()
            self._thread.join()
            r = self._rss()
            if r is not None and r > (self.peak or 0):
                self.peak = r

    @property
    def increase_mb(self) -> float | None:
        if self.base is None or self.peak is None:
            return None
        return round((self.peak - self.base) / 2**20, 1)


def _count_params(est: Any) -> int | None:
    """Trainable parameters of a fitted estimator, whatever its inside (Keras model or coefficients)."""
    for attr in ("n_trainable_params_", "trainable_params_", "n_params_"):
        v = getattr(est, attr, None)
        if isinstance(v, (int, np.integer)):
            return int(v)
    for attr in dir(est):
        if not attr.endswith("_") or attr.startswith("__"):
            continue
        v = getattr(est, attr, None)
        weights = getattr(v, "trainable_weights", None)
        if weights is not None and not isinstance(v, type):
            return int(sum(int(np.prod(w.shape)) for w in weights))
    total, found = 0, False
    for attr in ("coef_", "intercept_"):
        v = getattr(est, attr, None)
        if v is not None:
            total += int(np.asarray(v).size)
            found = True
    if found:
        return total
    subs = getattr(est, "estimators_", None)
    if subs:
        counts = [_count_params(s) for s in subs if s is not None]
        if counts and all(c is not None for c in counts):
            return int(sum(counts))
    return None


def _normalise_thresholds(raw: Mapping[str, Any], label_names: Sequence[str]) -> tuple[dict[str, dict[str, float]], str]:
    """``classify.thresholds.choose_thresholds`` output -> (label -> {rule: threshold}, rule summary).

    Keeps, per label, the threshold that ``predict`` applies (``applied`` / ``value``), named by
    its rule (e.g. ``youden``, ``sensitivity>=0.90``; ``0.5`` when validation had one class).
    """
    table = raw.get("labels", {})
    out: dict[str, dict[str, float]] = {}
    rules: dict[str, list[str]] = {}
    for label in label_names:
        entry = table.get(label)
        if not isinstance(entry, Mapping) or entry.get("value") is None:
            continue
        rule = str(entry.get("applied") or "val-chosen")
        out[label] = {rule: float(entry["value"])}
        rules.setdefault(rule, []).append(label)
    summary = "; ".join(f"{r} for {', '.join(labs)}" for r, labs in rules.items()) or "0.5 only"
    return out, summary


def _choose_thresholds(Y_val: np.ndarray, P_val: np.ndarray, label_names: Sequence[str]):
    from woundscore.classify.thresholds import choose_thresholds

    return _normalise_thresholds(choose_thresholds(Y_val, P_val, label_names=label_names), label_names)


def _device_of_torch() -> str:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return f"cuda ({torch.cuda.get_device_name(0)})"
    return "cpu"


def _train_method(
    name: str,
    make: Callable[[], Any],
    data: EmbeddingSet,
    label_names: Sequence[str],
    description: str,
    device: Callable[[], str],
) -> MethodRun:
    train, val, test = data.subset("train"), data.subset("val"), data.subset("test")
    t0 = time.perf_counter()
    est = make()
    import_s = time.perf_counter() - t0
    with _PeakRSS() as mem:
        t0 = time.perf_counter()
        est.fit(train.X, train.Y, X_val=val.X, Y_val=val.Y)
        train_s = time.perf_counter() - t0
    P_val = np.asarray(est.predict_proba(val.X), dtype=np.float64)
    t0 = time.perf_counter()
    P_test = np.asarray(est.predict_proba(test.X), dtype=np.float64)
    infer_s = time.perf_counter() - t0
    thresholds, rule = _choose_thresholds(val.Y, P_val, label_names)
    cost = {
        "train_seconds": round(train_s, 3),
        "import_seconds": round(import_s, 3),  # one-time library import, not in train_seconds
        "peak_memory_mb": mem.increase_mb,
        "memory_kind": "process RSS increase while training (sampled)",
        "trainable_params": _count_params(est),
        "device": device(),
        "inference_ms_per_image": round(1000.0 * infer_s / max(len(test), 1), 4),
    }
    return MethodRun(
        name=name,
        description=description,
        origin=f"trained here: {len(train)} train rows, early stopping / thresholds on {len(val)} val rows",
        P_test=P_test,
        thresholds=thresholds,
        threshold_rule=f"chosen on {len(val)} val rows: {rule}",
        cost=cost,
    )


def _external_method(
    name: str, path: Path, test: EmbeddingSet, val: EmbeddingSet, label_names: Sequence[str], description: str
) -> MethodRun:
    ids, P = read_predictions(path)
    index = {str(i): k for k, i in enumerate(ids)}
    test_ids = [str(i) for i in test.ids]
    missing = [i for i in test_ids if i not in index]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:10]) + (", ..." if len(missing) > 10 else "")
        raise ReportError(
            f"{path}: predictions for method {name!r} lack {len(missing)} of the cache's "
            f"{len(test_ids)} test image id(s): {shown}"
        )
    meta = read_predictions_meta(path) or {}
    P_test = P[[index[i] for i in test_ids]]
    val_ids = [str(i) for i in val.ids]
    thresholds: dict[str, dict[str, float]] = {}
    rule = "0.5 only (the file has no predictions for the val split, so no val-chosen threshold)"
    if val_ids and all(i in index for i in val_ids):
        thresholds, r = _choose_thresholds(val.Y, P[[index[i] for i in val_ids]], label_names)
        rule = f"chosen on {len(val_ids)} val rows of the file: {r}"
    cost = {k: meta.get(k) for k in (
        "train_seconds", "peak_memory_mb", "memory_kind", "trainable_params", "total_params",
        "device", "inference_ms_per_image",
    )}
    notes = [str(meta["notes"])] if meta.get("notes") else []
    if not meta:
        notes.append(f"no sidecar {path.with_suffix('.json').name}: cost not reported")
    extra = len(ids) - len(test_ids) - (len(val_ids) if thresholds else 0)
    if extra > 0:
        notes.append(f"{extra} row(s) of the file are not in the cache's test/val splits and were ignored")
    return MethodRun(
        name=name,
        description=str(meta.get("method") or description),
        origin=str(path),
        P_test=P_test,
        thresholds=thresholds,
        threshold_rule=rule,
        cost=cost,
        notes=notes,
        notice=meta.get("notice") or None,
    )


def _zero_shot_method(
    source: str | os.PathLike, model: str | os.PathLike, test: EmbeddingSet, val: EmbeddingSet,
    label_names: Sequence[str], quiet: bool,
) -> MethodRun:
    from woundscore.compare.zeroshot import zero_shot_source

    ids = [str(i) for i in val.ids] + [str(i) for i in test.ids]
    with _PeakRSS() as mem:
        res = zero_shot_source(source, model, ids=ids, quiet=quiet)
    index = {str(i): k for k, i in enumerate(res.ids)}
    missing = [i for i in map(str, test.ids) if i not in index]
    if missing:
        raise ReportError(
            f"{len(missing)} test image(s) could not be scored zero-shot, e.g. {missing[0]!r}: "
            + "; ".join(f"{s['image_id']}: {s['reason']}" for s in res.skipped[:3])
        )
    P_test = res.P[[index[i] for i in map(str, test.ids)]]
    thresholds, rule = {}, "0.5 only (some val images could not be scored)"
    if len(val) and all(str(i) in index for i in val.ids):
        thresholds, r = _choose_thresholds(val.Y, res.P[[index[str(i)] for i in val.ids]], label_names)
        rule = f"chosen on {len(val)} val rows: {r}"
    meta = dict(res.meta)
    cost = {k: meta.get(k) for k in ("train_seconds", "trainable_params", "total_params", "device", "inference_ms_per_image")}
    cost["peak_memory_mb"] = mem.increase_mb
    cost["memory_kind"] = "process RSS increase while loading and scoring (sampled)"
    return MethodRun(
        name=ZERO_SHOT,
        description=str(meta.get("method") or "zero-shot MedSigLIP"),
        origin=f"{model} on images of {source}",
        P_test=P_test,
        thresholds=thresholds,
        threshold_rule=rule,
        cost=cost,
        notes=[str(meta["notes"])] if meta.get("notes") else [],
        notice=meta.get("notice") or None,
    )


def _make_probe(seed: int, params: Mapping[str, Any] | None) -> Callable[[], Any]:
    def make():
        import sklearn.linear_model  # noqa: F401  (imported before the clock starts: train time is training)

        from woundscore.classify.models import LogisticProbe

        return LogisticProbe(**{"seed": seed, **(params or {})})

    return make


def _make_mlp(seed: int, params: Mapping[str, Any] | None) -> Callable[[], Any]:
    def make():
        from woundscore.classify.models import KerasMLPClassifier

        try:  # Keras (seconds to import) before the clock starts: train time is training
            from woundscore.classify._keras import import_keras
        except ImportError:
            pass
        else:
            import_keras()
        return KerasMLPClassifier(**{"seed": seed, **(params or {})})

    return make


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


def _load_cache(cache: str | os.PathLike | EmbeddingSet) -> tuple[EmbeddingSet, str]:
    if isinstance(cache, EmbeddingSet):
        return cache, "<in-memory EmbeddingSet>"
    from woundscore.cache.store import read_cache

    return read_cache(cache), str(cache)


def _check_names(predictions: Mapping[str, Any], finetune_dir: Any) -> None:
    for name in predictions:
        if not str(name).strip():
            raise ReportError("a --predictions NAME is empty; use NAME=FILE with a non-empty name")
        if name in (PROBE, MLP, ZERO_SHOT) or (name == FINETUNE and finetune_dir is not None):
            raise ReportError(
                f"method name {name!r} is taken by a built-in method; choose another NAME in NAME=FILE"
            )


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
    probe_params: Mapping[str, Any] | None = None,
    mlp_params: Mapping[str, Any] | None = None,
    quiet: bool = False,
) -> ComparisonResult:
    """Benchmark the MLP against the probe, zero-shot and external predictions; write the report.

    Args:
        cache: cache file (or an EmbeddingSet) with train / val / test rows.
        out_dir: report folder (created; report files in it are replaced).
        source, model: the image source and full SigLIP checkpoint for zero-shot (both needed;
            otherwise zero-shot is skipped with the reason in the report).
        finetune_dir: a ``wound-compare finetune`` output folder (reads its predictions.csv).
        predictions: method name -> predictions CSV (see compare.predictions), matched by image id.
        zero_shot: False skips zero-shot.
        n_boot, seed: bootstrap resamples and the seed of every random choice (training too).
        methods: which of ("probe", "mlp") to train here.
        probe_params, mlp_params: extra constructor arguments of LogisticProbe / KerasMLPClassifier.

    Raises:
        ReportError, compare.predictions.PredictionsError, cache errors. Predictions files are
        read and matched *before* any training, so a bad file costs nothing.
    """
    t_start = time.perf_counter()
    say = (lambda *a: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    predictions = dict(predictions or {})
    _check_names(predictions, finetune_dir)
    unknown = [m for m in methods if m not in (PROBE, MLP)]
    if unknown:
        raise ReportError(f"unknown method(s) to train: {', '.join(map(repr, unknown))}; choose from probe, mlp")
    if n_boot < 100:
        raise ReportError(f"--bootstrap {n_boot} is too few for a 95% interval; use at least 100")

    t0 = time.perf_counter()
    data, cache_name = _load_cache(cache)
    timing: dict[str, float] = {"load_seconds": round(time.perf_counter() - t0, 3)}
    label_names = tuple(data.label_names)
    test, val, train = data.subset("test"), data.subset("val"), data.subset("train")
    if len(test) == 0:
        raise ReportError(f"{cache_name}: no rows in the test split; nothing to compare on")
    if methods and (len(train) == 0 or len(val) == 0):
        raise ReportError(
            f"{cache_name}: training the {'/'.join(methods)} needs train and val rows; "
            f"the cache has {len(train)} train and {len(val)} val rows"
        )

    runs: dict[str, MethodRun] = {}
    skipped: dict[str, str] = {}
    external: list[tuple[str, Path, str]] = []
    if finetune_dir is not None:
        ft = Path(finetune_dir) / FINETUNE_PREDICTIONS
        if not ft.is_file():
            raise ReportError(f"{finetune_dir}: no {FINETUNE_PREDICTIONS} in the fine-tune folder")
        external.append((FINETUNE, ft, "selective-unfreeze fine-tune"))
    external += [(str(n), Path(p), "external predictions") for n, p in predictions.items()]
    for name, path, desc in external:  # read and match first: a bad file fails before any training
        say(f"reading predictions of {name} from {path}")
        runs[name] = _external_method(name, path, test, val, label_names, desc)

    if PROBE in methods:
        say(f"training the logistic probe on {len(train)} rows")
        runs[PROBE] = _train_method(
            PROBE, _make_probe(seed, probe_params), data, label_names,
            "logistic regression per label on standardised embeddings (scikit-learn)",
            lambda: "cpu (scikit-learn)",
        )
    if MLP in methods:
        say(f"training the MLP on {len(train)} rows (early stopping on {len(val)} val rows)")
        runs[MLP] = _train_method(
            MLP, _make_mlp(seed, mlp_params), data, label_names,
            "Keras MLP 512-256 on frozen embeddings, masked class-weighted BCE",
            _device_of_torch,
        )
    if zero_shot:
        if source is None or model is None:
            skipped[ZERO_SHOT] = "needs both --source (the images) and --model (a full SigLIP checkpoint with its text tower)"
        else:
            say(f"zero-shot scoring with {model}")
            try:
                runs[ZERO_SHOT] = _zero_shot_method(source, model, test, val, label_names, quiet)
            except Exception as e:  # noqa: BLE001 - any failure skips zero-shot, with the reason shown
                skipped[ZERO_SHOT] = f"{type(e).__name__}: {e}"
                say(f"zero-shot skipped: {skipped[ZERO_SHOT]}")
    else:
        skipped[ZERO_SHOT] = "not requested (--no-zero-shot)"

    # Order: the MLP first, then the fine-tune, the probe, zero-shot, other predictions.
    order = [MLP, FINETUNE, PROBE, ZERO_SHOT] + [n for n, _, _ in external if n != FINETUNE]
    runs = {n: runs[n] for n in dict.fromkeys(order) if n in runs}
    if not runs:
        raise ReportError("no method to compare: train one (probe, mlp) or pass predictions")
    first = next(iter(runs))
    comparisons = [(first, other) for other in runs if other != first]

    say(f"metrics with {n_boot} bootstrap resamples")
    t0 = time.perf_counter()
    result = M.evaluate(
        test.Y,
        {n: r.P_test for n, r in runs.items()},
        label_names=label_names,
        thresholds={n: r.thresholds for n, r in runs.items()},
        comparisons=comparisons,
        n_boot=n_boot,
        seed=seed,
    )
    metrics_s = time.perf_counter() - t0

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say(f"figures into {out}")
    t0 = time.perf_counter()
    from woundscore.compare import plots

    probs = {n: r.P_test for n, r in runs.items()}
    notice = "; ".join(_notices(data, runs)) or None
    figures = {
        "roc": plots.plot_roc(test.Y, probs, label_names, result["per_label"], out / "roc.png", notice=notice),
        "reliability": plots.plot_reliability(test.Y, probs, label_names, result["per_label"], out / "reliability.png",
                                              notice=notice),
        "forest": plots.plot_forest(result["comparisons"], label_names, out / "forest.png", notice=notice),
    }
    timing["figures_seconds"] = round(time.perf_counter() - t0, 3)

    doc_data = _report_data(
        data=data, cache_name=cache_name, runs=runs, skipped=skipped, result=result,
        label_names=label_names, n_boot=n_boot, seed=seed,
    )
    timing["metrics_seconds"] = round(metrics_s, 3)
    timing["total_seconds"] = round(time.perf_counter() - t_start, 3)  # before writing the files
    doc_data["timing"] = timing
    blocks = build_document(doc_data)
    files = {
        "report.md": out / "report.md",
        "report.html": out / "report.html",
        "metrics.json": out / "metrics.json",
        **{f"{k}.png": v for k, v in figures.items()},
    }
    atomic_write_text(files["report.md"], render_markdown(blocks))
    atomic_write_text(files["report.html"], render_html(blocks, base_dir=out))
    atomic_write_text(files["metrics.json"], json.dumps(doc_data, indent=2, allow_nan=False, default=_json_default) + "\n")
    seconds = time.perf_counter() - t_start
    say(f"wrote {files['report.md']} and {files['report.html']} in {seconds:.1f} s")
    return ComparisonResult(out_dir=out, files=files, metrics=doc_data, seconds=seconds)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (bytes, bytearray)):
        return o.decode("utf-8", "replace")
    return str(o)


# ---------------------------------------------------------------------------------------------
# Report content (data) — everything the document says, as JSON-ready values
# ---------------------------------------------------------------------------------------------


def _is_finetune(name: str) -> bool:
    low = name.lower().replace("_", "-")
    return low == FINETUNE or low.startswith(("finetune", "fine-tune"))


def _limitations(data: EmbeddingSet, label_names: Sequence[str]) -> dict[str, Any]:
    test = data.subset("test")
    per_label = {}
    for j, label in enumerate(label_names):
        y = test.Y[:, j]
        per_label[label] = {
            "n": int((y != -1).sum()),
            "positives": int((y == 1).sum()),
            "negatives": int((y == 0).sum()),
            "missing": int((y == -1).sum()),
        }
    lim: dict[str, Any] = {"n_test_images": len(test), "n_val_images": len(data.subset("val")),
                           "n_train_images": len(data.subset("train")), "labels": per_label}
    urgency = test.extras.get("urgency_level")
    if urgency is None:
        lim["red_urgency"] = None
        lim["red_urgency_reason"] = "the cache has no urgency_level extras"
    else:
        red = [str(i) for i, u in zip(test.ids, urgency) if str(u).strip().lower() == "red"]
        lim["red_urgency"] = {"count": len(red), "ids": red}
    location = test.extras.get("location")
    if location is None:
        lim["body_sites"] = None
        lim["body_sites_reason"] = "the cache has no location extras"
    else:
        counts = Counter(str(v).strip() or "not recorded" for v in location)
        lim["body_sites"] = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    return lim


def _answer(result: dict, runs: Mapping[str, MethodRun], n_test: int) -> dict[str, Any]:
    """The plain-words answer: MLP vs the fine-tune (or the best alternative present)."""
    macro = result["macro_auc"]
    if MLP not in runs:
        return {"text": "The MLP was not run, so the report cannot answer how it compares.", "alternative": None}
    others = [n for n in runs if n != MLP]
    if not others:
        e = macro[MLP]
        return {
            "alternative": None,
            "text": f"Only the MLP was scored: macro ROC AUC {_fmt_est(e)} on n={e['n']} test images. "
            "Add a probe, zero-shot or a fine-tune's predictions to compare.",
        }
    ft = [n for n in others if _is_finetune(n)]
    if ft:
        alt, why = ft[0], "the fine-tune"
    else:
        est = [n for n in others if macro[n]["value"] is not None]
        alt = max(est, key=lambda n: macro[n]["value"]) if est else others[0]
        why = "the best alternative present (no fine-tune predictions were given)"
    comp = next(c for c in result["comparisons"] if c["a"] == MLP and c["b"] == alt)
    d = comp["macro"]
    em, ea = macro[MLP], macro[alt]
    if d.get("value") is None or em["value"] is None:
        return {"alternative": alt, "text": f"Macro AUC is not estimable on this test split ({em.get('reason')})."}
    labels = em.get("labels") or []
    if d["low"] > 0:
        verdict = f"the MLP ranks these test images better than {alt}; the interval of the difference lies above zero"
    elif d["high"] < 0:
        verdict = f"{alt} ranks these test images better than the MLP; the interval of the difference lies below zero"
    else:
        verdict = (
            "the interval of the difference includes zero, so this test split cannot tell the two apart; "
            f"a true difference anywhere from {d['low']:+.3f} to {d['high']:+.3f} is consistent with these images"
        )
    per = comp["per_label"]
    clear = [lab for lab, x in per.items() if x.get("value") is not None and (x["low"] > 0 or x["high"] < 0)]
    mlp_text = _fmt_ci(em, f"n={em['n']} images; mean over {len(labels)} estimable labels")
    alt_text = _fmt_ci(ea, f"n={ea['n']}")
    delta_text = _fmt_ci(d, f"n={d['n']}; the same resampled images for both", signed=True)
    text = (
        f"On the same {n_test} test images, the cheap MLP on frozen embeddings reaches a macro ROC AUC of "
        f"{mlp_text}, against {alt_text} for {alt}, {why}. The paired difference MLP - {alt} is "
        f"{delta_text}: {verdict}. "
        + (
            f"Per label, the difference's interval excludes zero for {len(clear)} of {len(per)} labels"
            + (f" ({', '.join(clear)})." if clear else ".")
        )
    )
    return {"alternative": alt, "alternative_is_finetune": bool(ft), "macro_delta": d, "text": text,
            "labels_with_clear_difference": clear}


def _notices(data: EmbeddingSet, runs: Mapping[str, MethodRun]) -> list[str]:
    """The cache's notice, then each method's (demo data, random weights ...), without repeats."""
    notices = []
    prov_notice = (data.provenance or {}).get("notice")
    if prov_notice:
        notices.append(str(prov_notice))
    for r in runs.values():
        if r.notice and str(r.notice) not in notices:
            notices.append(str(r.notice))
    return notices


def _report_data(
    *, data: EmbeddingSet, cache_name: str, runs: Mapping[str, MethodRun], skipped: Mapping[str, str],
    result: dict, label_names: Sequence[str], n_boot: int, seed: int,
) -> dict[str, Any]:
    notices = _notices(data, runs)
    test = data.subset("test")
    prov = dict(data.provenance or {})
    prov.pop("label_schema", None)  # long; the schema is in the cache itself
    return {
        "schema_version": METRICS_SCHEMA_VERSION,
        "notice": notices or None,
        "question": "On the same test images, how does the cheap MLP compare with the fine-tune "
        "(or the best alternative present), and how sure are we?",
        "answer": _answer(result, runs, len(test)),
        "cache": {"path": cache_name, "rows": len(data), "provenance": prov},
        "label_names": list(label_names),
        "methods": {
            n: {
                "description": r.description,
                "origin": r.origin,
                "threshold_rule": r.threshold_rule,
                "thresholds": r.thresholds,
                "cost": r.cost,
                "notes": r.notes,
            }
            for n, r in runs.items()
        },
        "skipped": dict(skipped),
        "metrics": result,
        "external_reference": EXTERNAL_REFERENCE,
        "pooling_note": POOLING_NOTE,
        "limitations": {**_limitations(data, label_names), "caveats": list(FIXED_CAVEATS)},
        "settings": {"n_boot": int(n_boot), "seed": int(seed)},
        "figures": {"roc": "roc.png", "reliability": "reliability.png", "forest": "forest.png"},
    }


# ---------------------------------------------------------------------------------------------
# Document: blocks -> Markdown / HTML
# ---------------------------------------------------------------------------------------------

NOT_ESTIMABLE = "not estimable"


def _fmt_est(e: Mapping[str, Any], *, signed: bool = False, digits: int = 3) -> str:
    """'0.718 (0.620 to 0.810)'; 'not estimable (reason)' when value is None."""
    if e.get("value") is None:
        reason = str(e.get("reason") or "").replace("not estimable: ", "")
        return f"{NOT_ESTIMABLE} ({reason})" if reason else NOT_ESTIMABLE
    f = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    if e.get("low") is None:
        return f.format(e["value"]) + " (no interval)"
    return f"{f.format(e['value'])} ({f.format(e['low'])} to {f.format(e['high'])})"


def _fmt_ci(e: Mapping[str, Any], n_text: str, *, signed: bool = False) -> str:
    """'0.833 (95% CI 0.802 to 0.862, n=137 images)' for prose."""
    f = "{:+.3f}" if signed else "{:.3f}"
    if e.get("low") is None:  # e.g. every macro resample lost a class of some label
        return f"{f.format(e['value'])} (no interval: no usable resample, {n_text})"
    return f"{f.format(e['value'])} (95% CI {f.format(e['low'])} to {f.format(e['high'])}, {n_text})"


def _fmt_cost(v: Any, unit: str = "", digits: int = 1) -> str:
    if v is None:
        return "not reported"
    if isinstance(v, float):
        return f"{v:.{digits}f}{unit}"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}{unit}"
    return f"{v}{unit}"


def build_document(d: Mapping[str, Any]) -> list[tuple]:
    """The report as blocks: ("banner"|"h1"|"h2"|"p"|"list"|"table"|"image", ...). All text is plain
    (no markup); renderers escape it."""
    labels = d["label_names"]
    res = d["metrics"]
    methods = list(d["methods"])
    lim = d["limitations"]
    b: list[tuple] = [("h1", "woundscore: MLP vs probe, zero-shot and fine-tune on the same test images")]
    for notice in d["notice"] or []:
        b.append(("banner", f"NOTICE: {notice}"))
    b.append(("banner", "Research use only. Not a medical device. The scores are not a diagnosis."))

    b.append(("h2", "The answer"))
    b.append(("p", d["question"]))
    b.append(("p", d["answer"]["text"]))
    cost_bits = []
    for n in methods:
        c = d["methods"][n]["cost"]
        if c.get("train_seconds") is not None:
            cost_bits.append(f"{n} {_fmt_cost(c['train_seconds'], ' s')} on {c.get('device') or 'an unreported device'}")
    if cost_bits:
        b.append(("p", "Training cost (single measurements, details in the cost table): " + "; ".join(cost_bits) + "."))
    b.append(("p", "Read the intervals, not the points: every estimate below is followed by its 95% "
                   "confidence interval in parentheses and sits in a row that gives its n."))

    b.append(("h2", "Context: the nearest public result (external, not recomputed)"))
    ext = d["external_reference"]
    b.append(("p", f"{ext['what'].capitalize()}: macro ROC AUC {ext['macro_auc']:.3f}, "
                   f"{ext['train_time']}; {ext['status']}. Per label, as published (n = "
                   f"{ext['n_test_images']} test images; point estimates only):"))
    b.append(("table", ["label", "published AUC (external, point only)"],
              [[lab, f"{ext['per_label_auc'][lab]:.3f}"] for lab in labels if lab in ext["per_label_auc"]]))
    b.append(("p", "With 16 urgency positives in the public test split, an AUC's 95% interval there is "
                   "about ±0.13: differences of a few hundredths between these points and ours mean little."))

    b.append(("h2", "Methods"))
    items = []
    for n in methods:
        m = d["methods"][n]
        text = f"{n}: {m['description']}. Source: {m['origin']}. Thresholds: {m['threshold_rule']}."
        if m["notes"]:
            text += " Notes: " + "; ".join(m["notes"]) + "."
        items.append(text)
    for n, why in d["skipped"].items():
        items.append(f"{n}: skipped, {why}.")
    b.append(("list", items))
    b.append(("p", "Fine-tune pooling: " + d["pooling_note"]))

    macro = res["macro_auc"]
    b.append(("h2", "Macro ROC AUC"))
    b.append(("p", "Mean of the per-label AUCs over the labels estimable on the test split; interval: "
                   "bootstrap over images (resamples in which an averaged label lost a class are dropped; "
                   "the count used is shown)."))
    b.append(("table", ["method", "n", "labels averaged", "macro AUC (95% CI)", "resamples used"],
              [[n, str(macro[n]["n"]), str(len(macro[n].get("labels") or [])), _fmt_est(macro[n]),
                str(macro[n].get("n_resamples", 0))] for n in methods]))
    n_boot = res["bootstrap"]["n_resamples"]
    thin = [n for n in methods if macro[n]["value"] is not None and macro[n].get("n_resamples", 0) < n_boot / 2]
    if thin:
        b.append(("p", "Rough intervals: the macro interval of " + ", ".join(thin) + " rests on fewer than half "
                       f"of the {n_boot} resamples (labels with very few positives often lose them all in a "
                       "resample); read it as a rough range."))

    b.append(("h2", "Discrimination per label"))
    rows = []
    for lab in labels:
        for n in methods:
            r = res["per_label"][lab][n]
            rows.append([lab, n, str(r["n"]), str(r["positives"]), _fmt_est(r["auc"]), _fmt_est(r["ap"])])
    b.append(("table", ["label", "method", "n", "positives", "ROC AUC (95% CI)", "average precision (95% CI)"], rows))

    b.append(("h2", "Paired differences (ΔAUC)"))
    b.append(("p", "A - B on the same resampled test images (stratified per label; images for the macro); "
                   "an interval that excludes 0 means the test split tells the two apart."))
    rows = []
    for c in res["comparisons"]:
        name = f"{c['a']} - {c['b']}"
        for lab in labels:
            x = c["per_label"][lab]
            r = res["per_label"][lab][c["a"]]
            rows.append([name, lab, str(x["n"]), str(r["positives"]), _fmt_est(x, signed=True)])
        x = c["macro"]
        rows.append([name, f"macro ({len(x.get('labels') or [])} labels)", str(x["n"]), "-", _fmt_est(x, signed=True)])
    if rows:
        b.append(("table", ["comparison", "label", "n", "positives", "ΔAUC (95% CI)"], rows))
    else:
        b.append(("p", "Only one method was scored: nothing to compare."))
    b.append(("image", "forest.png", "Forest plot of paired ΔAUC with 95% CIs"))

    b.append(("h2", "Operating points"))
    b.append(("p", "Sensitivity and specificity at 0.5 and at the threshold chosen on the validation "
                   "split (rule in Methods); intervals: Wilson score. Sensitivity rests on the positives, "
                   "specificity on the negatives."))
    rows = []
    for lab in labels:
        for n in methods:
            r = res["per_label"][lab][n]
            for point, op in r["operating_points"].items():
                rows.append([lab, n, point, f"{op['threshold']:.3f}", str(r["n"]), str(r["positives"]),
                             _fmt_est(op["sensitivity"]), str(r["negatives"]), _fmt_est(op["specificity"])])
    b.append(("table", ["label", "method", "operating point", "threshold", "n", "positives",
                        "sensitivity (95% CI)", "negatives", "specificity (95% CI)"], rows))

    b.append(("h2", "Calibration"))
    b.append(("p", f"Brier score (lower is better) and expected calibration error "
                   f"({res['bootstrap']['ece_bins']} equal-width bins); intervals: stratified bootstrap."))
    rows = []
    for lab in labels:
        for n in methods:
            r = res["per_label"][lab][n]
            rows.append([lab, n, str(r["n"]), str(r["positives"]), _fmt_est(r["brier"]), _fmt_est(r["ece"])])
    b.append(("table", ["label", "method", "n", "positives", "Brier (95% CI)", "ECE (95% CI)"], rows))
    b.append(("image", "roc.png", "ROC curves per label, all methods"))
    b.append(("image", "reliability.png", "Reliability diagrams per label, all methods"))

    b.append(("h2", "Cost"))
    b.append(("p", "Single measurements on the machine that ran each method (not statistical estimates, "
                   "so no interval). Predictions files report their own cost in a sidecar JSON."))
    rows = []
    for n in methods:
        c = d["methods"][n]["cost"]
        mem = _fmt_cost(c.get("peak_memory_mb"), " MiB")
        if c.get("peak_memory_mb") is not None and c.get("memory_kind"):
            mem += f" ({c['memory_kind']})"
        rows.append([n, _fmt_cost(c.get("device")), _fmt_cost(c.get("train_seconds"), " s"), mem,
                     _fmt_cost(c.get("trainable_params")), _fmt_cost(c.get("inference_ms_per_image"), " ms", 3)])
    b.append(("table", ["method", "device", "train time", "peak memory", "trainable parameters",
                        "inference per image"], rows))

    b.append(("h2", "Limitations"))
    b.append(("p", f"Test split: {lim['n_test_images']} images ({lim['n_train_images']} train, "
                   f"{lim['n_val_images']} val). Observed labels per label in test:"))
    b.append(("table", ["label", "n", "positives", "negatives", "missing (masked)"],
              [[lab, str(x["n"]), str(x["positives"]), str(x["negatives"]), str(x["missing"])]
               for lab, x in lim["labels"].items()]))
    red = lim.get("red_urgency")
    if red is None:
        b.append(("p", f"Red (emergency) urgency cases in test: unknown ({lim.get('red_urgency_reason')})."))
    else:
        ids = red["ids"]
        shown = ", ".join(ids[:20]) + (", ..." if len(ids) > 20 else "")
        b.append(("p", f"Red (emergency) urgency cases in test: {red['count']}"
                       + (f" (image ids: {shown})" if ids else "") + ". Few Red cases mean the urgency "
                       "metrics say little about the cases that matter most."))
    sites = lim.get("body_sites")
    if sites is None:
        b.append(("p", f"Body sites in test: unknown ({lim.get('body_sites_reason')})."))
    else:
        b.append(("p", "Body sites in test: " + ", ".join(f"{k} {v}" for k, v in sites.items()) + "."))
    lacking = [lab for lab, x in lim["labels"].items() if M.one_class_reason(x["n"], x["positives"])]
    if lacking:
        b.append(("p", "Not estimable on this test split (one class only): " + ", ".join(lacking) + "."))
    b.append(("list", list(lim["caveats"])))

    b.append(("h2", "How the numbers were computed"))
    boot = res["bootstrap"]
    b.append(("list", [
        f"{boot['n_resamples']} bootstrap resamples, seed {boot['seed']}, 95% percentile intervals.",
        f"Per label: {boot['per_label']}. Macro: {boot['macro']}. Paired differences: {boot['paired']}.",
        f"Sensitivity and specificity: {boot['sensitivity_specificity']}.",
        f"Calibration: {boot['ece_note']}.",
        "Unsure or missing labels (-1) are masked per label, never guessed; n counts observed labels.",
        "A label whose test split holds one class only is reported as not estimable, never as 0.",
    ]))
    prov = d["cache"]["provenance"]
    b.append(("p", f"Cache: {d['cache']['path']} ({d['cache']['rows']} rows); encoder "
                   f"{prov.get('encoder_id', 'unknown')} (revision {prov.get('encoder_revision', 'unknown')}), "
                   f"created {prov.get('created', 'unknown')}. Report written in "
                   f"{d.get('timing', {}).get('total_seconds', 0) or 0:.1f} s."))
    return b


_MD_SPECIAL = re.compile(r"([\\`*\[\]<>|#])")


def _md(text: object) -> str:
    """Plain text for Markdown: specials backslash-escaped (so '<script>' shows as text), one line."""
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def render_markdown(blocks: Sequence[tuple]) -> str:
    """Blocks -> Markdown (GitHub flavour)."""
    out: list[str] = []
    for blk in blocks:
        kind = blk[0]
        if kind == "h1":
            out.append(f"# {_md(blk[1])}")
        elif kind == "h2":
            out.append(f"## {_md(blk[1])}")
        elif kind == "banner":
            out.append(f"> **{_md(blk[1])}**")
        elif kind == "p":
            out.append(_md(blk[1]))
        elif kind == "list":
            out.append("\n".join(f"- {_md(x)}" for x in blk[1]))
        elif kind == "table":
            header, rows = blk[1], blk[2]
            lines = ["| " + " | ".join(_md(h) for h in header) + " |",
                     "|" + "|".join("---" for _ in header) + "|"]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "image":
            out.append(f"![{_md(blk[2])}]({blk[1]})")
        else:
            raise ValueError(f"unknown block {kind!r}")
    return "\n\n".join(out) + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}
th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}
.banner{background:#fff3cd;border:1px solid #e0b84c;padding:.7em 1em;margin:.6em 0;font-weight:600}
figure{margin:1em 0}figure img{max-width:100%;border:1px solid #ddd}figcaption{font-size:.9em;color:#555}
"""


def render_html(blocks: Sequence[tuple], *, base_dir: str | os.PathLike) -> str:
    """Blocks -> one self-contained HTML page (figures inlined as base64 PNG, no scripts)."""
    e = lambda s: html.escape(str(s), quote=True)  # noqa: E731
    title = next((blk[1] for blk in blocks if blk[0] == "h1"), "woundscore report")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; style-src \'unsafe-inline\'">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
    ]
    for blk in blocks:
        kind = blk[0]
        if kind in ("h1", "h2"):
            parts.append(f"<{kind}>{e(blk[1])}</{kind}>")
        elif kind == "banner":
            parts.append(f'<div class="banner" role="alert">{e(blk[1])}</div>')
        elif kind == "p":
            parts.append(f"<p>{e(blk[1])}</p>")
        elif kind == "list":
            parts.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in blk[1]) + "</ul>")
        elif kind == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in blk[1])
            body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in blk[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "image":
            data = base64.b64encode((Path(base_dir) / blk[1]).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{e(blk[2])}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{e(blk[2])}</figcaption></figure>")
        else:
            raise ValueError(f"unknown block {kind!r}")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


__all__ = [
    "ComparisonResult",
    "EXTERNAL_REFERENCE",
    "FIXED_CAVEATS",
    "MethodRun",
    "POOLING_NOTE",
    "ReportError",
    "build_document",
    "render_html",
    "render_markdown",
    "run_comparison",
]
