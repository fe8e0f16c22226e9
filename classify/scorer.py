"""Scoring API: image -> the predict contract v2, one JSON-ready dict per image.

README.md, "The predict contract", documents every field. ``scores`` are calibrated probabilities
(``LoadedModel.predict_proba``), ``raw_scores`` the head's own outputs (``predict_raw``), flags use
the thresholds chosen on the calibrated validation scores, and ``in_distribution`` / ``ood`` come
from the model folder's out-of-distribution detector (null for folders without one). Every float
is finite or null (strict JSON). Research use only: not a diagnosis.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.artifacts import EncoderNotGivenError, LoadedModel, load_model_dir

#: Keys of one scored image (an unreadable one has only "image" and "error").
CONTRACT_KEYS = ("image", "scores", "raw_scores", "flags", "thresholds", "in_distribution", "ood", "model")
MODEL_KEYS = ("type", "path", "created", "encoder_id", "encoder_revision", "validation_macro_auc", "calibration",
              "notice")


def origin(x: Any) -> str:
    """The contract's ``image`` for an input: the path as given, "<bytes>", or "<image>" (PIL etc.)."""
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return "<image>"


def finite_or_none(x: Any) -> float | None:
    """A float, or None for None / NaN / inf (the contract is strict JSON)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _calibration_info(model: LoadedModel) -> dict[str, Any] | None:
    cal = getattr(model, "calibration", None)
    # Calibration.identity() stands in for folders without calibration.json (rule "none"): null.
    if cal is None or getattr(cal, "rule", None) == "none":
        return None
    return {"methods": dict(cal.methods), "fitted_on": str(getattr(cal, "fitted_on", "") or "")}


def model_info(model: LoadedModel) -> dict[str, Any]:
    """The contract's ``model`` object (the same for every image of a model)."""
    prov = model.provenance
    enc = prov.get("encoder", {}) or {}
    return {
        "type": model.kind,
        "path": str(model.path),
        "created": prov.get("created"),
        "encoder_id": enc.get("encoder_id"),
        "encoder_revision": enc.get("encoder_revision"),
        "validation_macro_auc": finite_or_none((prov.get("validation") or {}).get("macro_auc")),
        "calibration": _calibration_info(model),
        "notice": prov.get("notice") or None,
    }


class WoundScorer:
    """A loaded model folder plus (lazily) the encoder that makes its embeddings.

    Build it with :meth:`load`. ``encoder`` may be None (the encoder recorded in the model's
    provenance is loaded on first use; for a fine-tune folder, its own backbone), a hub id or
    local checkpoint folder, or an already loaded encoder (``embed.encoder.ImageEncoder`` or the
    same face). An encoder whose id, revision, embedding size or preprocessing differs from the
    training cache's is refused (EncoderMismatchError).
    """

    def __init__(self, model: LoadedModel, encoder: Any = None, *, device: str = "auto", dtype: str = "auto") -> None:
        self.model = model
        self._encoder_arg = encoder
        self._encoder: Any = None
        self.device, self.dtype = device, dtype
        self._model_info = model_info(model)
        if encoder is not None and not isinstance(encoder, (str, os.PathLike)):
            self._set_encoder(encoder)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, encoder: Any = None, *, device: str = "auto",
             dtype: str = "auto") -> "WoundScorer":
        """Load ``model_dir`` (classify.artifacts); ``encoder`` as in the class docstring."""
        return cls(load_model_dir(model_dir), encoder, device=device, dtype=dtype)

    def _set_encoder(self, encoder: Any) -> None:
        self.model.check_compatible(encoder.provenance(), offered=f"encoder {encoder.model_id!r}")
        self._encoder = encoder

    @property
    def encoder_loaded(self) -> bool:
        return self._encoder is not None

    @property
    def encoder(self) -> Any:
        """The image encoder (loaded and checked on first access)."""
        if self._encoder is None:
            if self._encoder_arg is None and self.model.kind == "finetune":
                # the fine-tune's backbone is part of its folder (interface 5)
                self._set_encoder(self.model.estimator.encoder(device=self.device, dtype=self.dtype))
                return self._encoder
            from woundscore.embed.encoder import load_encoder

            enc_prov = self.model.provenance.get("encoder", {})
            if self._encoder_arg is None:
                name, revision = enc_prov.get("encoder_id"), enc_prov.get("encoder_revision")
                # A local checkpoint is recorded as "local/<folder name>" + a content hash: the
                # folder's path is not kept (it moves between machines), so the caller must say it.
                if isinstance(name, str) and name.startswith("local/"):
                    raise EncoderNotGivenError(
                        f"{self.model.path}: the model was trained on embeddings from a local checkpoint "
                        f"({name}, revision {revision}); pass that folder as the encoder "
                        f"(wound-classify predict ... --encoder FOLDER, or WoundScorer.load(..., encoder=FOLDER))"
                    )
            else:  # a path or id given by the caller: its own revision is whatever it holds
                name, revision = os.fspath(self._encoder_arg), None
            self._set_encoder(load_encoder(name, revision=revision, device=self.device, dtype=self.dtype))
        return self._encoder

    def score_embeddings(self, X: Any, provenance: Mapping[str, Any] | None = None) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) float64 CALIBRATED probabilities (LABEL_NAMES order).

        Pass the embeddings' provenance (a cache's or an encoder's) to have it checked; without
        it only the embedding size is checked.
        """
        return self.model.predict_proba(np.asarray(X, dtype=np.float32), provenance)

    def results_for_embeddings(self, X: Any, names: Sequence[str],
                               provenance: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """(n, d) embeddings and their n names -> n contract objects (no encoder needed)."""
        X = np.asarray(X, dtype=np.float32)
        if len(X) == 0:
            return []
        P = self.score_embeddings(X, provenance)
        raw_fn = getattr(self.model, "predict_raw", None)
        R = raw_fn(X, provenance) if raw_fn is not None else P
        ood = getattr(self.model, "ood", None)
        D = ood.distance(X) if ood is not None else None
        return [self.result(P[i], names[i], raw=R[i], distance=None if D is None else D[i]) for i in range(len(X))]

    def result(self, probs: Sequence[float], image: str, *, raw: Sequence[float] | None = None,
               distance: float | None = None) -> dict[str, Any]:
        """The contract object for one image from its (6,) calibrated and raw probabilities and
        its OOD distance (None when the model has no detector)."""
        t = self.model.thresholds["labels"]
        scores = {n: finite_or_none(p) for n, p in zip(LABEL_NAMES, probs)}
        raw_scores = {n: finite_or_none(p) for n, p in zip(LABEL_NAMES, probs if raw is None else raw)}
        thresholds = {n: {"value": float(t[n]["value"]), "rule": t[n]["applied"]} for n in LABEL_NAMES}
        ood = getattr(self.model, "ood", None)
        if ood is None or distance is None:
            in_dist, ood_obj = None, None
        else:
            d, cutoff = finite_or_none(distance), finite_or_none(ood.cutoff)
            # a non-finite distance is not "inside": the detector could not place the image
            in_dist = bool(d is not None and cutoff is not None and d <= cutoff)
            ood_obj = {"distance": d, "cutoff": cutoff, "method": str(ood.method)}
        return {
            "image": image,
            "scores": scores,
            "raw_scores": raw_scores,
            "flags": {n: bool(scores[n] is not None and scores[n] >= thresholds[n]["value"]) for n in LABEL_NAMES},
            "thresholds": thresholds,
            "in_distribution": in_dist,
            "ood": ood_obj,
            "model": dict(self._model_info),
        }

    def score(self, image_or_path: Any) -> dict[str, Any]:
        """One image (path, bytes or PIL image) -> the contract object.

        Raises embed.preprocess.ImageDecodeError for an unreadable image.
        """
        X = self.encoder.embed_images([image_or_path])
        return self.results_for_embeddings(X, [origin(image_or_path)], self.encoder.provenance())[0]

    def score_batch(self, images: Sequence[Any], *, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Images (paths, bytes, PIL images) -> one contract object each, in order, with ONE
        encoder forward for the readable ones. An image that cannot be read or decoded (or whose
        embedding is non-finite) gives ``{"image", "error"}``; the others are scored.
        ``names``: the ``image`` of each result (default: :func:`origin`).
        """
        from woundscore.embed.encoder import NonFiniteEmbeddingError
        from woundscore.embed.preprocess import load_image

        names = [origin(x) for x in images] if names is None else list(names)
        out: list[dict[str, Any] | None] = [None] * len(images)
        decoded, where = [], []
        enc = self.encoder
        spec = getattr(enc, "spec", None)
        for i, x in enumerate(images):
            try:
                decoded.append(load_image(x, spec=spec))
                where.append(i)
            except (WoundscoreError, MemoryError) as exc:  # ImageDecodeError / ImageReadError; a huge canvas
                out[i] = {"image": names[i], "error": _error_text(exc, names[i])}
        if decoded:
            try:
                X = enc.embed_images(decoded, batch_size=len(decoded))
            except NonFiniteEmbeddingError:  # find the culprits one by one; the rest stay scored
                return self._one_by_one(images, names)
            for i, r in zip(where, self.results_for_embeddings(X, [names[i] for i in where], enc.provenance())):
                out[i] = r
        return out  # type: ignore[return-value]

    def prepare(self, image: Any) -> Any:
        """One image (path, bytes or PIL image) -> what :meth:`score_prepared` takes: its (3, H, W)
        float32 pixel tensor through the encoder's one preprocessing (decode, pad to square,
        resize, normalise: the numbers ``embed_images`` and ``wound-embed run`` use), or the
        decoded image for an encoder that offers no ``embed_pixels_checked``. Meant for decode
        threads: the forward then gets only stacked pixels.

        Raises embed.preprocess.ImageDecodeError for an unreadable image (MemoryError for a
        canvas too large to hold).
        """
        from woundscore.embed.preprocess import load_image, preprocess

        enc = self.encoder
        spec = getattr(enc, "spec", None)
        image = load_image(image, spec=spec)
        return preprocess(image, spec) if spec is not None and hasattr(enc, "embed_pixels_checked") else image

    def score_prepared(self, items: Sequence[Any], names: Sequence[str]) -> list[dict[str, Any]]:
        """Items from :meth:`prepare` -> one contract object each, with ONE encoder forward on
        their stacked pixels. A row whose embedding stays non-finite (even redone in float32)
        gives ``{"image", "error"}``; the others are scored."""
        import torch

        if not items:
            return []
        if not all(isinstance(x, torch.Tensor) for x in items):
            return self.score_batch(list(items), names=names)
        enc = self.encoder
        X, finite = enc.embed_pixels_checked(torch.stack(list(items)))
        ok = [i for i in range(len(items)) if finite[i]]
        out: list[dict[str, Any]] = [{"image": names[i], "error": f"{names[i]}: {enc.model_id}: non-finite embedding "
                                      "even in float32"} for i in range(len(items))]
        for i, r in zip(ok, self.results_for_embeddings(X[ok], [names[i] for i in ok], enc.provenance())):
            out[i] = r
        return out

    def _one_by_one(self, images: Sequence[Any], names: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for x, name in zip(images, names):
            try:
                X = self.encoder.embed_images([x])
                out.append(self.results_for_embeddings(X, [name], self.encoder.provenance())[0])
            except (WoundscoreError, MemoryError) as exc:  # NonFiniteEmbeddingError, ImageDecodeError
                out.append({"image": name, "error": _error_text(exc, name)})
        return out

    def score_many(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """Several images, one forward per batch (see :meth:`score_batch`)."""
        return self.score_batch(list(images))


def _error_text(exc: BaseException, name: str) -> str:
    if isinstance(exc, WoundscoreError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return f"{name}: image too large to preprocess in memory"
    return str(exc)
