"""The fine-tune's head as a model-folder estimator: scored like the MLP and the probe.

``wound-compare finetune --out ft/`` saves ``ft/`` as a model folder (classify.artifacts, kind
"finetune"). Its "embeddings" are the fine-tuned backbone's pooled features, the same vector the
fine-tune's classifier reads:

- ``pooling="mean"`` (the seed's model, ``SiglipForImageClassification`` as is): the mean over the
  patch tokens of the post-layernorm ``last_hidden_state``;
- ``pooling="attention"``: the vision tower's attention-pooling head (``pooler_output``).

:class:`FineTunedHead` is ``sigmoid(classifier(features))`` in numpy; :meth:`FineTunedHead.encoder`
is the fine-tuned backbone behind ``embed.encoder.ImageEncoder`` (the one preprocessing,
``embed.preprocess``), whose provenance carries the identity the folder records:
``encoder_id = "finetune/<base model id>"``, ``encoder_revision = "weights:<sha256 of the
fine-tuned weights, 16 hex>"``, ``embedding_dim``, ``preprocessing``. Any other encoder is refused
by the usual compatibility check, and changed weights give another revision.

Folder layout (beside thresholds.json, calibration.json, ood.npz, schema.json, provenance.json)::

    model/   config.json (6 labels in id2label/label2id, woundscore_pooling, woundscore_base_model),
             model.safetensors, preprocessor_config.json (SiglipImageProcessor), README.md (card)

torch and transformers are imported only inside :meth:`FineTunedHead.encoder`, :meth:`save_to`
and :func:`weights_revision`: loading the folder to score features costs numpy and safetensors.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
from scipy.special import expit

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.artifacts import ArtifactError
from woundscore.embed.preprocess import PreprocessConfigError, PreprocessSpec, resolve_spec
from woundscore.embed.runtime import checkpoint_notice, quiet_transformers, resolve_device, resolve_dtype

if TYPE_CHECKING:
    from woundscore.embed.encoder import ImageEncoder

MODEL_SUBDIR = "model"
POOLINGS = ("mean", "attention")
ENCODER_PREFIX = "finetune/"
_RESAMPLE_PIL = {"bilinear": 2, "bicubic": 3}  # PIL.Image.Resampling values, as HF processors store them


def weights_revision(state_dict: Mapping[str, Any]) -> str:
    """"weights:" + sha256 (16 hex) over every tensor's name, dtype, shape and bytes, in name
    order: the same weights give the same revision however they were saved or loaded."""
    import torch

    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach().to("cpu").contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "weights:" + h.hexdigest()[:16]


def _read_config(model_dir: Path) -> dict[str, Any]:
    f = model_dir / "config.json"
    try:
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{model_dir.parent}: not a fine-tune model folder ({MODEL_SUBDIR}/config.json is missing)") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{f}: unreadable ({exc})") from None
    id2label = {int(k): v for k, v in (cfg.get("id2label") or {}).items()}
    if [id2label.get(i) for i in range(len(LABEL_NAMES))] != list(LABEL_NAMES) or len(id2label) != len(LABEL_NAMES):
        raise ArtifactError(f"{f}: id2label {cfg.get('id2label')!r} is not woundscore's six labels in order")
    if cfg.get("woundscore_pooling") not in POOLINGS:
        raise ArtifactError(f"{f}: woundscore_pooling is {cfg.get('woundscore_pooling')!r}; "
                            f"expected one of {', '.join(POOLINGS)}")
    return cfg


def _read_classifier(model_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(6, d) weight and (6,) bias of the classifier layer, read with numpy (no torch)."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    names = {"classifier.weight": "model.safetensors", "classifier.bias": "model.safetensors"}
    if index.is_file():  # sharded save: the index names the file of each tensor
        try:
            wmap = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = {k: wmap[k] for k in names}
        except (OSError, ValueError, KeyError) as exc:
            raise ArtifactError(f"{index}: no classifier weights listed ({exc})") from None
    out = []
    for key, fname in names.items():
        f = model_dir / fname
        try:
            with safe_open(str(f), framework="numpy") as st:
                out.append(np.asarray(st.get_tensor(key), dtype=np.float64))
        except Exception as exc:  # noqa: BLE001 - missing file/key, bad header, unsupported dtype
            raise ArtifactError(f"{f}: cannot read {key} ({type(exc).__name__}: {exc})") from None
        if not np.all(np.isfinite(out[-1])):
            raise ArtifactError(f"{f}: weight {key!r} holds non-finite values")
    weight, bias = out
    if weight.ndim != 2 or weight.shape[0] != len(LABEL_NAMES) or bias.shape != (len(LABEL_NAMES),):
        raise ArtifactError(f"{model_dir}: classifier shapes {weight.shape} / {bias.shape}; expected (6, d) / (6,)")
    return weight, bias


class FineTunedHead:
    """sigmoid(classifier) on the fine-tuned backbone's pooled features.

    Build it with :meth:`from_model` (after training: keeps the torch model to save) or
    :meth:`load` (from a model folder). ``coef_`` (6, d) and ``intercept_`` (6,) are the classifier
    layer in float64; ``spec`` the preprocessing; ``revision`` the weights hash (None until the
    backbone is loaded, for a folder: the folder's provenance records it).
    """

    def __init__(self, coef: np.ndarray, intercept: np.ndarray, *, pooling: str, base_model: str,
                 spec: PreprocessSpec, revision: str | None = None, notice: str | None = None,
                 card: str | None = None, net: Any = None, folder: Path | None = None) -> None:
        self.coef_, self.intercept_ = np.asarray(coef, dtype=np.float64), np.asarray(intercept, dtype=np.float64)
        self.pooling, self.base_model, self.spec = pooling, base_model, spec
        self.revision, self.notice, self.card = revision, notice, card
        self._net, self.folder = net, folder

    @classmethod
    def from_model(cls, net: Any, *, pooling: str, base_model: str, spec: PreprocessSpec,
                   notice: str | None = None, card: str | None = None) -> "FineTunedHead":
        """From a trained ``SiglipForImageClassification`` (float32 weights); ``card`` becomes model/README.md."""
        if pooling not in POOLINGS:
            raise ArtifactError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        w = net.classifier.weight.detach().float().cpu().numpy()
        b = net.classifier.bias.detach().float().cpu().numpy()
        return cls(w, b, pooling=pooling, base_model=base_model, spec=spec, revision=weights_revision(net.state_dict()),
                   notice=notice, card=card, net=net)

    @property
    def n_features_in_(self) -> int:
        return int(self.coef_.shape[1])

    def identity(self) -> dict[str, Any]:
        """The encoder identity of this head's features (classify.artifacts.ENCODER_KEYS)."""
        return {"encoder_id": ENCODER_PREFIX + self.base_model, "encoder_revision": self.revision,
                "embedding_dim": self.n_features_in_, "preprocessing": self.spec.to_dict()}

    def predict_logits(self, X: np.ndarray) -> np.ndarray:
        """(n, d) pooled features -> (n, 6) float64 logits."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ArtifactError(f"features of shape {X.shape}; this fine-tune head takes (n, {self.n_features_in_})")
        return X @ self.coef_.T + self.intercept_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, d) pooled features -> (n, 6) float64 probabilities (uncalibrated)."""
        return expit(self.predict_logits(X))

    def save_to(self, folder: Path) -> None:
        """Write ``folder/model/``: weights + config (``save_pretrained``), the image processor
        config (``AutoImageProcessor`` loads it), and the model card when one was given."""
        if self._net is None:
            raise ArtifactError("this FineTunedHead was loaded from a folder; copy that folder instead of saving it")
        from transformers import SiglipImageProcessor

        model_dir = Path(folder) / MODEL_SUBDIR
        cfg = self._net.config
        cfg.woundscore_pooling, cfg.woundscore_base_model = self.pooling, self.base_model
        with quiet_transformers():
            self._net.save_pretrained(model_dir, safe_serialization=True)
        h, w = self.spec.size
        # The processor only resizes: woundscore pads to a square first (model card), so a
        # square image gives the same pixels either way.
        SiglipImageProcessor(size={"height": h, "width": w}, resample=_RESAMPLE_PIL[self.spec.resample],
                             image_mean=list(self.spec.mean), image_std=list(self.spec.std),
                             do_resize=True, do_rescale=True, do_normalize=True).save_pretrained(model_dir)
        if self.card:
            (model_dir / "README.md").write_text(self.card, encoding="utf-8")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "FineTunedHead":
        """The head of a fine-tune model folder (``folder/model/``); ArtifactError naming the file otherwise."""
        model_dir = Path(folder) / MODEL_SUBDIR
        cfg = _read_config(model_dir)
        weight, bias = _read_classifier(model_dir)
        try:
            spec = resolve_spec(model_dir)
        except (PreprocessConfigError, OSError, ValueError) as exc:
            raise ArtifactError(f"{model_dir}: {exc}") from None
        return cls(weight, bias, pooling=cfg["woundscore_pooling"],
                   base_model=str(cfg.get("woundscore_base_model") or "unknown"), spec=spec,
                   notice=checkpoint_notice(model_dir), folder=Path(folder))

    def encoder(self, device: str = "auto", dtype: str = "auto") -> "ImageEncoder":
        """The fine-tuned backbone as an ``embed.encoder.ImageEncoder``: images -> (n, d) pooled
        features through ``embed.preprocess``; its provenance() carries :meth:`identity`, with the
        revision hashed from the weights as loaded (float32, before any cast to ``dtype``)."""
        import copy

        import torch
        from transformers import SiglipForImageClassification

        from woundscore.embed.encoder import ImageEncoder

        model_dir = (self.folder or Path(".")) / MODEL_SUBDIR
        dev = resolve_device(device)
        if self._net is not None:  # just trained: the weights in memory (shared, not copied, when no cast)
            net, info, owned = self._net, {}, False
        else:
            try:
                with quiet_transformers():
                    net, info = SiglipForImageClassification.from_pretrained(
                        model_dir, dtype=torch.float32, use_safetensors=True, attn_implementation="sdpa",
                        output_loading_info=True)
            except Exception as exc:  # noqa: BLE001 - transformers raises many types for bad folders
                raise ArtifactError(f"{model_dir}: cannot load the fine-tuned backbone "
                                    f"({type(exc).__name__}: {exc})") from None
            owned = True
        missing = sorted(info.get("missing_keys") or [])
        if missing:
            raise ArtifactError(f"{model_dir}: the weights lack {len(missing)} tensors, e.g. {missing[:3]}")
        self.revision = weights_revision(net.state_dict())
        vision, tdtype = net.vision_model, resolve_dtype(dtype, dev)
        first = next(vision.parameters())
        if not owned and (first.dtype != tdtype or first.device != torch.device(dev)):
            vision, owned = copy.deepcopy(vision), True
        backbone = _pooled_backbone(vision, self.pooling, skip_head=owned).to(device=dev, dtype=tdtype).eval()
        return ImageEncoder(backbone, self.spec, model_id=ENCODER_PREFIX + self.base_model, revision=self.revision,
                            device=dev, checkpoint_dir=None, notice=self.notice)

    def __repr__(self) -> str:
        return (f"FineTunedHead(base={self.base_model!r}, pooling={self.pooling!r}, dim={self.n_features_in_}, "
                f"revision={self.revision!r})")


def _pooled_backbone(vision: Any, pooling: str, *, skip_head: bool) -> Any:
    """An nn.Module around a ``SiglipVisionModel`` (taken over, not copied): forward(pixel_values)
    -> an output whose ``pooler_output`` (b, d) is the fine-tune's pooled feature (what
    ImageEncoder reads). ``skip_head``: with mean pooling, switch the unused attention-pool head
    off (only on a module nobody else uses)."""
    import torch
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    class PooledBackbone(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.vision, self.config, self.pooling = vision, vision.config, pooling
            if pooling == "mean" and skip_head:
                vision.use_head = False  # its output is not used: skip the attention-pool forward

        def forward(self, pixel_values: torch.Tensor) -> BaseModelOutputWithPooling:
            out = self.vision(pixel_values=pixel_values)
            # mean: what SiglipForImageClassification.forward does before its classifier
            pooled = out.last_hidden_state.mean(dim=1) if self.pooling == "mean" else out.pooler_output
            return BaseModelOutputWithPooling(last_hidden_state=out.last_hidden_state, pooler_output=pooled)

    return PooledBackbone()
