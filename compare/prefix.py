"""Selective unfreezing of a SigLIP image classifier, and the frozen-prefix cache.

The fine-tune trains only the last ``N`` blocks, ``post_layernorm``, the pooling head
(``pooling="attention"`` only) and the classifier. With no augmentation and no dropout, the frozen
part (patch embedding + the first ``L - N`` blocks) gives the same output for an image every
epoch, so :func:`compute_prefix` runs it once per image and :class:`SelectiveUnfreezeClassifier`
trains on those hidden states (``prefix_states``): same logits, loss and gradients (bit for bit
in float32; ``tests/test_finetune.py``; a real-size bf16 run on an H200 gave test probabilities
within 1.3e-3 of the plain path, not separated from GPU backward nondeterminism), each step
running only the last ``N`` blocks.

Cost (MedSigLIP: 27 blocks; a block's backward ~ 2x its forward): a plain step ~27 + 2N
block-forwards, a prefix step ~3N, so N=4 caps the speed-up at ~2.9x per step (measured: README,
section "Benchmarks"; ``bench/bench_finetune_step.py``). Memory: one image's prefix is 1024 tokens
x 1152 float32 = 4.7 MB, ~3.2 GB of host RAM for SurgWound's 686 images.

Pooling: ``SiglipForImageClassification`` mean-pools the patch tokens and ignores the
attention-pooling head that produced the cached embeddings. ``pooling="mean"`` keeps the seed's
model (comparable with the public fine-tune result); ``pooling="attention"`` classifies
``pooler_output`` (the MAP head, as the MLP's embeddings do) and trains that head too.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch  # this module is the torch boundary of the fine-tune: imported only when one runs
from torch import nn
from transformers.modeling_outputs import ImageClassifierOutput

from woundscore.cache.errors import WoundscoreError

POOLINGS = ("mean", "attention")


class UnfreezeError(WoundscoreError, ValueError):
    """An unfreeze setting the model cannot satisfy (too many blocks, unknown pooling, dropout)."""


class SelectiveUnfreezeClassifier(nn.Module):
    """A ``SiglipForImageClassification`` with only its top unfrozen, trainable from pixels or prefixes.

    ``base`` is the only submodule, so ``state_dict`` keys are its keys prefixed with ``base.``;
    ``unfreeze_last``: N of the L blocks (0..L). ``forward(pixel_values=(b, 3, H, W))`` or
    ``forward(prefix_states=(b, T, D))`` returns an ``ImageClassifierOutput`` with ``logits``
    (b, num_labels); ``labels`` are accepted (the Trainer's ``compute_loss_func`` uses them), ignored.
    """

    def __init__(self, base: nn.Module, *, unfreeze_last: int = 4, pooling: str = "mean") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise UnfreezeError(f"pooling must be one of {', '.join(POOLINGS)}, got {pooling!r}")
        n_layers = len(base.vision_model.encoder.layers)
        if not 0 <= unfreeze_last <= n_layers:
            raise UnfreezeError(
                f"unfreeze_last={unfreeze_last} is outside 0..{n_layers} (the model has {n_layers} encoder blocks)"
            )
        if pooling == "attention" and not getattr(base.vision_model, "use_head", False):
            raise UnfreezeError("pooling='attention' needs the vision model's attention-pooling head (vision_use_head)")
        self.base = base
        self.unfreeze_last = unfreeze_last
        self.pooling = pooling
        self.split = n_layers - unfreeze_last  # index of the first trainable block
        self.config = base.config  # the Trainer reads model.config for a few defaults
        self.freeze()

    # Properties, not submodules: registering them twice would duplicate state_dict keys, which
    # safetensors refuses (shared tensors).
    @property
    def vision(self) -> nn.Module:
        return self.base.vision_model

    @property
    def classifier(self) -> nn.Module:
        return self.base.classifier

    @property
    def _keys_to_ignore_on_save(self) -> list[str]:
        # The Trainer reloads the best checkpoint (trainable weights only, see compare.finetune)
        # non-strictly and warns about missing keys unless they are listed here.
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return [k for k in self.state_dict() if k not in trainable]

    def tie_weights(self) -> None:
        """Nothing is tied (the Trainer calls this after loading a checkpoint)."""

    def trainable_modules(self) -> list[nn.Module]:
        """The modules whose parameters train: last N blocks, post_layernorm, head (attention), classifier."""
        head = [self.vision.head] if self.pooling == "attention" else []
        return [*self.vision.encoder.layers[self.split :], self.vision.post_layernorm, *head, self.classifier]

    def freeze(self) -> None:
        """Freeze everything, then unfreeze :meth:`trainable_modules`."""
        for p in self.base.parameters():
            p.requires_grad_(False)
        for m in self.trainable_modules():
            for p in m.parameters():
                p.requires_grad_(True)

    def parameter_counts(self) -> tuple[int, int]:
        """(trainable, total) parameter counts of the whole checkpoint's classifier model."""
        return (sum(p.numel() for p in self.base.parameters() if p.requires_grad),
                sum(p.numel() for p in self.base.parameters()))

    def frozen_has_dropout(self) -> bool:
        """True when a frozen block would be random in train mode (then the prefix cache is wrong)."""
        return float(getattr(self.vision.config, "attention_dropout", 0.0) or 0.0) > 0.0

    @torch.no_grad()
    def prefix(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Frozen part: (b, 3, H, W) pixels -> (b, T, D) hidden states after the first L - N blocks."""
        h = self.vision.embeddings(pixel_values)
        for layer in self.vision.encoder.layers[: self.split]:
            h = layer(h, None)
        return h

    def _tail(self, h: torch.Tensor) -> torch.Tensor:
        for layer in self.vision.encoder.layers[self.split :]:
            h = layer(h, None)
        h = self.vision.post_layernorm(h)
        pooled = h.mean(dim=1) if self.pooling == "mean" else self.vision.head(h)
        return self.classifier(pooled)

    def forward(self, pixel_values: torch.Tensor | None = None, prefix_states: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> Any:
        if (pixel_values is None) == (prefix_states is None):
            raise ValueError("pass exactly one of pixel_values or prefix_states")
        if prefix_states is not None:
            weight_dtype = self.vision.post_layernorm.weight.dtype
            if prefix_states.dtype != weight_dtype and not torch.is_autocast_enabled(prefix_states.device.type):
                prefix_states = prefix_states.to(weight_dtype)
            logits = self._tail(prefix_states)
        elif self.pooling == "mean":
            # The plain path is the seed's model itself, so the prefix path is checked against it.
            logits = self.base(pixel_values=pixel_values).logits
        else:
            logits = self.classifier(self.vision(pixel_values=pixel_values).pooler_output)
        return ImageClassifierOutput(logits=logits)


def compute_prefix(model: SelectiveUnfreezeClassifier, batches: Iterable[torch.Tensor], *, n: int,
                   device: torch.device | str = "cpu", autocast_dtype: torch.dtype | None = None,
                   store_device: torch.device | str = "cpu", progress: Any = None) -> torch.Tensor | None:
    """Run the frozen part once over at most ``n`` images given as pixel batches.

    Args:
        batches: iterable of (b, 3, H, W) float pixel tensors, in dataset order, ``m <= n`` rows in
            all (the fine-tune's scan passes only the readable images of a split of ``n``).
        autocast_dtype: torch.bfloat16 / torch.float16 to run under autocast as the Trainer will
            (so the cached states equal what the plain path computes), None for no autocast.
        progress: a tqdm-like bar, updated per image.

    Returns (m, T, D) states on ``store_device``; None when no batch came.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()  # no dropout either way; eval makes the intent explicit
    out: torch.Tensor | None = None
    i = 0
    try:
        for pixels in batches:
            pixels = pixels.to(device, non_blocking=True)
            with torch.inference_mode(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                        enabled=autocast_dtype is not None):
                h = model.prefix(pixels)
            if out is None:
                out = torch.empty((n, *h.shape[1:]), dtype=h.dtype, device=store_device)
            b = h.shape[0]
            out[i : i + b] = h
            i += b
            if progress is not None:
                progress.update(b)
    finally:
        model.train(was_training)
    return out if out is None or i == n else out[:i].clone()  # the clone frees the rows reserved for failed images
