"""Zero-shot MedSigLIP: each label scored by a positive and a negative text prompt, no training.

``p(label) = softmax([logit_pos, logit_neg])[0] = sigmoid(exp(logit_scale) * (cos_pos - cos_neg))``
(SigLIP's bias cancels). The pair's contrast asks "which of the two descriptions fits better",
the clinical question; each prompt's own sigmoid would ask "does this caption match at all", low
for most captions on any wound photo. Images go through ``embed.preprocess`` like every other
method; prompts are tokenized as SigLIP was trained (``padding="max_length"``, 64 tokens: other
padding changes the text embedding).

torch and transformers are imported inside the functions: the report imports this module to
score zero-shot only when asked.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES
from woundscore.compare.predictions import check_writable_file, write_predictions
from woundscore.compare.render import printable
from woundscore.embed.encoder import resolve_checkpoint
from woundscore.embed.preprocess import load_image, preprocess, preprocess_bytes, resolve_spec
from woundscore.embed.runtime import DEFAULT_MODEL, checkpoint_notice, quiet_transformers, resolve_device
from woundscore.embed.sources import open_source
from woundscore.embed.tiny import ASSETS

#: Per label (in ``LABEL_NAMES`` order): (positive prompt, negative prompt). Clinically worded
#: after the SurgWound annotation questions; the negative prompt mirrors the positive one so that
#: the pair differs in the finding only.
PROMPTS: dict[str, tuple[str, str]] = {
    "healing_status": ("a photo of a surgical incision that has not healed, with open or separated wound edges",
                       "a photo of a surgical incision that has healed, with closed wound edges"),
    "erythema": ("a photo of a surgical wound with redness around the incision",
                 "a photo of a surgical wound without redness around the incision"),
    "edema": ("a photo of a surgical wound with swelling of the surrounding skin",
              "a photo of a surgical wound without swelling of the surrounding skin"),
    "infection_risk": ("a photo of a surgical wound with signs of infection",
                       "a photo of a surgical wound without signs of infection"),
    "urgency": ("a photo of a surgical wound that needs prompt medical attention",
                "a photo of a surgical wound that needs only routine home care"),
    "exudate": ("a photo of a surgical wound with fluid, blood or pus draining from the incision",
                "a photo of a dry surgical wound without any drainage"),
}

#: SigLIP's text length at training time.
MAX_TEXT_LENGTH = 64


class ZeroShotError(WoundscoreError):
    """The checkpoint cannot score zero-shot (no text tower, no tokenizer, not loadable)."""


class SourceMismatchError(ZeroShotError):
    """The source's images are not the cache's (another sha256 for an id): refused, never skipped."""


def tokenize_prompts(tokenizer: Any, texts: Sequence[str], *, max_length: int = MAX_TEXT_LENGTH) -> Any:
    """Token ids (len(texts), max_length) the way SigLIP was trained: padded to ``max_length``."""
    return tokenizer(list(texts), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")


def _pooled(out: Any) -> Any:
    # transformers >= 5 returns an output object from get_*_features; 4.x a tensor.
    return out.pooler_output if hasattr(out, "pooler_output") else out


@dataclass
class ZeroShotModel:
    """A loaded SigLIP (vision + text) with the prompt embeddings precomputed.

    Attributes:
        model: ``SiglipModel`` in eval mode.  spec: the ``embed.preprocess.PreprocessSpec``.
        text_pos, text_neg: (6, d) L2-normalised prompt embeddings.  scale: exp(logit_scale).
    """

    model: Any
    spec: Any
    device: str
    text_pos: Any
    text_neg: Any
    scale: float
    model_id: str = ""
    revision: str = ""
    notice: str | None = None
    autocast_dtype: Any = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike, *, revision: str | None = None,
                        device: str = "auto") -> "ZeroShotModel":
        """Load a full SigLIP checkpoint (both towers) and its tokenizer from a folder or hub id."""
        import torch
        from transformers import AutoModel, AutoTokenizer

        dev = resolve_device(device)
        ckpt = resolve_checkpoint(str(model), revision)
        try:
            with quiet_transformers():
                net = AutoModel.from_pretrained(str(ckpt.path), attn_implementation="sdpa")
        except (OSError, ValueError, KeyError) as e:
            raise ZeroShotError(f"cannot load {ckpt.path}: {str(e).splitlines()[0]}") from e
        if not hasattr(net, "get_text_features"):
            raise ZeroShotError(
                f"{model}: checkpoint has no text tower ({type(net).__name__}); zero-shot needs the full SigLIP model"
            )
        # The checkpoint's own tokenizer when its folder has one; else the vendored copy of
        # MedSigLIP's SentencePiece tokenizer (embed/assets, Apache-2.0): embed downloads weights
        # and configs only.
        has_own = any((ckpt.path / f).is_file() for f in ("spiece.model", "tokenizer.json"))
        tokenizer = ckpt.path if has_own else ASSETS
        try:
            tok = AutoTokenizer.from_pretrained(str(tokenizer))
        except (OSError, ValueError, ImportError) as e:
            raise ZeroShotError(f"cannot load the tokenizer in {tokenizer}: {str(e).splitlines()[0]}") from e
        vocab = net.config.text_config.vocab_size
        if len(tok) > vocab:
            raise ZeroShotError(f"{tokenizer}: tokenizer has {len(tok)} tokens, text tower only {vocab}")
        net.eval().to(dev)
        max_len = getattr(net.config.text_config, "max_position_embeddings", MAX_TEXT_LENGTH)
        texts = [PROMPTS[k][0] for k in LABEL_NAMES] + [PROMPTS[k][1] for k in LABEL_NAMES]
        enc = tokenize_prompts(tok, texts, max_length=min(MAX_TEXT_LENGTH, max_len))
        with torch.inference_mode():
            t = _pooled(net.get_text_features(input_ids=enc["input_ids"].to(dev))).float()
            t = t / t.norm(dim=-1, keepdim=True)
            scale = float(net.logit_scale.exp().item())
        n = len(LABEL_NAMES)
        return cls(model=net, spec=resolve_spec(ckpt.path), device=dev, text_pos=t[:n], text_neg=t[n:], scale=scale,
                   model_id=ckpt.model_id, revision=ckpt.revision, notice=checkpoint_notice(ckpt.path),
                   autocast_dtype=torch.bfloat16 if dev != "cpu" and torch.cuda.is_bf16_supported() else None)

    def probabilities_from_pixels(self, pixel_values: Any) -> np.ndarray:
        """(b, 3, H, W) preprocessed pixels -> (b, 6) p(label) = sigmoid(scale * (cos_pos - cos_neg))."""
        import torch

        amp = self.autocast_dtype
        with torch.inference_mode(), torch.autocast(torch.device(self.device).type, enabled=amp is not None,
                                                    dtype=amp or torch.float32):
            img = _pooled(self.model.get_image_features(pixel_values=pixel_values.to(self.device))).float()
        img = img / img.norm(dim=-1, keepdim=True)
        diff = img @ self.text_pos.T - img @ self.text_neg.T  # (b, 6) cos_pos - cos_neg
        return torch.sigmoid(self.scale * diff).cpu().numpy().astype(np.float64)


def _as_model(model: Any, device: str, revision: str | None) -> ZeroShotModel:
    if isinstance(model, ZeroShotModel):
        return model
    return ZeroShotModel.from_pretrained(model, revision=revision, device=device)


def zero_shot_probabilities(model: "str | os.PathLike | ZeroShotModel", images: Sequence[Any], *, device: str = "auto",
                            batch_size: int = 8, revision: str | None = None) -> np.ndarray:
    """Zero-shot p(label) for images.

    Args:
        model: hub id / folder of a full SigLIP checkpoint, or a loaded :class:`ZeroShotModel`.
        images: bytes, paths or PIL images (decoded and preprocessed by ``embed.preprocess``).

    Returns (n, 6) float64 probabilities in ``LABEL_NAMES`` order. Raises ZeroShotError, or
    embed.preprocess.ImageDecodeError for an unreadable image.
    """
    import torch

    zs = _as_model(model, device, revision)
    out = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        pixels = torch.stack([preprocess(load_image(x, spec=zs.spec), zs.spec) for x in chunk])
        out.append(zs.probabilities_from_pixels(pixels))
    if not out:
        return np.zeros((0, len(LABEL_NAMES)), dtype=np.float64)
    return np.concatenate(out)


@dataclass
class ZeroShotResult:
    """Scores of one split of a source: ids (n,), P (n, 6), skipped [{"image_id", "reason"}], cost."""

    ids: np.ndarray
    P: np.ndarray
    skipped: list[dict[str, str]]
    meta: dict[str, Any]


def _select(samples: list[Any], source: Any, split: str | None, ids: Sequence[str] | None) -> list[Any]:
    """The samples of ``split`` (all with None), or those with the given image ids in their order."""
    if ids is None:
        chosen = [s for s in samples if split is None or s.split == split]
    else:
        by_id = {s.image_id: s for s in samples}
        missing = [i for i in ids if str(i) not in by_id]
        if missing:
            raise ZeroShotError(f"{source}: {len(missing)} image id(s) not in the source, e.g. {missing[0]!r}")
        chosen = [by_id[str(i)] for i in ids]
    if not chosen:
        raise ZeroShotError(f"{source}: no images in split {split!r}")
    return chosen


def _score(zs: ZeroShotModel, chosen: list[Any], batch_size: int, quiet: bool,
           ) -> tuple[list[str], np.ndarray, list[dict[str, str]], float]:
    """(scored ids, (n, 6) probabilities, skipped [{"image_id", "reason"}], seconds in the model)."""
    import torch
    from tqdm.auto import tqdm

    kept_ids: list[str] = []
    probs: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    score_s = 0.0
    with tqdm(total=len(chosen), desc="zero-shot", unit="img", disable=quiet) as bar:
        for start in range(0, len(chosen), batch_size):
            pixels = []
            for s in chosen[start : start + batch_size]:
                try:
                    pixels.append(preprocess_bytes(s.read_bytes(), zs.spec, origin=s.origin))
                    kept_ids.append(s.image_id)
                except Exception as e:  # noqa: BLE001 - ImageReadError / ImageDecodeError
                    skipped.append({"image_id": s.image_id, "reason": str(e) or type(e).__name__})
            if pixels:
                t0 = time.perf_counter()
                probs.append(zs.probabilities_from_pixels(torch.stack(pixels)))
                score_s += time.perf_counter() - t0
            bar.update(len(chosen[start : start + batch_size]))
    return kept_ids, np.concatenate(probs) if probs else np.zeros((0, len(LABEL_NAMES))), skipped, score_s


def check_same_images(source: Any, chosen: Sequence[Any], expected_sha256: Mapping[str, str]) -> None:
    """Refuse (ZeroShotError) when an image of ``chosen`` (source samples) has other bytes than the
    cache recorded for its id (``expected_sha256``: id -> sha256 hex): zero-shot would then score
    other photos than the methods it is compared with. Unreadable images are left to scoring,
    which skips and lists them."""
    import hashlib

    differ = []
    for s in chosen:
        want = expected_sha256.get(str(s.image_id))
        try:
            data = s.read_bytes()
        except Exception:  # noqa: BLE001 - an unreadable image is skipped (with its reason) when scored
            continue
        if want and hashlib.sha256(data).hexdigest() != str(want):
            differ.append(str(s.image_id))
    if differ:
        shown = ", ".join(repr(i) for i in differ[:5]) + (", ..." if len(differ) > 5 else "")
        raise SourceMismatchError(f"{source}: {len(differ)} image(s) differ from the cache's (sha256 per id): {shown}; "
                            "zero-shot must score the cache's own images (use the source the cache was made from)")


def zero_shot_source(source: str | os.PathLike, model: "str | os.PathLike | ZeroShotModel", *,
                     split: str | None = "test", ids: Sequence[str] | None = None, device: str = "auto",
                     batch_size: int = 8, revision: str | None = None, quiet: bool = True,
                     expected_sha256: Mapping[str, str] | None = None) -> ZeroShotResult:
    """Zero-shot scores for the images of a source (one split, or the given image ids, e.g. a cache's).

    Unreadable images are skipped and listed in ``skipped`` (never scored as 0).
    ``expected_sha256`` (id -> sha256): the cache's record; an image with other bytes is refused
    before the model loads. Raises ZeroShotError (unknown ids, empty selection, other images),
    embed.sources.SourceError.
    """
    src = open_source(source)
    chosen = _select(src.samples(), src.path, split, ids)
    if expected_sha256 is not None:
        check_same_images(src.path, chosen, expected_sha256)
    t_load = time.perf_counter()
    zs = _as_model(model, device, revision)
    load_s = time.perf_counter() - t_load
    kept_ids, P, skipped, score_s = _score(zs, chosen, batch_size, quiet)
    meta = {
        "method": "zero-shot MedSigLIP (positive vs negative prompt per label)", "train_seconds": 0.0,
        "trainable_params": 0, "total_params": int(sum(p.numel() for p in zs.model.parameters())),
        "device": zs.device, "inference_ms_per_image": round(1000.0 * score_s / max(len(kept_ids), 1), 3),
        "model_load_seconds": round(load_s, 3), "model": zs.model_id, "revision": zs.revision,
        "prompts": {k: list(v) for k, v in PROMPTS.items()},
        "scoring": "sigmoid(exp(logit_scale) * (cos_pos - cos_neg)) = softmax over [pos, neg] logits",
        "skipped_images": skipped, "notes": "no training; prompts in compare/zeroshot.py PROMPTS",
    }
    notice = "; ".join(dict.fromkeys(n for n in (getattr(src, "notice", None), zs.notice) if n)) or None
    if notice:
        meta["notice"] = notice
    return ZeroShotResult(ids=np.asarray(kept_ids, dtype=str), P=P, skipped=skipped, meta=meta)


def run_zero_shot(source: str | os.PathLike, out: str | os.PathLike, *, model: str | os.PathLike = DEFAULT_MODEL,
                  split: str = "test", device: str = "auto", batch_size: int = 8, revision: str | None = None,
                  quiet: bool = False) -> ZeroShotResult:
    """Score a split of ``source`` and write ``out`` (predictions CSV) + its ``.json`` sidecar.
    ``out`` is checked to be writable before the model loads."""
    check_writable_file(out)
    res = zero_shot_source(source, model, split=split, device=device, batch_size=batch_size, revision=revision,
                           quiet=quiet)
    if len(res.ids) == 0:
        raise ZeroShotError(f"{source}: every image of split {split!r} failed to load; nothing written")
    write_predictions(Path(out), res.ids, res.P, meta=res.meta)
    if not quiet:
        for s in res.skipped:
            print(printable(f"skipped {s['image_id']}: {s['reason']}"), file=sys.stderr)
    return res
