"""The fine-tuned model's card (``model/README.md``) and its upload to the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from huggingface_hub import HfApi

from woundscore.cache.schema import LABEL_NAMES
from woundscore.compare.finetune_trainer import FineTuneError


_CARD = """---
base_model: {base}
library_name: transformers
pipeline_tag: image-classification
tags:
- woundscore
- medsiglip
- multi-label-classification
- surgical-wound
license: other
---

# woundscore selective-unfreeze fine-tune

{notice}Fine-tune of `{base}` on surgical wound photos for six binary labels ({labels}).
Only the last {n} encoder blocks, the final layer norm{head} and the classifier were trained;
pooling: {pooling}.

**Research use only.** Not a medical device; not validated for clinical decisions. Training photos
are mostly not C-section scars and come from social media.

## Test metrics (ROC AUC, missing labels masked)

| label | AUC | n | positives |
|---|---|---|---|
{rows}
| **macro** | {macro} | | |

{best_val}Point estimates on a small test split: with ~16 positives an AUC's 95% interval is about
+/-0.13. See the woundscore comparison report for bootstrap intervals.

## Training

| setting | value |
|---|---|
{settings}

Loss: masked, pos_weighted binary cross-entropy (classify.loss.masked_bce). Preprocessing: pad to
square (centred, black), resize to the model size (bilinear), normalise to [-1, 1]
(embed.preprocess, the same function as the embeddings).

## Use

This folder is the `model/` part of a woundscore model folder. The whole folder scores images
exactly as woundscore's other heads do (same preprocessing, calibrated scores, thresholds chosen
on the validation split, out-of-distribution flag):

```
wound-serve ft/                          # the scoring service
wound-classify predict ft/ photo.jpg     # one JSON line per image
```

With transformers alone (`config.json` names the six labels in `id2label`):

```python
from PIL import Image, ImageOps
from transformers import AutoImageProcessor, AutoModelForImageClassification

model = AutoModelForImageClassification.from_pretrained("ft/model")
processor = AutoImageProcessor.from_pretrained("ft/model")
image = ImageOps.exif_transpose(Image.open("photo.jpg")).convert("RGB")
side = max(image.size)                   # pad to a square first: centred, black
square = Image.new("RGB", (side, side))
square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
raw = model(**processor(images=square, return_tensors="pt")).logits.sigmoid()
```

- **Inputs must be padded to a square first** (centred, black), as woundscore's preprocessing
  does: the processor only resizes, so a non-square photo would be squashed. (Its resize may
  differ from woundscore's by rounding; a square image at the model size gives the same pixels.)
- `sigmoid(logits)` are the head's **uncalibrated** outputs. The probabilities woundscore reports
  are these after the per-label calibration in the model folder's `calibration.json`, and the
  flags use that folder's `thresholds.json` (chosen on the calibrated validation scores); both
  are uploaded next to this card when it is pushed to the hub.
{pooling_note}"""


_ATTENTION_NOTE = """- This model classifies the attention-pooling head's output (`woundscore_pooling: attention` in
  config.json); `SiglipForImageClassification` mean-pools the patch tokens instead, so with
  transformers alone its logits differ. Score it with woundscore.
"""


def _auc(x: float | None) -> str:
    return "not estimable" if x is None else f"{x:.3f}"


def build_model_card(*, base_model: str, metrics: dict[str, Any], settings: dict[str, Any],
                     notice: str | None = None) -> str:
    """Markdown model card (YAML front matter + metrics table) for ``model/README.md`` and the hub.

    ``metrics``: ``masked_auc`` of the test split (+ optional "best_val_macro_auc"); ``settings``:
    the training settings table (unfreeze_last and pooling are also named in the text).
    """
    per = metrics.get("per_label", {})
    best = metrics.get("best_val_macro_auc")
    return _CARD.format(
        base=base_model, notice=f"> **Notice:** {notice}\n\n" if notice else "", labels=", ".join(LABEL_NAMES),
        n=settings.get("unfreeze_last"), pooling=settings.get("pooling"),
        head=", the attention-pooling head" if settings.get("pooling") == "attention" else "",
        rows="\n".join(f"| {name} | {_auc(per.get(name, {}).get('auc'))} | {per.get(name, {}).get('n', 0)} | "
                       f"{per.get(name, {}).get('positives', 0)} |" for name in LABEL_NAMES),
        macro=_auc(metrics.get("macro_auc")),
        best_val=f"Best validation macro AUC (checkpoint selection): {best:.3f}\n\n" if best is not None else "",
        settings="\n".join(f"| {k} | {settings[k]} |" for k in sorted(settings)),
        pooling_note=_ATTENTION_NOTE if settings.get("pooling") == "attention" else "",
    )


def push_to_hub(model_dir: Path, repo: str, *, extra: Sequence[Path] = ()) -> None:
    """Upload ``model_dir`` (weights, config, processor config, card) and the ``extra`` files
    (the model folder's calibration.json and thresholds.json) to a private hub repo; the token
    stays with huggingface_hub."""
    api = HfApi()
    try:
        api.create_repo(repo, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(model_dir), commit_message="woundscore fine-tune")
        for f in extra:
            if Path(f).is_file():
                api.upload_file(path_or_fileobj=str(f), path_in_repo=Path(f).name, repo_id=repo,
                                commit_message=f"woundscore fine-tune: {Path(f).name}")
    except Exception as e:  # noqa: BLE001 - network/auth errors of many kinds
        raise FineTuneError(
            f"push to {repo!r} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(the model is saved in {model_dir}; log in with `hf auth login` and retry)"
        ) from e
