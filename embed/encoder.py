"""The MedSigLIP image encoder: only the vision tower with its attention-pooling head.

``load_encoder("google/medsiglip-448")`` (a hub id) or ``load_encoder("/path/to/folder")`` (the
offline way) loads ``SiglipVisionModel`` from the full SigLIP checkpoint: transformers maps the
``vision_model.*`` weights and skips the text tower, so the text weights are never kept in memory.
The embedding is the pooled feature, ``SiglipModel.get_image_features(...).pooler_output`` (in
transformers 5 that method returns an output object), stored unnormalised (tested equal).

Never ``trust_remote_code``; weights only from ``*.safetensors`` (no pickle).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.util import package_versions
from woundscore.embed.preprocess import PreprocessSpec, load_image, preprocess, resolve_spec
from woundscore.embed.runtime import (DEFAULT_MODEL, EncoderLoadError, checkpoint_notice, default_batch_size,
                                      quiet_transformers, resolve_device, resolve_dtype)

# torch, transformers and huggingface_hub are imported inside the functions that need them:
# the readers and `--help` must not pay for them, and tests patch huggingface_hub's functions.
if TYPE_CHECKING:
    import torch
    from PIL import Image

log = logging.getLogger("embed")

OFFLINE_HINT = (
    "Offline alternative: pass --model /path/to/folder, a folder holding config.json, "
    "preprocessor_config.json and model.safetensors (e.g. made once online with "
    "`hf download google/medsiglip-448 --local-dir FOLDER`)."
)
# Files needed to embed: configs and safetensors weights only (never *.bin: that is pickle).
_EMBED_FILES = ["config.json", "preprocessor_config.json", "processor_config.json", "*.safetensors",
                "*.safetensors.index.json", "README.md"]
_CONFIG_FILES = ["config.json", "preprocessor_config.json", "processor_config.json"]


class NonFiniteEmbeddingError(WoundscoreError):
    """The encoder produced NaN/inf even in float32 (the rows are never written)."""


@dataclass(frozen=True)
class Checkpoint:
    """A resolved checkpoint folder. ``revision``: hub commit hash, or "local:<hash>"."""

    path: Path
    model_id: str
    revision: str
    source: str  # "hub" or "local"


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~", "\\")) or (len(model) > 1 and model[1] == ":") or model.count("/") > 1


def local_revision(folder: Path) -> str:
    """"local:" + sha256 (16 hex) of config.json and every weights file, so the same files give
    the same revision on any machine and any change of weights gives another one."""
    h = hashlib.sha256()
    for f in [folder / "config.json"] + sorted(folder.glob("*.safetensors")):
        if not f.is_file():
            continue
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return "local:" + h.hexdigest()[:16]


def _hub_error_message(model: str, err: Exception, *, offline: bool, cache_dir: str) -> str:
    from huggingface_hub import get_token
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    page = f"https://huggingface.co/{model}"
    status = getattr(getattr(err, "response", None), "status_code", None)
    gated = isinstance(err, GatedRepoError) or status in (401, 403)
    if isinstance(err, LocalEntryNotFoundError):
        why = (f"{'HF_HUB_OFFLINE is set' if offline else 'the Hugging Face Hub cannot be reached'} and it is not "
               f"in the local cache ({cache_dir}). Download it once with network access (accept the terms at "
               f"{page}, run `hf auth login` or set HF_TOKEN, then `hf download {model}`).")
    elif isinstance(err, RevisionNotFoundError):
        why = f"revision not found on the hub ({err})."
    elif (gated or isinstance(err, RepositoryNotFoundError)) and get_token() is None:
        why = (f"no Hugging Face token found, and the model is gated (HTTP {status or 401}). Accept the terms at "
               f"{page}, then run `hf auth login` (or set HF_TOKEN) and rerun.")
    elif gated:
        why = (f"access denied (HTTP {status or 403}): the account of your Hugging Face token has not been "
               f"granted access. Accept the terms at {page} with that account (approval is immediate), check "
               "the token with `hf auth whoami`, and rerun.")
    elif isinstance(err, RepositoryNotFoundError):
        why = (f"repository not found on the Hugging Face Hub (HTTP {status or 404}), or your token's account "
               f"cannot see it. Check the id, and for a gated model accept the terms at {page}.")
    elif isinstance(err, HfHubHTTPError):
        why = f"Hugging Face Hub error (HTTP {status}): {err}."
    else:
        why = f"{type(err).__name__}: {err}."
    return f"cannot load {model}: {why} " + OFFLINE_HINT


def resolve_checkpoint(model: str | Path = DEFAULT_MODEL, revision: str | None = None, *, config_only: bool = False,
                       cache_dir: str | Path | None = None) -> Checkpoint:
    """A local folder as is, or a hub id downloaded (or found in the HF cache); ``config_only``
    fetches only the config files (enough for :func:`embed.preprocess.resolve_spec`).

    Raises EncoderLoadError with what to do (missing folder, gated model, no token, offline).
    """
    model_str = str(model)
    folder = Path(model_str).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise EncoderLoadError(f"model folder {folder} has no config.json (is it a SigLIP checkpoint folder?)")
        if revision is not None:
            log.warning("--revision %s ignored: %s is a local folder", revision, folder)
        rev = local_revision(folder) if not config_only else "local"
        return Checkpoint(folder.resolve(), "local/" + folder.resolve().name, rev, "local")
    if isinstance(model, Path) or _looks_like_path(model_str) or folder.exists():
        raise EncoderLoadError(
            f"model folder not found: {model_str}. Pass --model with an existing folder (config.json, "
            f"preprocessor_config.json, model.safetensors) or a hub id such as {DEFAULT_MODEL}."
        )
    from huggingface_hub import constants, snapshot_download

    offline = bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    cdir = str(cache_dir) if cache_dir is not None else constants.HF_HUB_CACHE
    try:
        path = Path(snapshot_download(model_str, revision=revision, cache_dir=cdir, local_files_only=offline,
                                      allow_patterns=_CONFIG_FILES if config_only else _EMBED_FILES))
    except Exception as e:  # every hub failure becomes one actionable message
        raise EncoderLoadError(_hub_error_message(model_str, e, offline=offline, cache_dir=cdir)) from None
    # Snapshot folders are named by the commit hash: that is the revision actually loaded.
    return Checkpoint(path, model_str, path.name, "hub")


def _load_vision_tower(folder: Path, dtype: "torch.dtype", device: str):
    from transformers import SiglipVisionModel

    try:
        with quiet_transformers():
            model, info = SiglipVisionModel.from_pretrained(folder, dtype=dtype, attn_implementation="sdpa",
                                                            use_safetensors=True, output_loading_info=True)
    except Exception as e:
        raise EncoderLoadError(f"cannot load the vision tower from {folder}: {type(e).__name__}: {e}") from None
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        raise EncoderLoadError(
            f"{folder}: the checkpoint lacks vision-tower weights ({len(missing)} missing, e.g. {missing[:3]}); "
            "is it a SigLIP checkpoint?"
        )
    if not getattr(model.config, "vision_use_head", True):
        raise EncoderLoadError(f"{folder}: the vision config has no attention-pooling head (vision_use_head=false)")
    return model.to(device).eval()


class ImageEncoder:
    """Pooled, unnormalised SigLIP image features.

    Attributes:
        model_id: hub id, or "local/<folder name>".
        revision: hub commit hash, or "local:<hash of config and weights>".
        spec: the PreprocessSpec resolved from the checkpoint.
        dtype: torch dtype of the forward pass; device: "cpu", "cuda:0", ...
        dim: embedding size (1152 for MedSigLIP).
        fp32_redone: number of batches redone in float32 after non-finite output.
    """

    def __init__(self, model: Any, spec: PreprocessSpec, *, model_id: str, revision: str, device: str = "cpu",
                 checkpoint_dir: Path | None = None, notice: str | None = None) -> None:
        self._model, self.spec, self.model_id, self.revision, self.device = model, spec, model_id, revision, device
        self.dtype = next(model.parameters()).dtype
        self.dim = int(model.config.hidden_size)
        self.checkpoint_dir, self.notice = checkpoint_dir, notice
        self.fp32_redone = 0
        self._fp32_model = model if str(self.dtype) == "torch.float32" else None

    def _fp32(self):
        import torch

        if self._fp32_model is None:
            if self.checkpoint_dir is not None:  # reload: the fp32 weights, not upcast bf16 ones
                self._fp32_model = _load_vision_tower(self.checkpoint_dir, torch.float32, self.device)
            else:
                self._fp32_model = copy.deepcopy(self._model).float()
        return self._fp32_model

    @staticmethod
    def _forward(model, pixel_values: "torch.Tensor", device: str) -> "torch.Tensor":
        import torch

        dtype = next(model.parameters()).dtype
        with torch.inference_mode():
            out = model(pixel_values=pixel_values.to(device=device, dtype=dtype, non_blocking=True))
            return out.pooler_output.float().cpu()

    def embed_pixels_checked(self, pixel_values: "torch.Tensor") -> tuple[np.ndarray, np.ndarray]:
        """(b, 3, H, W) -> ((b, d) float32, (b,) bool finite). A batch with any non-finite row is
        redone in float32 (logged); rows still non-finite are flagged False, never hidden."""
        import torch

        feats = self._forward(self._model, pixel_values, self.device)
        finite = torch.isfinite(feats).all(dim=1)
        if not bool(finite.all()) and self.dtype != torch.float32:
            log.warning("non-finite embedding in %s for %d of %d images: batch redone in float32",
                        str(self.dtype).replace("torch.", ""), int((~finite).sum()), len(finite))
            self.fp32_redone += 1
            feats = self._forward(self._fp32(), pixel_values, self.device)
            finite = torch.isfinite(feats).all(dim=1)
        return feats.numpy().astype(np.float32, copy=False), finite.numpy()

    def embed_pixels(self, pixel_values: "torch.Tensor") -> np.ndarray:
        """(b, 3, H, W) float pixels (from :func:`preprocess`) -> (b, d) float32 embeddings."""
        feats, finite = self.embed_pixels_checked(pixel_values)
        if not finite.all():
            raise NonFiniteEmbeddingError(
                f"{self.model_id}: non-finite embedding for batch rows {np.flatnonzero(~finite).tolist()} even in float32"
            )
        return feats

    def embed_images(self, images: Sequence["bytes | str | Path | Image.Image"], *,
                     batch_size: int | None = None) -> np.ndarray:
        """Images (bytes, paths or PIL images) -> (n, d) float32, through the one preprocessing.
        Raises ImageDecodeError naming the file for an image that cannot be decoded."""
        import torch

        bs = batch_size or default_batch_size(self.device)
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for start in range(0, len(images), bs):
            chunk = images[start : start + bs]
            pixels = torch.stack([preprocess(load_image(x, spec=self.spec), self.spec) for x in chunk])
            out[start : start + len(chunk)] = self.embed_pixels(pixels)
        return out

    def provenance(self) -> dict[str, Any]:
        """The cache provenance keys this encoder is responsible for."""
        dev = self.device
        if dev.startswith("cuda"):
            import torch

            dev = f"{dev} ({torch.cuda.get_device_name(torch.device(dev))})"
        p: dict[str, Any] = {"encoder_id": self.model_id, "encoder_revision": self.revision, "embedding_dim": self.dim,
                             "preprocessing": self.spec.to_dict(), "compute_dtype": str(self.dtype).replace("torch.", ""),
                             "device": dev, "versions": package_versions()}
        return {**p, "notice": self.notice} if self.notice else p

    def __repr__(self) -> str:
        return (f"ImageEncoder({self.model_id!r}, revision={self.revision!r}, dim={self.dim}, "
                f"dtype={self.dtype}, device={self.device!r}, size={self.spec.size})")


def load_encoder(model: str | Path = DEFAULT_MODEL, revision: str | None = None, device: str = "auto",
                 dtype: str = "auto", *, fast_decode: bool = False, cache_dir: str | Path | None = None) -> ImageEncoder:
    """Load the vision tower (+ attention-pooling head) of a SigLIP checkpoint.

    ``model``: hub id (default google/medsiglip-448, gated) or a local checkpoint folder;
    ``revision``: hub branch/tag/commit (the commit actually loaded is recorded); ``device``:
    "auto", "cpu", "cuda", "cuda:1"; ``dtype``: see :func:`resolve_dtype`; ``fast_decode``: JPEG
    draft-mode decode (recorded in the preprocessing spec).
    Raises EncoderLoadError (missing folder, gated model without access, no token, offline without
    a cached copy): the message says what to do.
    """
    ckpt = resolve_checkpoint(model, revision, cache_dir=cache_dir)
    spec = resolve_spec(ckpt.path).with_decode(fast_decode)
    dev = resolve_device(device)
    tdtype = resolve_dtype(dtype, dev)
    net = _load_vision_tower(ckpt.path, tdtype, dev)
    if net.config.image_size != spec.size[0] or spec.size[0] != spec.size[1]:
        log.warning("processor size %s differs from the model's image_size %s", spec.size, net.config.image_size)
    return ImageEncoder(net, spec, model_id=ckpt.model_id, revision=ckpt.revision, device=dev,
                        checkpoint_dir=ckpt.path, notice=checkpoint_notice(ckpt.path))

