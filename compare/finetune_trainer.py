"""What the fine-tune hands the Hugging Face ``Trainer``: the classifier loaded from a SigLIP
checkpoint, the masked loss, the validation metrics, the datasets, the one pass over each split
before training, and a Trainer that saves only the trainable weights.

torch and transformers are imported at the top: this module is only imported to fine-tune.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (AutoModelForImageClassification, SiglipConfig, SiglipForImageClassification,
                          SiglipVisionModel, Trainer)

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, MISSING
from woundscore.classify.metrics import evaluate
from woundscore.compare.prefix import compute_prefix
from woundscore.embed.encoder import resolve_checkpoint
from woundscore.embed.preprocess import preprocess_bytes
from woundscore.embed.runtime import quiet_transformers


class FineTuneError(WoundscoreError):
    """The fine-tune cannot run: bad source splits, model not loadable, bad settings."""


class NonFiniteLossError(FineTuneError):
    """The loss stayed NaN/inf: the run stopped rather than train on garbage (CLI exit code 3)."""

    exit_code = 3


#: The six woundscore labels as a transformers classification config sees them.
_LABELS = {"num_labels": len(LABEL_NAMES), "problem_type": "multi_label_classification",
           "id2label": dict(enumerate(LABEL_NAMES)), "label2id": {name: i for i, name in enumerate(LABEL_NAMES)}}


def load_classifier(model: str | os.PathLike, *, revision: str | None = None) -> tuple[Any, Any]:
    """``AutoModelForImageClassification`` of a SigLIP checkpoint with the six woundscore labels.

    Returns (model, ``embed.encoder.Checkpoint``); the checkpoint is found the way embed finds it
    (local folder, or hub id with the gated-model / token / offline messages of embed.encoder).
    """
    ckpt = resolve_checkpoint(str(model), revision)
    try:
        with quiet_transformers():
            if _model_type(ckpt.path) == "siglip_vision_model":
                return _classifier_from_vision_only(ckpt.path), ckpt
            net = AutoModelForImageClassification.from_pretrained(str(ckpt.path), **_LABELS, attn_implementation="sdpa",
                                                                  trust_remote_code=False)
    except (OSError, ValueError, KeyError) as e:
        raise FineTuneError(f"cannot load {ckpt.path} as an image classifier: {str(e).splitlines()[0]}") from e
    return net, ckpt


def _model_type(folder: Path) -> str | None:
    try:
        return json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError):
        return None


def _classifier_from_vision_only(folder: Path) -> SiglipForImageClassification:
    """A ``SiglipForImageClassification`` around a vision-only checkpoint (``SiglipVisionModel``).

    ``AutoModelForImageClassification`` maps only the full ``siglip`` config (MedSigLIP on the hub
    is one); a saved vision tower alone gets the same model here: its weights, a new classifier
    initialised as transformers initialises it (normal, std = hidden**-0.5).
    """
    vision = SiglipVisionModel.from_pretrained(str(folder), attn_implementation="sdpa")
    cfg = SiglipConfig(vision_config=vision.config.to_dict(), **_LABELS)
    cfg.woundscore_notice = getattr(vision.config, "woundscore_notice", None)  # random weights: the tiny model's
    with torch.device("meta"):  # no time spent initialising a vision tower that is replaced
        net = SiglipForImageClassification(cfg)
    net.vision_model = vision
    hidden = vision.config.hidden_size
    net.classifier = torch.nn.Linear(hidden, len(LABEL_NAMES))
    torch.nn.init.normal_(net.classifier.weight, std=hidden**-0.5)
    torch.nn.init.zeros_(net.classifier.bias)
    return net


#: Label value of a missing entry in the Trainer's batches: the Trainer counts entries != -100 as
#: ``num_items_in_batch``, so with -100 for missing it counts exactly the observed entries.
IGNORE_INDEX = -100


class MaskedBCELossFunc:
    """``Trainer(compute_loss_func=...)``: ``classify.loss.masked_bce`` on the model's logits.

    Missing labels arrive as -100 (:data:`IGNORE_INDEX`) and are mapped back to the schema's -1.
    Gradient accumulation: the Trainer does not divide a ``compute_loss_func`` loss by the
    accumulation steps but passes ``num_items_in_batch`` (observed entries of the accumulated
    batch); scaling each micro-batch's masked mean by ``observed_here / num_items_in_batch`` makes
    the accumulated loss exactly the masked mean over the accumulated batch. Evaluation (no
    ``num_items_in_batch``) gets the plain masked mean.

    NaN guard: ``max_nonfinite`` non-finite losses in a row raise :class:`NonFiniteLossError`.
    Below that, in float32/bfloat16 the batch is skipped (a zero loss with no gradient); under
    float16 (``scaler_skips=True``) the loss is passed on so that the GradScaler sees inf/NaN
    gradients and skips the step (a zero with no gradients would trip its "no inf checks" assert).
    """

    def __init__(self, pos_weight: np.ndarray, *, max_nonfinite: int = 3, scaler_skips: bool = False) -> None:
        self.pos_weight = torch.as_tensor(np.asarray(pos_weight, dtype=np.float32))
        self.max_nonfinite = max_nonfinite
        self.scaler_skips = scaler_skips
        self.nonfinite_total = 0
        self.nonfinite_run = 0

    def __call__(self, outputs: Any, labels: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
        from woundscore.classify.loss import masked_bce  # keras: imported when the first batch is scored

        logits = outputs["logits"] if isinstance(outputs, dict) else outputs.logits
        logits = logits.float()  # BCE in float32 also under bf16/fp16 autocast
        y = labels.to(device=logits.device, dtype=logits.dtype)
        y = torch.where(y == IGNORE_INDEX, torch.full_like(y, float(MISSING)), y)
        loss = torch.as_tensor(masked_bce(y, logits, self.pos_weight.to(logits.device))).to(logits.device)
        if num_items_in_batch is not None:
            total = float(num_items_in_batch)  # an int or a 0-d tensor
            if total > 0:
                loss = loss * ((y != MISSING).sum().float() / total)
        if bool(torch.isfinite(loss)):
            self.nonfinite_run = 0
            return loss
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


def masked_auc(Y: np.ndarray, P: np.ndarray) -> dict[str, Any]:
    """``classify.metrics.evaluate``'s ROC AUCs over observed (!= -1) entries of Y (n, 6) and
    scores P (n, 6); a label with one class is not estimable (auc None).

    Returns:
        {"per_label": {name: {"auc", "n", "positives"}}, "macro_auc": float | None, "n_estimable": int}
    """
    res = evaluate(Y, P)
    per = {name: {k: d[k] for k in ("auc", "n", "positives")} for name, d in res["labels"].items()}
    n_estimable = sum(d["auc"] is not None for d in per.values())
    return {"per_label": per, "macro_auc": res["macro_auc"], "n_estimable": n_estimable}


def compute_metrics(eval_pred: Any) -> dict[str, float]:
    """``Trainer(compute_metrics=...)``: validation macro AUC (checkpoint selection) and per-label AUCs.

    A label with one class in val is left out of the macro; when none is estimable the macro is
    0.5 (chance), so that the best-checkpoint comparison never sees NaN.
    """
    # One array: the model's output has no loss, so the Trainer unwraps the 1-tuple of logits.
    Y = np.asarray(eval_pred.label_ids).round().astype(np.int64)
    Y[Y == IGNORE_INDEX] = MISSING
    res = masked_auc(Y, np.asarray(eval_pred.predictions))
    out = {"macro_auc": res["macro_auc"] if res["macro_auc"] is not None else 0.5,
           "n_estimable_labels": float(res["n_estimable"])}
    out.update({f"auc_{name}": d["auc"] for name, d in res["per_label"].items() if d["auc"] is not None})
    return out


def trainer_labels(labels: np.ndarray) -> torch.Tensor:
    """Schema labels (n, 6) 1 / 0 / -1 -> float32 tensor with -100 for missing (see IGNORE_INDEX)."""
    y = np.asarray(labels, dtype=np.float32)
    return torch.as_tensor(np.where(y == MISSING, float(IGNORE_INDEX), y))


class PixelDataset:
    """torch Dataset over samples: ``read_bytes`` -> ``embed.preprocess.preprocess_bytes``.

    Items are {"pixel_values": (3, H, W) float32, "labels": (6,) float32, -100 for missing}. With
    ``safe=True`` (the scan before training) they carry "index": i too, and a read/decode failure
    gives {"index": i, "error": reason} instead of raising.
    """

    def __init__(self, samples: Sequence[Any], spec: Any, *, safe: bool = False) -> None:
        self.samples, self.spec, self.safe = list(samples), spec, safe

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        try:
            pixels = preprocess_bytes(s.read_bytes(), self.spec, origin=s.origin)
        except Exception as e:  # noqa: BLE001 - ImageReadError, ImageDecodeError, PIL errors
            if not self.safe:
                raise
            return {"index": i, "error": str(e) or type(e).__name__}
        item = {"pixel_values": pixels, "labels": trainer_labels(s.labels)}
        return {"index": i, **item} if self.safe else item  # the Trainer passes every key to forward


class PrefixDataset:
    """torch Dataset over cached prefix states: {"prefix_states": (T, D), "labels": (6,) (-100 = missing)}."""

    def __init__(self, states: torch.Tensor, labels: np.ndarray) -> None:
        self.states, self.labels = states, trainer_labels(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"prefix_states": self.states[i], "labels": self.labels[i]}


def _collate_safe(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [it for it in items if "error" not in it]
    return {
        "index": [it["index"] for it in good],
        "pixel_values": torch.stack([it["pixel_values"] for it in good]) if good else None,
        "errors": [(it["index"], it["error"]) for it in items if "error" in it],
    }


def scan(model: Any, ds: PixelDataset, *, batch_size: int, workers: int, device: str, autocast_dtype: Any,
         with_prefix: bool, desc: str, quiet: bool) -> tuple[list[int], list[tuple[int, str]], Any]:
    """One pass over a split: find unreadable images and (``with_prefix``) compute their prefixes.

    Returns (kept indices, [(index, reason)], (n_kept, T, D) prefix tensor or None).
    """
    loader = DataLoader(ds, batch_size=batch_size, num_workers=workers, collate_fn=_collate_safe, shuffle=False)
    kept: list[int] = []
    errors: list[tuple[int, str]] = []
    with tqdm(total=len(ds), desc=desc, disable=quiet, unit="img") as bar:
        def batches():
            for b in loader:  # compute_prefix counts the readable images on the bar
                errors.extend(b["errors"])
                bar.update(len(b["errors"]) + (0 if with_prefix else len(b["index"])))
                if b["pixel_values"] is not None:
                    kept.extend(b["index"])
                    yield b["pixel_values"]

        if with_prefix:
            states = compute_prefix(model, batches(), n=len(ds), device=device, autocast_dtype=autocast_dtype,
                                    progress=bar)
        else:
            states = None
            for _ in batches():
                pass
    return kept, errors, states


class TrainableOnlyTrainer(Trainer):
    """A ``Trainer`` whose checkpoints hold only the trainable weights (~60 M of ~430 M for N=4).

    The Trainer reloads the best checkpoint with ``load_state_dict(strict=False)``, so the frozen
    weights (unchanged, still in memory) need not be written each epoch.
    """

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        if state_dict is None:
            names = {n for n, p in self.model.named_parameters() if p.requires_grad}
            state_dict = {k: v for k, v in self.model.state_dict().items() if k in names}
        super()._save(output_dir, state_dict=state_dict)


def replace_pickles(trainer_dir: Path, args: Any) -> None:
    """The Trainer pickles its arguments into each checkpoint (training_args.bin); this project
    keeps no pickle on disk, so each is replaced by the same arguments as JSON."""
    for p in trainer_dir.rglob("training_args.bin"):
        p.with_name("training_args.json").write_text(args.to_json_string(), encoding="utf-8")
        p.unlink()
