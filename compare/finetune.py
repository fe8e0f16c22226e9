"""Selective-unfreeze fine-tune of MedSigLIP (the seed's plan), run by ``wound-compare finetune``.

``AutoModelForImageClassification`` with the 6 labels, only the last N blocks (+ norm, head,
classifier) trainable (:mod:`compare.prefix`), trained by the Hugging Face ``Trainer`` with the
seed's arguments (:data:`SEED_ARGS`, best epoch by val macro AUC) and ``classify.loss``'s masked
BCE; images go through ``embed.preprocess`` like the embeddings. ``out_dir`` becomes a model
folder scored like an MLP or probe folder (:mod:`compare.finetune_export`: thresholds.json on
calibrated val, calibration.json, ood.npz, provenance.json, schema.json, ``model/`` =
``save_pretrained`` + image processor config + model card), and also holds ``predictions.csv``
(+ ``.json`` sidecar; uncalibrated, test rows then val rows for the report's thresholds) and
``trainer/`` (trainable-only checkpoints, TensorBoard logs in ``trainer/runs``). dtype "auto": bf16 autocast on GPUs with it, fp16 with loss
scaling on T4-class GPUs, fp32 on CPU. Three non-finite losses in a row raise
:class:`NonFiniteLossError` (CLI exit 3). See README, ``wound-compare finetune``.

torch and transformers are imported at the top: this module is only imported to fine-tune.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Subset
from transformers import TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback

from woundscore.cache.schema import LABEL_NAMES, SCHEMA, SPLITS, training_pos_weight
from woundscore.cache.util import package_versions
from woundscore.classify.finetuned import MODEL_SUBDIR, FineTunedHead
from woundscore.classify.thresholds import DEFAULT_TARGET_SENSITIVITY
from woundscore.classify.train import calibration_provenance, post_hoc
from woundscore.compare.finetune_trainer import (  # noqa: F401  (NonFiniteLossError: public here too)
    FineTuneError, MaskedBCELossFunc, NonFiniteLossError, PixelDataset, PrefixDataset, TrainableOnlyTrainer,
    compute_metrics, load_classifier, masked_auc, replace_pickles, scan)
from woundscore.compare.finetune_export import model_provenance, save_model_folder, split_features
from woundscore.compare.model_card import build_model_card, push_to_hub
from woundscore.compare.predictions import write_predictions
from woundscore.compare.prefix import SelectiveUnfreezeClassifier, UnfreezeError
from woundscore.embed.preprocess import resolve_spec
from woundscore.embed.runtime import DEFAULT_MODEL, peak_memory, resolve_device, resolve_dtype
from woundscore.embed.sources import open_source

#: The seed's Trainer arguments (the defaults of :func:`finetune` and of the CLI).
SEED_ARGS: dict[str, Any] = {"epochs": 5, "batch_size": 4, "grad_accum": 16, "lr": 5e-5, "weight_decay": 0.01,
                             "warmup_steps": 10, "lr_scheduler_type": "cosine"}


@dataclass(frozen=True)
class _Settings:
    """The validated arguments of one run; device "cpu" or "cuda[:i]", dtype float32/bfloat16/float16."""

    unfreeze_last: int
    pooling: str
    epochs: int
    batch_size: int
    grad_accum: int
    lr: float
    weight_decay: float
    warmup_steps: int
    max_steps: int | None
    device: str
    dtype: str
    prefix_cache: bool
    workers: int
    seed: int
    quiet: bool

    @property
    def amp(self) -> torch.dtype | None:
        return None if self.dtype == "float32" else getattr(torch, self.dtype)

    @property
    def eval_batch(self) -> int:
        return max(self.batch_size, 8)


def _check_settings(*, device: str, dtype: str, workers: int | None, **kw: Any) -> _Settings:
    # pooling and unfreeze_last are checked by SelectiveUnfreezeClassifier, device by resolve_device
    for name in ("epochs", "batch_size", "grad_accum", "max_steps"):
        if kw[name] is not None and kw[name] < 1:
            raise FineTuneError(f"{name} must be >= 1, got {kw[name]}")
    if not (kw["lr"] > 0 and math.isfinite(kw["lr"])):
        raise FineTuneError(f"lr must be a positive number, got {kw['lr']}")
    dev = resolve_device(device)
    # "auto" trains in float32 on CPU (mixed precision there is for inference); on a GPU
    # embed.runtime picks bfloat16, or float16 on T4-class GPUs.
    dtype = str(resolve_dtype("float32" if dtype == "auto" and dev == "cpu" else dtype, dev)).removeprefix("torch.")
    if dtype == "float16" and dev == "cpu":
        raise FineTuneError("float16 training needs a GPU; use --dtype float32 or bfloat16 on CPU")
    if workers is None:
        workers = 0 if dev == "cpu" else min(8, os.cpu_count() or 1)
    return _Settings(device=dev, dtype=dtype, workers=workers, **kw)


def _build_model(model: str | os.PathLike, revision: str | None, st: _Settings,
                 say: Callable[[str], None]) -> tuple[Any, Any, Any, SelectiveUnfreezeClassifier, _Settings]:
    """(base model, checkpoint, preprocessing spec, the unfrozen classifier on its device, settings:
    without the prefix cache when the frozen blocks have dropout)."""
    base, ckpt = load_classifier(model, revision=revision)
    spec = resolve_spec(ckpt.path)
    try:
        net = SelectiveUnfreezeClassifier(base, unfreeze_last=st.unfreeze_last, pooling=st.pooling)  # type: ignore
    except UnfreezeError as e:
        raise FineTuneError(f"{model}: {e}") from e
    if st.prefix_cache and net.frozen_has_dropout():
        say("note: the checkpoint has attention dropout, so frozen blocks are random in training; "
            "using the plain path (no prefix cache)")
        st = replace(st, prefix_cache=False)
    trainable, total = net.parameter_counts()
    say(f"trainable parameters: {trainable:,} of {total:,} ({100.0 * trainable / total:.1f}%): "
        f"last {st.unfreeze_last} of {len(net.vision.encoder.layers)} blocks, post_layernorm"
        f"{', attention-pool head' if st.pooling == 'attention' else ''}, classifier")
    net.to(st.device)
    if st.device != "cpu":
        torch.cuda.reset_peak_memory_stats()
    return base, ckpt, spec, net, st


def _split_samples(samples: Sequence[Any], source: Any) -> dict[str, list[Any]]:
    out = {name: [s for s in samples if s.split == name] for name in SPLITS}
    for name, items in out.items():
        if not items:
            why = {"train": "nothing to train on", "val": "the best epoch is chosen by validation macro AUC",
                   "test": "the report compares methods on the test split"}[name]
            counts = ", ".join(f"{k}={len(v)}" for k, v in out.items())
            raise FineTuneError(f"{source}: no '{name}' images ({counts}); the fine-tune needs all three splits: {why}")
    return out


@dataclass
class _Data:
    """Per split: the Trainer's dataset and the readable samples; what was skipped."""

    datasets: dict[str, Any] = field(default_factory=dict)
    samples: dict[str, list[Any]] = field(default_factory=dict)
    skipped: list[dict[str, str]] = field(default_factory=list)
    scan_seconds: float = 0.0
    prefix_bytes: int = 0

    def labels(self, split: str) -> np.ndarray:
        """(n, 6) int8 schema labels of the readable images of ``split``."""
        return np.stack([np.asarray(s.labels) for s in self.samples[split]]).astype(np.int8)

    def ids(self, split: str) -> np.ndarray:
        return np.asarray([s.image_id for s in self.samples[split]], dtype=str)


def _prepare_data(net: SelectiveUnfreezeClassifier, splits: dict[str, list[Any]], spec: Any, st: _Settings,
                  source: Any, say: Callable[[str], None]) -> _Data:
    """One pass per split: drop unreadable images (recorded, never silently) and, with the prefix
    cache, run the frozen part once per image."""
    data = _Data()
    for name, samples in splits.items():
        t0 = time.perf_counter()
        kept, errors, states = scan(
            # The batch size the Trainer will use on this split: the same matmul shapes as the
            # plain path, one reason less for bf16/fp16 rounding to differ (fp32 is exact anyway).
            net, PixelDataset(samples, spec, safe=True), batch_size=st.batch_size if name == "train" else st.eval_batch,
            workers=st.workers, device=st.device, autocast_dtype=st.amp, with_prefix=st.prefix_cache,
            desc=f"{'prefix' if st.prefix_cache else 'check'} {name}", quiet=st.quiet,
        )
        data.scan_seconds += time.perf_counter() - t0
        for i, reason in errors:
            data.skipped.append({"image_id": samples[i].image_id, "split": name, "reason": reason})
            say(f"skipped {samples[i].image_id} ({name}): {reason}")
        if not kept:
            raise FineTuneError(f"{source}: no readable '{name}' image ({len(errors)} failed)")
        data.samples[name] = [samples[i] for i in kept]
        if st.prefix_cache:
            data.datasets[name] = PrefixDataset(states, data.labels(name))
            data.prefix_bytes += states.numel() * states.element_size()
        else:
            data.datasets[name] = Subset(PixelDataset(samples, spec), kept)
    if st.prefix_cache:
        say(f"prefix cache: {data.prefix_bytes / 2**20:,.0f} MiB for {sum(map(len, data.samples.values()))} "
            f"images in {data.scan_seconds:.1f} s")
    return data


def _train(net: SelectiveUnfreezeClassifier, data: _Data, loss_func: MaskedBCELossFunc, st: _Settings,
           out: Path) -> tuple[Any, float]:
    """Train with the seed's Trainer arguments; the best checkpoint (val macro AUC) is loaded at
    the end. Returns (the Trainer, wall seconds including the pass before training)."""
    steps = st.max_steps is not None
    args = TrainingArguments(
        output_dir=str(out / "trainer"), num_train_epochs=st.epochs, max_steps=st.max_steps if steps else -1,
        per_device_train_batch_size=st.batch_size, per_device_eval_batch_size=st.eval_batch,
        gradient_accumulation_steps=st.grad_accum, learning_rate=st.lr, weight_decay=st.weight_decay,
        warmup_steps=st.warmup_steps, lr_scheduler_type=SEED_ARGS["lr_scheduler_type"],
        eval_strategy="steps" if steps else "epoch", save_strategy="steps" if steps else "epoch",
        eval_steps=st.max_steps, save_steps=st.max_steps, save_total_limit=2, save_only_model=True,
        load_best_model_at_end=True, metric_for_best_model="macro_auc", greater_is_better=True,
        logging_strategy="steps", logging_steps=1, report_to=["tensorboard"],
        bf16=st.dtype == "bfloat16", fp16=st.dtype == "float16", use_cpu=st.device == "cpu",
        dataloader_num_workers=0 if st.prefix_cache else st.workers, remove_unused_columns=False,
        label_names=["labels"], disable_tqdm=st.quiet, seed=st.seed, log_level="warning",
    )
    trainer = TrainableOnlyTrainer(model=net, args=args, train_dataset=data.datasets["train"],
                                   eval_dataset=data.datasets["val"], compute_loss_func=loss_func,
                                   compute_metrics=compute_metrics)
    if st.quiet:
        trainer.remove_callback(PrinterCallback)  # it prints every log dict when tqdm is off
    t0 = time.perf_counter()
    trainer.train()
    replace_pickles(out / "trainer", args)
    # The pass over the images before training (decode check, and the frozen part with the prefix
    # cache) is charged to training, so both paths are charged the same way.
    return trainer, time.perf_counter() - t0 + data.scan_seconds


def _scores(head: FineTunedHead, data: _Data, spec: Any, st: _Settings, splits: Sequence[str],
            ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """Per split of ``splits``: (n, d) pooled features of the readable images through the
    fine-tuned backbone as deployment runs it (``head.encoder``, in the training dtype) and the
    head's (n, 6) probabilities on them; and the seconds spent in the model on the test split."""
    enc = head.encoder(device=st.device, dtype=st.dtype)
    feats, probs, test_s = {}, {}, 0.0
    for split in splits:
        feats[split], seconds = split_features(enc, data.samples[split], spec, batch_size=st.eval_batch,
                                               workers=st.workers)
        probs[split] = head.predict_proba(feats[split])
        test_s = seconds if split == "test" else test_s
    return feats, probs, test_s


def _settings_table(st: _Settings, data: _Data, device_name: str) -> dict[str, Any]:
    """The training settings the model card lists."""
    keys = ("unfreeze_last", "pooling", "epochs", "max_steps", "batch_size", "grad_accum", "lr", "weight_decay",
            "warmup_steps")
    return {**{k: getattr(st, k) for k in keys}, "lr_scheduler": SEED_ARGS["lr_scheduler_type"], "dtype": st.dtype,
            "device": device_name, "prefix_cache": st.prefix_cache,
            **{f"n_{s}": len(data.samples[s]) for s in SPLITS}, "seed": st.seed}


def _sidecar(*, st: _Settings, data: _Data, net: SelectiveUnfreezeClassifier, trainer: Any, train_seconds: float,
             peak: tuple[float, str], infer_s: float, test_metrics: dict[str, Any], model: str, ckpt: Any, spec: Any,
             settings: dict[str, Any], loss_func: MaskedBCELossFunc, notice: str | None) -> dict[str, Any]:
    """The predictions.json cost sidecar (what the report reads next to the probabilities), with
    the model card's settings table in it."""
    peak_mb, memory_kind = peak
    trainable, total = net.parameter_counts()
    best_val = trainer.state.best_metric
    return {
        **settings,
        "method": f"SigLIP fine-tune, last {st.unfreeze_last} of {len(net.vision.encoder.layers)} blocks, "
                  f"{st.pooling} pooling",
        "train_seconds": round(train_seconds, 3), "peak_memory_mb": round(peak_mb, 1), "memory_kind": memory_kind,
        "trainable_params": trainable, "total_params": total,
        "inference_ms_per_image": round(1000.0 * infer_s / max(len(data.samples["test"]), 1), 3),
        "notes": (("prefix cache (frozen part computed once); " if st.prefix_cache else "")
                  + f"{st.dtype}; best val macro AUC {best_val if best_val is None else round(best_val, 4)}"),
        "model": model, "revision": ckpt.revision, "global_steps": int(trainer.state.global_step),
        "scan_seconds": round(data.scan_seconds, 3),  # the pass before training, in train_seconds
        "prefix_cache_mb": round(data.prefix_bytes / 2**20, 1) if st.prefix_cache else None,
        "best_val_macro_auc": best_val, "test_macro_auc": test_metrics["macro_auc"],
        "nonfinite_batches_skipped": loss_func.nonfinite_total,
        "rows": "test then val images (val rows let the report choose thresholds on val)",
        "skipped_images": data.skipped, "preprocessing": spec.to_dict() if hasattr(spec, "to_dict") else None,
        "label_schema": SCHEMA.to_json(), "versions": package_versions(), "notice": notice,
    }


def _save_model(head: FineTunedHead, out: Path, feats: dict[str, np.ndarray], probs: dict[str, np.ndarray], *,
                data: _Data, st: _Settings, src_path: Any, ckpt: Any, model: str, pos_weight: np.ndarray,
                target_sensitivity: float, test_metrics: dict[str, Any], settings: dict[str, Any], meta: dict[str, Any],
                notice: str | None, push: str | None, say: Callable[[str], None]) -> Any:
    """OUT as a model folder (compare.finetune_export): calibration, thresholds on calibrated val and
    the OOD description (classify.train.post_hoc), model/ with the card and metrics.json; pushed
    on request. Returns the PostHoc."""
    ph = post_hoc(data.labels("val"), probs["val"], feats["train"], feats["val"], pos_weight=pos_weight,
                  target_sensitivity=target_sensitivity,
                  fitted_on=f"val split of {src_path} ({len(data.samples['val'])} images)")
    head.card = build_model_card(base_model=model, metrics=test_metrics, settings=settings, notice=notice)
    training = {k: meta[k] for k in ("best_val_macro_auc", "global_steps", "train_seconds", "peak_memory_mb",
                                     "trainable_params", "total_params", "nonfinite_batches_skipped")}
    prov = model_provenance(
        head=head, ph=ph, calibration=calibration_provenance(ph), source=str(src_path), base_model=model,
        base_revision=ckpt.revision, settings=settings, split_sizes={s: len(data.samples[s]) for s in SPLITS},
        pos_weight=pos_weight, target_sensitivity=target_sensitivity, seed=st.seed, dtype=st.dtype,
        training=training, test_metrics=test_metrics, skipped=data.skipped, notice=notice)
    save_model_folder(out, head, ph, prov)
    (out / MODEL_SUBDIR / "metrics.json").write_text(json.dumps(test_metrics, indent=2) + "\n", encoding="utf-8")
    say(f"wrote the model folder {out} (score with `wound-classify predict {out} PHOTO` or `wound-serve {out}`)")
    if push:
        push_to_hub(out / MODEL_SUBDIR, push, extra=[out / "calibration.json", out / "thresholds.json"])
        say(f"pushed {out / MODEL_SUBDIR} to https://huggingface.co/{push}")
    return ph


@dataclass
class FineTuneResult:
    """What :func:`finetune` wrote: paths, the test predictions (ids (n,), P (n, 6), uncalibrated),
    the sidecar, the val predictions (val_ids, P_val), which predictions.csv holds after the test
    rows, and the calibration/thresholds/OOD fitted for the model folder."""

    out_dir: Path
    predictions_path: Path
    ids: np.ndarray
    P: np.ndarray
    meta: dict[str, Any]
    test_metrics: dict[str, Any]
    skipped: list[dict[str, str]] = field(default_factory=list)
    val_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))
    P_val: np.ndarray = field(default_factory=lambda: np.zeros((0, len(LABEL_NAMES))))
    post_hoc: Any = None  # classify.train.PostHoc of the saved model folder (None without one)


def _fresh_out_dir(out_dir: str | os.PathLike, say: Callable[[str], None]) -> Path:
    """Create ``out_dir``; remove Trainer checkpoints of an earlier run there, which would mix into
    the rotation and best-model bookkeeping (TensorBoard logs of earlier runs stay)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    old = sorted((out / "trainer").glob("checkpoint-*"))
    if old:
        say(f"removing {len(old)} checkpoint(s) of an earlier run in {out / 'trainer'}")
        for d in old:
            shutil.rmtree(d)
    return out


def finetune(
    source: str | os.PathLike, out_dir: str | os.PathLike, *, model: str | os.PathLike = DEFAULT_MODEL,
    revision: str | None = None, unfreeze_last: int = 4, pooling: str = "mean", epochs: int = SEED_ARGS["epochs"],
    batch_size: int = SEED_ARGS["batch_size"], grad_accum: int = SEED_ARGS["grad_accum"], lr: float = SEED_ARGS["lr"],
    weight_decay: float = SEED_ARGS["weight_decay"], warmup_steps: int = SEED_ARGS["warmup_steps"],
    max_steps: int | None = None, device: str = "auto", dtype: str = "auto", prefix_cache: bool = True,
    workers: int | None = None, seed: int = 0, save_model: bool = True, push_to_hub: str | None = None,
    target_sensitivity: float = DEFAULT_TARGET_SENSITIVITY, quiet: bool = False,
    log: Callable[[str], None] | None = None,
) -> FineTuneResult:
    """Fine-tune the last ``unfreeze_last`` blocks of a SigLIP encoder on ``source``; score its test split.

    The arguments are the CLI's options (README, ``wound-compare finetune``); ``model`` may be a
    vision-only checkpoint; ``save_model=False`` writes no model folder (unless ``push_to_hub``);
    ``log`` gets the progress lines (default: stderr unless ``quiet``). With ``save_model``,
    ``out_dir`` is a model folder (classify.artifacts, kind "finetune": thresholds chosen on the
    calibrated val scores for ``target_sensitivity``, calibration.json, ood.npz, model/).

    Returns:
        :class:`FineTuneResult`; predictions.csv holds (n_test + n_val, 6) uncalibrated
        probabilities, test rows first.

    Raises:
        FineTuneError (incl. NonFiniteLossError), embed.sources.SourceError, LabelError, EncoderLoadError.
    """
    say = log or (lambda msg: None if quiet else print(msg, file=sys.stderr))
    st = _check_settings(unfreeze_last=unfreeze_last, pooling=pooling, epochs=epochs, batch_size=batch_size,
                         grad_accum=grad_accum, lr=lr, weight_decay=weight_decay, warmup_steps=warmup_steps,
                         max_steps=max_steps, device=device, dtype=dtype, prefix_cache=prefix_cache, workers=workers,
                         seed=seed, quiet=quiet)
    src = open_source(source)
    splits = _split_samples(src.samples(), src.path)
    out = _fresh_out_dir(out_dir, say)
    set_seed(seed)
    base, ckpt, spec, net, st = _build_model(model, revision, st, say)
    data = _prepare_data(net, splits, spec, st, src.path, say)

    pos_weight = training_pos_weight(data.labels("train"))
    loss_func = MaskedBCELossFunc(pos_weight, scaler_skips=st.dtype == "float16")
    trainer, train_seconds = _train(net, data, loss_func, st, out)
    peak = peak_memory(st.device)  # of training (before the predictions below)
    # both can hold: generated images (the source's marker) and random weights (the checkpoint's)
    notice = "; ".join(dict.fromkeys(n for n in (getattr(src, "notice", None),
                                                  getattr(base.config, "woundscore_notice", None)) if n)) or None
    head = FineTunedHead.from_model(base, pooling=st.pooling, base_model=ckpt.model_id, spec=spec, notice=notice)
    export = save_model or push_to_hub
    # Val rows go into predictions.csv too, so that the report can choose thresholds on val for
    # the fine-tune as it does for the other methods; train features only feed the OOD reference.
    feats, probs, infer_s = _scores(head, data, spec, st, ("test", "val", "train") if export else ("test", "val"))
    P, P_val = probs["test"], probs["val"]
    test_metrics = {**masked_auc(data.labels("test"), P), "best_val_macro_auc": trainer.state.best_metric}

    device_name = "cpu" if st.device == "cpu" else f"cuda ({torch.cuda.get_device_name()})"
    settings = _settings_table(st, data, device_name)
    meta = _sidecar(st=st, data=data, net=net, trainer=trainer, train_seconds=train_seconds, peak=peak, infer_s=infer_s,
                    test_metrics=test_metrics, model=str(model), ckpt=ckpt, spec=spec, settings=settings,
                    loss_func=loss_func, notice=notice)
    ids, val_ids = data.ids("test"), data.ids("val")
    pred_path = write_predictions(out / "predictions.csv", np.concatenate([ids, val_ids]),
                                  np.concatenate([P, P_val]), meta=meta)
    macro = test_metrics["macro_auc"]
    say(f"wrote {pred_path} ({len(ids)} test images); test macro AUC "
        f"{'not estimable' if macro is None else round(macro, 3)}")
    ph = None
    if export:
        ph = _save_model(head, out, feats, probs, data=data, st=st, src_path=src.path, ckpt=ckpt, model=str(model),
                         pos_weight=pos_weight, target_sensitivity=target_sensitivity, test_metrics=test_metrics,
                         settings=settings, meta=meta, notice=notice, push=push_to_hub, say=say)
    return FineTuneResult(out_dir=out, predictions_path=pred_path, ids=ids, P=P, meta=meta, test_metrics=test_metrics,
                          skipped=data.skipped, val_ids=val_ids, P_val=P_val, post_hoc=ph)
