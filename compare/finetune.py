"""Selective-unfreeze fine-tune of MedSigLIP (the seed's plan), run by ``wound-compare finetune``.

Plan: ``AutoModelForImageClassification`` from the encoder checkpoint with 6 labels
(``problem_type="multi_label_classification"``, id2label from ``cache.schema.LABEL_NAMES``);
freeze everything, unfreeze the last N encoder blocks + post_layernorm (+ the attention-pooling
head with ``pooling="attention"``) + the classifier (see :mod:`compare.prefix`); train with the
Hugging Face ``Trainer`` and the seed's arguments (5 epochs, batch 4 x accumulation 16, lr 5e-5,
weight decay 0.01, 10 warmup steps, cosine schedule, eval + save each epoch, best by validation
macro AUC, TensorBoard logs) and the ONE masked, pos_weighted BCE of ``classify.loss`` as the
Trainer's ``compute_loss_func``. Images go through the same ``embed.preprocess`` function as the
embeddings, so train and inference see identical pixels.

Outputs in ``out_dir``:

- ``predictions.csv`` (+ ``predictions.json`` cost sidecar): test-split probabilities for the
  report, then the val split's (the report chooses the fine-tune's thresholds on them)
- ``model/``: the best model (``save_pretrained`` of the ``SiglipForImageClassification``) and its
  model card ``README.md`` with the metrics
- ``trainer/``: Trainer checkpoints (trainable weights only) and TensorBoard logs (``trainer/runs``)

Mixed precision: ``dtype="auto"`` is bfloat16 autocast on GPUs that support it, float16 (with the
Trainer's loss scaling) on T4-class GPUs, float32 on CPU. A non-finite loss is skipped with a
warning; ``max_nonfinite`` of them in a row stop the run with :class:`NonFiniteLossError`.
"""

from __future__ import annotations

import json
import math
import os
import platform
import resource
import shutil
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, MISSING, SCHEMA
from woundscore.cache.schema import pos_weight as schema_pos_weight
from woundscore.compare.prefix import POOLINGS, quiet_transformers
from woundscore.compare.prefix import StepTiming, medsiglip_vision_config, step_time  # noqa: F401  (bench/ imports them here)

DEFAULT_MODEL = "google/medsiglip-448"
DTYPES = ("auto", "float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda")

#: The seed's Trainer arguments (the defaults of :func:`finetune` and of the CLI).
SEED_ARGS: dict[str, Any] = {
    "epochs": 5,
    "batch_size": 4,
    "grad_accum": 16,
    "lr": 5e-5,
    "weight_decay": 0.01,
    "warmup_steps": 10,
    "lr_scheduler_type": "cosine",
}


class FineTuneError(WoundscoreError):
    """The fine-tune cannot run: bad source splits, model not loadable, bad settings."""


class NonFiniteLossError(FineTuneError):
    """The loss stayed NaN/inf: the run stopped rather than train on garbage."""


# ---------------------------------------------------------------------------------------------
# Loss (the shared classify implementation, scaled for gradient accumulation)


#: Label value of a missing entry in the Trainer's batches: the Trainer counts entries != -100 as
#: ``num_items_in_batch``, so with -100 for missing it counts exactly the observed entries.
IGNORE_INDEX = -100


class MaskedBCELossFunc:
    """``Trainer(compute_loss_func=...)``: ``classify.loss.masked_bce`` on the model's logits.

    Batches carry missing labels as -100 (:data:`IGNORE_INDEX`); they are mapped back to the
    schema's -1 before ``masked_bce`` (the one implementation, mean over observed entries).

    Gradient accumulation: the Trainer does not divide a ``compute_loss_func`` loss by the
    accumulation steps; it passes ``num_items_in_batch``, the observed entries of the whole
    accumulated batch. Scaling each micro-batch's masked mean by ``observed_here /
    num_items_in_batch`` makes the accumulated loss (and gradient) exactly the masked mean over the
    whole accumulated batch, whatever the split into micro-batches. Evaluation (no
    ``num_items_in_batch``) gets the plain masked mean.

    NaN guard: a non-finite loss is counted, and ``max_nonfinite`` in a row raise
    :class:`NonFiniteLossError`. Below that, in float32/bfloat16 the batch is skipped (a zero loss
    with no gradient: it adds nothing and AdamW leaves gradient-less weights alone); under float16
    (``scaler_skips=True``) the loss is passed on so that the Trainer's GradScaler sees inf/NaN
    gradients and skips the optimizer step, as it is built to (a zero with no gradients at all
    would trip its "no inf checks were recorded" assertion).
    """

    def __init__(
        self,
        pos_weight: np.ndarray,
        *,
        max_nonfinite: int = 3,
        scaler_skips: bool = False,
        loss_fn: Callable | None = None,
    ) -> None:
        self.pos_weight = np.asarray(pos_weight, dtype=np.float32)
        self.max_nonfinite = max_nonfinite
        self.scaler_skips = scaler_skips
        self.loss_fn = loss_fn
        self.nonfinite_total = 0
        self.nonfinite_run = 0
        self._pw_cache: dict[Any, Any] = {}

    def _masked_bce(self) -> Callable:
        if self.loss_fn is None:
            from woundscore.classify.loss import masked_bce  # the one implementation (keras.ops, torch backend)

            self.loss_fn = masked_bce
        return self.loss_fn

    def __call__(self, outputs: Any, labels: Any, num_items_in_batch: Any = None) -> Any:
        import torch

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        logits = logits.float()  # BCE in float32 also under bf16/fp16 autocast
        key = (logits.device, logits.dtype)
        if key not in self._pw_cache:
            self._pw_cache[key] = torch.as_tensor(self.pos_weight, device=logits.device, dtype=logits.dtype)
        y = labels.to(device=logits.device, dtype=logits.dtype)
        y = torch.where(y == IGNORE_INDEX, torch.full_like(y, float(MISSING)), y)
        loss = self._masked_bce()(y, logits, self._pw_cache[key])
        if not isinstance(loss, torch.Tensor):
            loss = torch.as_tensor(loss)
        loss = loss.to(logits.device)
        if num_items_in_batch is not None:
            total = float(num_items_in_batch.item() if hasattr(num_items_in_batch, "item") else num_items_in_batch)
            if total > 0:
                loss = loss * ((y != MISSING).sum().float() / total)
        if not bool(torch.isfinite(loss)):
            self.nonfinite_total += 1
            self.nonfinite_run += 1
            if self.nonfinite_run >= self.max_nonfinite:
                raise NonFiniteLossError(
                    f"the loss was NaN/inf in {self.nonfinite_run} batches in a row "
                    f"({self.nonfinite_total} in all); stopped. Try --dtype float32 "
                    "(float16 overflows most often) or a lower --lr"
                )
            warnings.warn(
                f"non-finite loss in a training batch ({self.nonfinite_total} so far); "
                f"{'the float16 loss scaler skips this step' if self.scaler_skips else 'batch skipped'}",
                RuntimeWarning,
                stacklevel=2,
            )
            if self.scaler_skips:
                return loss
            # A zero with no path to the weights: backward adds nothing for this batch.
            return torch.zeros((), device=logits.device, dtype=logits.dtype, requires_grad=True)
        self.nonfinite_run = 0
        return loss


# ---------------------------------------------------------------------------------------------
# Metrics


def masked_auc(Y: np.ndarray, P: np.ndarray) -> dict[str, Any]:
    """Per-label ROC AUC over observed (!= -1) entries; labels with one class are not estimable.

    Args:
        Y: (n, 6) int labels 1 / 0 / -1.  P: (n, 6) scores (probabilities or logits).

    Returns:
        {"per_label": {name: {"auc": float | None, "n": int, "positives": int}},
         "macro_auc": mean of the estimable AUCs or None, "n_estimable": int}
    """
    from sklearn.metrics import roc_auc_score

    Y = np.asarray(Y)
    P = np.asarray(P, dtype=np.float64)
    per: dict[str, dict[str, Any]] = {}
    aucs = []
    for j, name in enumerate(LABEL_NAMES):
        m = Y[:, j] != MISSING
        y = Y[m, j]
        n, pos = int(m.sum()), int((y == 1).sum())
        auc = None
        if 0 < pos < n:
            auc = float(roc_auc_score(y, P[m, j]))
            aucs.append(auc)
        per[name] = {"auc": auc, "n": n, "positives": pos}
    return {
        "per_label": per,
        "macro_auc": float(np.mean(aucs)) if aucs else None,
        "n_estimable": len(aucs),
    }


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """``Trainer(compute_metrics=...)``: validation macro AUC (checkpoint selection) and per-label AUCs.

    A label with one class in val is left out of the macro; when none is estimable the macro is
    0.5 (chance), so that the best-checkpoint comparison never sees NaN.
    """
    logits, labels = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    Y = np.asarray(labels).round().astype(np.int64)
    Y[Y == IGNORE_INDEX] = MISSING
    res = masked_auc(Y, np.asarray(logits))
    out = {"macro_auc": res["macro_auc"] if res["macro_auc"] is not None else 0.5}
    out["n_estimable_labels"] = float(res["n_estimable"])
    for name, d in res["per_label"].items():
        if d["auc"] is not None:
            out[f"auc_{name}"] = d["auc"]
    return out


# ---------------------------------------------------------------------------------------------
# Data


def _trainer_labels(labels: np.ndarray) -> Any:
    """Schema labels (1 / 0 / -1) -> float32 tensor with -100 for missing (see IGNORE_INDEX)."""
    import torch

    y = np.asarray(labels, dtype=np.float32)
    return torch.as_tensor(np.where(y == MISSING, float(IGNORE_INDEX), y))


class PixelDataset:
    """torch Dataset over samples: ``read_bytes`` -> ``embed.preprocess`` (decode_image -> preprocess).

    Items are {"pixel_values": (3, H, W) float32, "labels": (6,) float32, -100 for missing}; with
    ``safe=True`` a read/decode failure gives {"error": "<origin>: <reason>"} instead of raising.
    """

    def __init__(self, samples: Sequence[Any], spec: Any, *, safe: bool = False) -> None:
        self.samples = list(samples)
        self.spec = spec
        self.safe = safe

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        import torch

        from woundscore.embed.preprocess import preprocess_bytes  # decode_image + preprocess, as embed runs them

        s = self.samples[i]
        try:
            pixels = preprocess_bytes(s.read_bytes(), self.spec, origin=s.origin)
        except Exception as e:  # noqa: BLE001 - ImageReadError, ImageDecodeError, PIL errors
            if not self.safe:
                raise
            return {"index": i, "error": str(e) or type(e).__name__}
        return {
            "index": i,
            "pixel_values": pixels,
            "labels": _trainer_labels(s.labels),
        }


class PrefixDataset:
    """torch Dataset over cached prefix states: {"prefix_states": (T, D), "labels": (6,) (-100 = missing)}."""

    def __init__(self, states: Any, labels: np.ndarray) -> None:
        self.states = states
        self.labels = _trainer_labels(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"prefix_states": self.states[i], "labels": self.labels[i]}


class _Subset:
    """Items of a PixelDataset without the bookkeeping key (the Trainer passes every key to forward)."""

    def __init__(self, ds: PixelDataset, indices: Sequence[int]) -> None:
        self.ds, self.indices = ds, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = self.ds[self.indices[i]]
        item.pop("index", None)
        return item


def _collate_safe(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    good = [it for it in items if "error" not in it]
    return {
        "index": [it["index"] for it in good],
        "pixel_values": torch.stack([it["pixel_values"] for it in good]) if good else None,
        "errors": [(it["index"], it["error"]) for it in items if "error" in it],
    }


# ---------------------------------------------------------------------------------------------
# Device, dtype, model


def resolve_device_dtype(device: str = "auto", dtype: str = "auto") -> tuple[str, str]:
    """("cpu"|"cuda", "float32"|"bfloat16"|"float16"): bf16 where the GPU has it, fp16 on T4-class."""
    import torch

    if device not in DEVICES:
        raise FineTuneError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if dtype not in DTYPES:
        raise FineTuneError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise FineTuneError("--device cuda was asked for, but torch sees no CUDA GPU")
    dev = "cuda" if device == "cuda" or (device == "auto" and cuda) else "cpu"
    if dtype == "auto":
        if dev == "cuda":
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if dtype == "float16" and dev == "cpu":
        raise FineTuneError("float16 training needs a GPU; use --dtype float32 or bfloat16 on CPU")
    return dev, dtype


def load_classifier(model: str | os.PathLike, *, revision: str | None = None) -> tuple[Any, Any]:
    """``AutoModelForImageClassification`` of a SigLIP checkpoint with the six woundscore labels.

    Returns (model, ``embed.encoder.Checkpoint``); the checkpoint is found the way embed finds it
    (local folder, or hub id with the gated-model / token / offline messages of embed.encoder).
    """
    from transformers import AutoModelForImageClassification

    from woundscore.embed.encoder import EncoderLoadError, resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(str(model), revision)
    except EncoderLoadError as e:
        raise FineTuneError(str(e)) from e
    try:
        with quiet_transformers():
            if _model_type(ckpt.path) == "siglip_vision_model":
                return _classifier_from_vision_only(ckpt.path), ckpt
            net = AutoModelForImageClassification.from_pretrained(
                str(ckpt.path),
                num_labels=len(LABEL_NAMES),
                problem_type="multi_label_classification",
                id2label=dict(enumerate(LABEL_NAMES)),
                label2id={name: i for i, name in enumerate(LABEL_NAMES)},
                attn_implementation="sdpa",
                trust_remote_code=False,
            )
    except (OSError, ValueError, KeyError) as e:
        raise FineTuneError(f"cannot load {ckpt.path} as an image classifier: {str(e).splitlines()[0]}") from e
    return net, ckpt


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def _classifier_from_vision_only(folder: Path) -> Any:
    """A ``SiglipForImageClassification`` around a vision-only checkpoint (``SiglipVisionModel``).

    ``AutoModelForImageClassification`` maps only the full ``siglip`` config (MedSigLIP on the hub
    is one); a saved vision tower alone gets the same model here: its weights, a new classifier
    initialised as transformers initialises it (normal, std = hidden**-0.5).
    """
    import torch
    from transformers import SiglipConfig, SiglipForImageClassification, SiglipVisionModel

    vision = SiglipVisionModel.from_pretrained(str(folder), attn_implementation="sdpa")
    cfg = SiglipConfig(
        vision_config=vision.config.to_dict(),
        num_labels=len(LABEL_NAMES),
        problem_type="multi_label_classification",
        id2label=dict(enumerate(LABEL_NAMES)),
        label2id={name: i for i, name in enumerate(LABEL_NAMES)},
    )
    notice = getattr(vision.config, "woundscore_notice", None)
    if notice:
        cfg.woundscore_notice = notice
    with torch.device("meta"):  # no time spent initialising a vision tower that is replaced
        net = SiglipForImageClassification(cfg)
    net.vision_model = vision
    hidden = vision.config.hidden_size
    net.classifier = torch.nn.Linear(hidden, len(LABEL_NAMES))
    torch.nn.init.normal_(net.classifier.weight, std=hidden**-0.5)
    torch.nn.init.zeros_(net.classifier.bias)
    return net


def _peak_memory(dev: str) -> tuple[float, str]:
    import torch

    if dev == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20, "GPU max_memory_allocated"
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss_kib / 1024.0, "process max RSS (whole process, includes the model load)"


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


# ---------------------------------------------------------------------------------------------
# Model card


def build_model_card(
    *,
    base_model: str,
    metrics: dict[str, Any],
    settings: dict[str, Any],
    notice: str | None = None,
) -> str:
    """Markdown model card (YAML front matter + metrics table) for ``--push-to-hub``.

    Args:
        base_model: the encoder checkpoint fine-tuned.
        metrics: ``masked_auc`` result on the test split, plus optional "best_val_macro_auc".
        settings: unfreeze_last, pooling, epochs, lr, batch_size, grad_accum, dtype, device, n_train ...
    """
    lines = [
        "---",
        f"base_model: {base_model}",
        "library_name: transformers",
        "pipeline_tag: image-classification",
        "tags:",
        "- woundscore",
        "- medsiglip",
        "- multi-label-classification",
        "- surgical-wound",
        "license: other",
        "---",
        "",
        "# woundscore selective-unfreeze fine-tune",
        "",
    ]
    if notice:
        lines += [f"> **Notice:** {notice}", ""]
    lines += [
        f"Fine-tune of `{base_model}` on surgical wound photos for six binary labels "
        f"({', '.join(LABEL_NAMES)}). Only the last {settings.get('unfreeze_last')} encoder blocks, "
        f"the final layer norm{', the attention-pooling head' if settings.get('pooling') == 'attention' else ''} "
        f"and the classifier were trained; pooling: {settings.get('pooling')}.",
        "",
        "**Research use only.** Not a medical device; not validated for clinical decisions. "
        "Training photos are mostly not C-section scars and come from social media.",
        "",
        "## Test metrics (ROC AUC, missing labels masked)",
        "",
        "| label | AUC | n | positives |",
        "|---|---|---|---|",
    ]
    for name in LABEL_NAMES:
        d = metrics.get("per_label", {}).get(name, {})
        auc = d.get("auc")
        lines.append(
            f"| {name} | {'not estimable' if auc is None else f'{auc:.3f}'} | {d.get('n', 0)} | {d.get('positives', 0)} |"
        )
    macro = metrics.get("macro_auc")
    lines.append(f"| **macro** | {'not estimable' if macro is None else f'{macro:.3f}'} | | |")
    lines.append("")
    if metrics.get("best_val_macro_auc") is not None:
        lines += [f"Best validation macro AUC (checkpoint selection): {metrics['best_val_macro_auc']:.3f}", ""]
    lines += [
        "Point estimates on a small test split: with ~16 positives an AUC's 95% interval is about "
        "+/-0.13. See the woundscore comparison report for bootstrap intervals.",
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
    ]
    for k in sorted(settings):
        lines.append(f"| {k} | {settings[k]} |")
    lines += [
        "",
        "Loss: masked, pos_weighted binary cross-entropy (classify.loss.masked_bce). Preprocessing: "
        "pad to square (centred, black), resize to the model size (bilinear), normalise to [-1, 1] "
        "(embed.preprocess, the same function as the embeddings).",
        "",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The fine-tune


@dataclass
class FineTuneResult:
    """What :func:`finetune` wrote: paths, the test predictions (ids (n,), P (n, 6)), the sidecar,
    and the val predictions (val_ids, P_val), which predictions.csv holds after the test rows."""

    out_dir: Path
    predictions_path: Path
    ids: np.ndarray
    P: np.ndarray
    meta: dict[str, Any]
    test_metrics: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)
    val_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    P_val: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LABEL_NAMES))))


def _split_samples(samples: Sequence[Any], source: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {"train": [], "val": [], "test": []}
    for s in samples:
        if s.split in out:
            out[s.split].append(s)
    for name, items in out.items():
        if not items:
            why = {
                "train": "nothing to train on",
                "val": "the best epoch is chosen by validation macro AUC",
                "test": "the report compares methods on the test split",
            }[name]
            counts = ", ".join(f"{k}={len(v)}" for k, v in out.items())
            raise FineTuneError(f"{source}: no '{name}' images ({counts}); the fine-tune needs all three splits: {why}")
    return out


def _scan(
    model: Any,
    ds: PixelDataset,
    *,
    batch_size: int,
    workers: int,
    device: str,
    autocast_dtype: Any,
    with_prefix: bool,
    desc: str,
    quiet: bool,
) -> tuple[list[int], list[tuple[int, str]], Any]:
    """One pass over a split: find unreadable images and (``with_prefix``) compute their prefixes.

    Returns (kept indices, [(index, reason)], (n_kept, T, D) prefix tensor or None).
    """
    import torch
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    from woundscore.compare.prefix import compute_prefix

    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate_safe, shuffle=False)
    kept: list[int] = []
    errors: list[tuple[int, str]] = []
    bar = tqdm(total=len(ds), desc=desc, disable=quiet, unit="img")

    def batches():
        for b in loader:
            errors.extend(b["errors"])
            if b["errors"]:
                bar.update(len(b["errors"]))
            if b["pixel_values"] is None:
                continue
            kept.extend(b["index"])
            if with_prefix:
                yield b["pixel_values"]
            else:
                bar.update(len(b["index"]))

    try:
        if with_prefix:
            states = compute_prefix(
                model, batches(), n=len(ds), device=device, autocast_dtype=autocast_dtype, progress=bar
            )
        else:
            for _ in batches():
                pass
            states = None
    finally:
        bar.close()
    if states is not None and len(kept) < len(ds):
        states = states[: len(kept)].clone()  # free the rows reserved for failed images
    return kept, errors, states


def finetune(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    model: str | os.PathLike = DEFAULT_MODEL,
    revision: str | None = None,
    unfreeze_last: int = 4,
    pooling: str = "mean",
    epochs: int = SEED_ARGS["epochs"],
    batch_size: int = SEED_ARGS["batch_size"],
    grad_accum: int = SEED_ARGS["grad_accum"],
    lr: float = SEED_ARGS["lr"],
    weight_decay: float = SEED_ARGS["weight_decay"],
    warmup_steps: int = SEED_ARGS["warmup_steps"],
    max_steps: int | None = None,
    device: str = "auto",
    dtype: str = "auto",
    prefix_cache: bool = True,
    workers: int | None = None,
    seed: int = 0,
    save_model: bool = True,
    push_to_hub: str | None = None,
    quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> FineTuneResult:
    """Fine-tune the last ``unfreeze_last`` blocks of a SigLIP encoder on ``source``; score its test split.

    Args:
        source: anything ``embed.sources.open_source`` reads, with train, val and test images.
        out_dir: where predictions.csv/.json, model/ and trainer/ go (created).
        model: hub id or local folder of a SigLIP checkpoint (vision tower is enough).
        unfreeze_last: N trainable encoder blocks (0..L); pooling: "mean" or "attention".
        epochs, batch_size, grad_accum, lr, weight_decay, warmup_steps: the Trainer's arguments.
        max_steps: stop after this many optimizer steps (tests, smoke runs); evaluates and saves then.
        device, dtype: "auto" picks cuda + bf16/fp16 when there is a GPU, else cpu + float32.
        prefix_cache: train on the frozen part's outputs computed once (same gradients, faster).
        workers: DataLoader workers for decoding (default: 0 on CPU, min(8, cores) on GPU).
        push_to_hub: repo id to upload model/ (with its card) to; needs a logged-in token.

    Returns:
        :class:`FineTuneResult`; predictions.csv holds (n_test + n_val, 6) probabilities, test rows first.

    Raises:
        FineTuneError (incl. NonFiniteLossError), embed.sources.SourceError, LabelError.
    """
    say = log or (lambda msg: None if quiet else print(msg, file=sys.stderr))
    if pooling not in POOLINGS:
        raise FineTuneError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
    for name, v in (("epochs", epochs), ("batch_size", batch_size), ("grad_accum", grad_accum)):
        if v < 1:
            raise FineTuneError(f"{name} must be >= 1, got {v}")
    if max_steps is not None and max_steps < 1:
        raise FineTuneError(f"max_steps must be >= 1, got {max_steps}")
    if not (lr > 0 and math.isfinite(lr)):
        raise FineTuneError(f"lr must be a positive number, got {lr}")
    dev, dtype = resolve_device_dtype(device, dtype)

    from woundscore.embed.sources import open_source

    src = open_source(source)
    splits = _split_samples(src.samples(), src.path)

    import torch
    from transformers import TrainingArguments, set_seed

    from woundscore.compare.predictions import write_predictions
    from woundscore.compare.prefix import SelectiveUnfreezeClassifier, UnfreezeError
    from woundscore.embed.preprocess import resolve_spec

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Checkpoints of an earlier run in the same folder would mix into the Trainer's rotation and
    # best-model bookkeeping: each run starts fresh (TensorBoard logs of earlier runs stay).
    old = sorted((out / "trainer").glob("checkpoint-*"))
    if old:
        say(f"removing {len(old)} checkpoint(s) of an earlier run in {out / 'trainer'}")
        for d in old:
            shutil.rmtree(d)
    set_seed(seed)
    base, ckpt = load_classifier(model, revision=revision)
    spec = resolve_spec(ckpt.path)
    try:
        net = SelectiveUnfreezeClassifier(base, unfreeze_last=unfreeze_last, pooling=pooling)  # type: ignore[arg-type]
    except UnfreezeError as e:
        raise FineTuneError(f"{model}: {e}") from e
    if prefix_cache and net.frozen_has_dropout():
        say("note: the checkpoint has attention dropout, so frozen blocks are random in training; "
            "using the plain path (no prefix cache)")
        prefix_cache = False
    trainable, total = net.parameter_counts()
    n_layers = len(net.vision.encoder.layers)
    say(
        f"trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / total:.1f}%): "
        f"last {unfreeze_last} of {n_layers} blocks, post_layernorm"
        f"{', attention-pool head' if pooling == 'attention' else ''}, classifier"
    )
    net.to(dev)
    amp = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    if workers is None:
        workers = 0 if dev == "cpu" else min(8, os.cpu_count() or 1)
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()

    # One pass per split: drop unreadable images (recorded, never silently) and, with the prefix
    # cache, run the frozen part once per image.
    datasets: dict[str, Any] = {}
    kept_samples: dict[str, list[Any]] = {}
    kept_index: dict[str, list[int]] = {}
    skipped: list[dict[str, str]] = []
    prefix_seconds = 0.0
    prefix_bytes = 0
    eval_batch = max(batch_size, 8)
    for name in ("train", "val", "test"):
        ds = PixelDataset(splits[name], spec, safe=True)
        t0 = time.perf_counter()
        kept, errors, states = _scan(
            # The batch size the Trainer will use on this split: the same matmul shapes as the
            # plain path, one reason less for bf16/fp16 rounding to differ (fp32 is exact anyway).
            net, ds, batch_size=batch_size if name == "train" else eval_batch, workers=workers, device=dev,
            autocast_dtype=amp,
            with_prefix=prefix_cache, desc=f"{'prefix' if prefix_cache else 'check'} {name}", quiet=quiet,
        )
        prefix_seconds += time.perf_counter() - t0
        for i, reason in errors:
            skipped.append({"image_id": splits[name][i].image_id, "split": name, "reason": reason})
            say(f"skipped {splits[name][i].image_id} ({name}): {reason}")
        if not kept:
            raise FineTuneError(f"{src.path}: no readable '{name}' image ({len(errors)} failed)")
        kept_samples[name] = [splits[name][i] for i in kept]
        kept_index[name] = kept
        labels = np.stack([np.asarray(s.labels) for s in kept_samples[name]]).astype(np.int8)
        if prefix_cache:
            datasets[name] = PrefixDataset(states, labels)
            prefix_bytes += states.numel() * states.element_size()
        else:
            datasets[name] = _Subset(PixelDataset(splits[name], spec), kept)
    if prefix_cache:
        say(f"prefix cache: {prefix_bytes / 2**20:,.0f} MiB for {sum(len(v) for v in kept_samples.values())} "
            f"images in {prefix_seconds:.1f} s")

    Y_train = np.stack([np.asarray(s.labels) for s in kept_samples["train"]])
    pw = schema_pos_weight(Y_train)
    pw = np.where(np.isfinite(pw), pw, 1.0)  # a label with no positive in train: unweighted
    loss_func = MaskedBCELossFunc(pw, scaler_skips=dtype == "float16")

    strategy = "steps" if max_steps is not None else "epoch"
    args = TrainingArguments(
        output_dir=str(out / "trainer"),
        num_train_epochs=epochs,
        max_steps=max_steps if max_steps is not None else -1,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=eval_batch,
        gradient_accumulation_steps=grad_accum,
        learning_rate=lr,
        weight_decay=weight_decay,
        warmup_steps=warmup_steps,
        lr_scheduler_type=SEED_ARGS["lr_scheduler_type"],
        eval_strategy=strategy,
        save_strategy=strategy,
        eval_steps=max_steps if max_steps is not None else None,
        save_steps=max_steps if max_steps is not None else None,
        save_total_limit=2,
        save_only_model=True,
        load_best_model_at_end=True,
        metric_for_best_model="macro_auc",
        greater_is_better=True,
        logging_strategy="steps",
        logging_steps=1,
        report_to=["tensorboard"],
        bf16=dtype == "bfloat16",
        fp16=dtype == "float16",
        use_cpu=dev == "cpu",
        dataloader_num_workers=0 if prefix_cache else workers,
        remove_unused_columns=False,
        label_names=["labels"],
        disable_tqdm=quiet,
        seed=seed,
        log_level="warning",
    )
    trainer = _trainer_cls()(
        model=net,
        args=args,
        train_dataset=datasets["train"],
        eval_dataset=datasets["val"],
        compute_loss_func=loss_func,
        compute_metrics=compute_metrics,
    )
    if quiet:
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    t0 = time.perf_counter()
    train_out = trainer.train()
    # Wall time to train includes the one pass over the images before training (decode check,
    # and the frozen part with the prefix cache), so both paths are charged the same way.
    train_seconds = time.perf_counter() - t0 + prefix_seconds
    peak_mb, memory_kind = _peak_memory(dev)
    _replace_pickles(out / "trainer", args)
    best_val = trainer.state.best_metric

    # Val and test predictions of the best model through the plain path (what deployment runs),
    # timed per image. Val rows go into the file too, so that the report can choose thresholds on
    # val for the fine-tune as it does for the other methods.
    net.eval()

    def predict(name: str) -> tuple[np.ndarray, float]:
        loader = torch.utils.data.DataLoader(
            _Subset(PixelDataset(splits[name], spec), kept_index[name]), batch_size=eval_batch, num_workers=workers
        )
        probs, seconds = [], 0.0
        with torch.inference_mode():
            for batch in loader:
                pixels = batch["pixel_values"].to(dev)
                if dev == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                with torch.autocast(dev, dtype=amp or torch.float32, enabled=amp is not None):
                    logits = net(pixel_values=pixels).logits
                probs.append(torch.sigmoid(logits.float()).cpu().numpy())
                seconds += time.perf_counter() - t0
        return np.concatenate(probs).astype(np.float64), seconds

    P_val, _ = predict("val")
    P, infer_s = predict("test")
    ids = np.asarray([s.image_id for s in kept_samples["test"]], dtype=str)
    Y_test = np.stack([np.asarray(s.labels) for s in kept_samples["test"]])
    test_metrics = masked_auc(Y_test, P)
    test_metrics["best_val_macro_auc"] = best_val

    # both can hold: generated images (the source's marker) and random weights (the checkpoint's)
    notice = "; ".join(dict.fromkeys(n for n in (getattr(src, "notice", None),
                                                  getattr(base.config, "woundscore_notice", None)) if n)) or None
    device_name = dev if dev == "cpu" else f"cuda ({torch.cuda.get_device_name()})"
    settings = {
        "unfreeze_last": unfreeze_last,
        "pooling": pooling,
        "epochs": epochs,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "lr": lr,
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "lr_scheduler": SEED_ARGS["lr_scheduler_type"],
        "dtype": dtype,
        "device": device_name,
        "prefix_cache": prefix_cache,
        "n_train": len(kept_samples["train"]),
        "n_val": len(kept_samples["val"]),
        "n_test": len(kept_samples["test"]),
        "seed": seed,
    }
    meta: dict[str, Any] = {
        "method": f"SigLIP fine-tune, last {unfreeze_last} of {n_layers} blocks, {pooling} pooling",
        "train_seconds": round(train_seconds, 3),
        "peak_memory_mb": round(peak_mb, 1),
        "memory_kind": memory_kind,
        "trainable_params": trainable,
        "total_params": total,
        "device": device_name,
        "inference_ms_per_image": round(1000.0 * infer_s / max(len(ids), 1), 3),
        "notes": (
            ("prefix cache (frozen part computed once); " if prefix_cache else "")
            + f"{dtype}; best val macro AUC {best_val if best_val is None else round(best_val, 4)}"
        ),
        "dtype": dtype,
        "model": str(model),
        "revision": ckpt.revision,
        "unfreeze_last": unfreeze_last,
        "pooling": pooling,
        "epochs": epochs,
        "max_steps": max_steps,
        "global_steps": int(train_out.global_step),
        "prefix_cache": prefix_cache,
        "scan_seconds": round(prefix_seconds, 3),  # the pass before training, in train_seconds
        "prefix_cache_mb": round(prefix_bytes / 2**20, 1) if prefix_cache else None,
        "best_val_macro_auc": best_val,
        "test_macro_auc": test_metrics["macro_auc"],
        "nonfinite_batches_skipped": loss_func.nonfinite_total,
        "n_train": settings["n_train"],
        "n_val": settings["n_val"],
        "n_test": settings["n_test"],
        "rows": "test then val images (val rows let the report choose thresholds on val)",
        "skipped_images": skipped,
        "preprocessing": spec.to_dict() if hasattr(spec, "to_dict") else None,
        "label_schema": SCHEMA.to_json(),
        "versions": _versions(),
        "notice": notice,
    }
    val_ids = np.asarray([s.image_id for s in kept_samples["val"]], dtype=str)
    pred_path = write_predictions(
        out / "predictions.csv", np.concatenate([ids, val_ids]), np.concatenate([P, P_val]), meta=meta
    )
    say(f"wrote {pred_path} ({len(ids)} test images); test macro AUC "
        f"{'not estimable' if test_metrics['macro_auc'] is None else round(test_metrics['macro_auc'], 3)}")

    if save_model or push_to_hub:
        model_dir = out / "model"
        base.config.woundscore_pooling = pooling  # the card and config say how logits were pooled
        with quiet_transformers():
            base.save_pretrained(model_dir)
        card = build_model_card(base_model=str(model), metrics=test_metrics, settings=settings, notice=notice)
        (model_dir / "README.md").write_text(card, encoding="utf-8")
        (model_dir / "metrics.json").write_text(json.dumps(test_metrics, indent=2) + "\n", encoding="utf-8")
        if push_to_hub:
            _push(model_dir, push_to_hub)
            say(f"pushed {model_dir} to https://huggingface.co/{push_to_hub}")
    return FineTuneResult(
        out_dir=out, predictions_path=pred_path, ids=ids, P=P, meta=meta, test_metrics=test_metrics,
        skipped=skipped, val_ids=val_ids, P_val=P_val,
    )


def _replace_pickles(trainer_dir: Path, args: Any) -> None:
    """The Trainer pickles its arguments into each checkpoint (training_args.bin); this project
    keeps no pickle on disk, so each is replaced by the same arguments as JSON."""
    for p in trainer_dir.rglob("training_args.bin"):
        p.with_name("training_args.json").write_text(args.to_json_string(), encoding="utf-8")
        p.unlink()


def _push(model_dir: Path, repo: str) -> None:
    """Upload ``model_dir`` (weights, config, card) to a private hub repo; the token stays with huggingface_hub."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(model_dir), commit_message="woundscore fine-tune")
    except Exception as e:  # noqa: BLE001 - network/auth errors of many kinds
        raise FineTuneError(
            f"push to {repo!r} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(the model is saved in {model_dir}; log in with `hf auth login` and retry)"
        ) from e


_TRAINER_CLS: Any = None


def _trainer_cls() -> Any:
    """A ``Trainer`` whose checkpoints hold only the trainable weights (~60 M of ~430 M for N=4).

    The Trainer reloads the best checkpoint with ``load_state_dict(strict=False)``, so the frozen
    weights (unchanged, still in memory) need not be written each epoch. Built lazily: importing
    the Trainer costs seconds, which ``--help`` and bench imports should not pay.
    """
    global _TRAINER_CLS
    if _TRAINER_CLS is None:
        from transformers import Trainer

        class TrainableOnlyTrainer(Trainer):
            def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
                if state_dict is None:
                    names = {n for n, p in self.model.named_parameters() if p.requires_grad}
                    state_dict = {k: v for k, v in self.model.state_dict().items() if k in names}
                super()._save(output_dir, state_dict=state_dict)

        _TRAINER_CLS = TrainableOnlyTrainer
    return _TRAINER_CLS
