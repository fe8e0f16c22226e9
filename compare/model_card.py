"""The fine-tuned model's card (``model/README.md``) and its upload to the hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

from woundscore.cache.schema import LABEL_NAMES
from woundscore.compare.finetune_trainer import FineTuneError


def build_model_card(*, base_model: str, metrics: dict[str, Any], settings: dict[str, Any],
                     notice: str | None = None) -> str:
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


def push_to_hub(model_dir: Path, repo: str) -> None:
    """Upload ``model_dir`` (weights, config, card) to a private hub repo; the token stays with huggingface_hub."""
    api = HfApi()
    try:
        api.create_repo(repo, private=True, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(model_dir), commit_message="woundscore fine-tune")
    except Exception as e:  # noqa: BLE001 - network/auth errors of many kinds
        raise FineTuneError(
            f"push to {repo!r} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            f"(the model is saved in {model_dir}; log in with `hf auth login` and retry)"
        ) from e
