"""Scoring API: image -> six probabilities, flags and thresholds, as one JSON-ready dict per image:
README.md, "The predict contract", documents every field. Research use only: not a diagnosis.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.artifacts import EncoderNotGivenError, LoadedModel, load_model_dir


def _origin(x: Any) -> str:
    if isinstance(x, (str, os.PathLike)):
        return os.fspath(x)
    if isinstance(x, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return "<image>"


class WoundScorer:
    """A loaded model folder plus (lazily) the encoder that makes its embeddings.

    Build it with :meth:`load`. ``encoder`` may be None (the encoder recorded in the model's
    provenance is loaded on first use), a hub id or local checkpoint folder, or an already
    loaded ``embed.encoder.ImageEncoder``. An encoder whose id, revision, embedding size or
    preprocessing differs from the training cache's is refused (EncoderMismatchError).
    """

    def __init__(self, model: LoadedModel, encoder: Any = None, *, device: str = "auto", dtype: str = "auto") -> None:
        self.model = model
        self._encoder_arg = encoder
        self._encoder: Any = None
        self.device, self.dtype = device, dtype
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
    def encoder(self) -> Any:
        """The image encoder (loaded and checked on first access)."""
        if self._encoder is None:
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
        """(n, d) embeddings -> (n, 6) float64 probabilities (LABEL_NAMES order).

        Pass the embeddings' provenance (a cache's or an encoder's) to have it checked; without
        it only the embedding size is checked.
        """
        return self.model.predict_proba(np.asarray(X, dtype=np.float32), provenance)

    def result(self, probs: Sequence[float], image: str) -> dict[str, Any]:
        """The JSON object for one image from its (6,) probabilities."""
        t = self.model.thresholds["labels"]
        scores = {n: float(p) for n, p in zip(LABEL_NAMES, probs)}
        prov = self.model.provenance
        enc = prov.get("encoder", {})
        return {
            "image": image,
            "scores": scores,
            "flags": {n: bool(scores[n] >= float(t[n]["value"])) for n in LABEL_NAMES},
            "thresholds": {n: {"value": float(t[n]["value"]), "rule": t[n]["applied"]} for n in LABEL_NAMES},
            "model": {
                "type": self.model.kind,
                "path": str(self.model.path),
                "created": prov.get("created"),
                "encoder_id": enc.get("encoder_id"),
                "encoder_revision": enc.get("encoder_revision"),
                "validation_macro_auc": (prov.get("validation") or {}).get("macro_auc"),
                "notice": prov.get("notice") or None,
            },
        }

    def score(self, image_or_path: Any) -> dict[str, Any]:
        """One image (path, bytes or PIL image) -> the JSON object (README, "The predict contract").

        Raises embed.preprocess.ImageDecodeError for an unreadable image.
        """
        X = self.encoder.embed_images([image_or_path])
        return self.result(self.score_embeddings(X, self.encoder.provenance())[0], _origin(image_or_path))

    def score_many(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """Several images; one that cannot be read or decoded gives ``{"image", "error"}``."""
        from woundscore.embed.encoder import NonFiniteEmbeddingError
        from woundscore.embed.preprocess import ImageDecodeError

        out = []
        for x in images:
            try:
                out.append(self.score(x))
            except (ImageDecodeError, NonFiniteEmbeddingError) as exc:
                out.append({"image": _origin(x), "error": str(exc)})
        return out

