"""The fine-tune's output folder as a woundscore model folder (classify.artifacts, kind "finetune").

After training, the fine-tuned backbone (``classify.finetuned.FineTunedHead.encoder``, the encoder
that deployment runs) gives each image's pooled features; the head's probabilities on them are
the predictions; ``classify.train.post_hoc`` calibrates on val, chooses the thresholds on the
calibrated val scores and fits the OOD description on the train features (cut-off from val).
:func:`save_model_folder` writes the folder with ``classify.artifacts.save_model_dir`` and moves
its files into the fine-tune's ``out`` (which also holds predictions.csv and trainer/), so that
``wound-classify predict OUT``, ``WoundScorer.load(OUT)`` and ``wound-serve OUT`` score with it.

torch is imported at the top: this module is only imported to fine-tune.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from woundscore.cache.layout import now
from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.util import package_versions
from woundscore.classify.artifacts import save_model_dir
from woundscore.compare.finetune_trainer import PixelDataset


def split_features(enc: Any, samples: Sequence[Any], spec: Any, *, batch_size: int, workers: int,
                   ) -> tuple[np.ndarray, float]:
    """(n, d) float32 pooled features of ``samples`` (readable images, in order) through the
    deployment encoder (``embed.encoder.ImageEncoder`` face), and the seconds spent in the model."""
    loader = DataLoader(PixelDataset(samples, spec), batch_size=batch_size, num_workers=workers)
    cuda = enc.device.startswith("cuda")
    feats, seconds = [], 0.0
    for batch in loader:
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        feats.append(enc.embed_pixels(batch["pixel_values"]))  # returns on the CPU: synchronised
        seconds += time.perf_counter() - t0
    return np.concatenate(feats), seconds


def model_provenance(*, head: Any, ph: Any, calibration: dict[str, Any], source: str, base_model: str,
                     base_revision: str, settings: dict[str, Any], split_sizes: dict[str, int], pos_weight: np.ndarray,
                     target_sensitivity: float, seed: int, dtype: str, training: dict[str, Any],
                     test_metrics: dict[str, Any], skipped: list[dict[str, str]], notice: str | None) -> dict[str, Any]:
    """provenance.json of a fine-tune model folder: the fields an MLP/probe folder has (created,
    encoder identity, split sizes, pos_weight, hyperparameters, seed, target_sensitivity,
    validation on calibrated val, versions, notice, calibration) plus the base checkpoint."""
    return {
        "kind": "finetune",
        "created": now(),
        "encoder": {**head.identity(), "compute_dtype": dtype, "pooling": head.pooling,
                    "base_model": base_model, "base_revision": base_revision},
        "training_source": {"path": source, "images": int(sum(split_sizes.values())), "skipped_images": skipped},
        "split_sizes": split_sizes,
        "pos_weight": dict(zip(LABEL_NAMES, [float(w) for w in pos_weight])),
        "hyperparameters": settings,
        "seed": int(seed),
        "target_sensitivity": float(target_sensitivity),
        "validation": ph.validation,
        "test_metrics": test_metrics,
        "calibration": calibration,
        "versions": package_versions(),
        "notice": notice,
        "training": training,
    }


def save_model_folder(out: Path, head: Any, ph: Any, provenance: dict[str, Any]) -> Path:
    """Write the model folder (save_model_dir, built beside ``out``) and move its files into
    ``out``, replacing those of an earlier run; predictions.csv and trainer/ stay. Returns ``out``."""
    staging = out.parent / f".{out.name}.model-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        save_model_dir(staging, head, ph.thresholds, provenance, calibration=ph.calibration, ood=ph.ood)
        for entry in sorted(staging.iterdir()):
            target = out / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(entry, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
