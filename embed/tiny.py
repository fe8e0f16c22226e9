"""A tiny random SigLIP checkpoint for tests and demos, and the real MedSigLIP architecture.

``build_tiny_siglip(dir)`` writes a folder in the same layout as ``google/medsiglip-448``
(config.json, model.safetensors, processor config, tokenizer), so it is loaded through exactly
the same code path (``load_encoder(dir)``). Its weights are random: it means nothing clinically.
``medsiglip_config()`` gives the real architecture for benchmarks with random weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from woundscore.embed.runtime import quiet_transformers

# torch and transformers are imported inside the functions: importing this module (for ASSETS or
# the architecture numbers) must not cost them.

ASSETS = Path(__file__).parent / "assets"  # vendored SigLIP tokenizer (Apache-2.0, see NOTICE)
NOTICE = "random weights - not MedSigLIP"

_README = """# Tiny random SigLIP ({what})

**{notice}.** Built by `embed.tiny.build_tiny_siglip(seed={seed})` for tests and demos: a
SiglipModel with random weights (vision: hidden {hidden}, {layers} layers, {heads} heads, image
{image}, patch {patch}), saved with `save_pretrained` in the layout of `google/medsiglip-448`,
so it loads through the same code. Its embeddings mean nothing clinically.

The tokenizer files (spiece.model, tokenizer_config.json, special_tokens_map.json) come from
Google-Health/medsiglip (Apache-2.0).
"""


def medsiglip_448_vision_config() -> dict[str, Any]:
    """``SiglipVisionConfig`` keyword arguments of MedSigLIP-448 (SigLIP So400m/14 at 448): hidden
    1152, 27 blocks, 16 heads, MLP 4304, patch 14, image 448 (1024 tokens). The one place of these
    numbers; a fresh dict each call."""
    return dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16,
                image_size=448, patch_size=14, num_channels=3, hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)


def medsiglip_config(*, with_text: bool = True) -> Any:
    """The MedSigLIP-448 architecture as a SiglipConfig (text tower: same width and depth, 32,000
    pieces, 64 positions), or the SiglipVisionConfig when ``with_text`` is False. For benchmarks
    with random weights."""
    from transformers import SiglipConfig, SiglipVisionConfig

    vision = medsiglip_448_vision_config()
    if not with_text:
        return SiglipVisionConfig(**vision)
    text = {k: vision[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                   "hidden_act", "layer_norm_eps")}
    return SiglipConfig(text_config={**text, "vocab_size": 32000, "max_position_embeddings": 64},
                        vision_config=vision)


def build_tiny_siglip(out_dir: str | Path, *, seed: int = 0, image_size: int = 64, patch_size: int = 16,
                      hidden_size: int = 32, layers: int = 2, heads: int = 2, with_text: bool = True) -> Path:
    """Write a tiny random SigLIP checkpoint folder; deterministic for a seed (same bytes).

    The text tower (``with_text``) has the real 32,000-piece vocabulary so the zero-shot path can
    tokenize real prompts; its max_position_embeddings is 64 like SigLIP's.
    Returns the folder.
    """
    with quiet_transformers():  # config-validation chatter about SigLIP's CLIP-era token ids; save bars
        return _build(Path(out_dir), seed, image_size, patch_size, hidden_size, layers, heads, with_text)


def _build(out: Path, seed: int, image_size: int, patch_size: int, hidden_size: int, layers: int, heads: int,
           with_text: bool) -> Path:
    import torch
    from transformers import (SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipProcessor,
                              SiglipTokenizer, SiglipVisionConfig, SiglipVisionModel)

    vision = dict(hidden_size=hidden_size, intermediate_size=hidden_size * 4, num_hidden_layers=layers,
                  num_attention_heads=heads, image_size=image_size, patch_size=patch_size)
    torch.manual_seed(seed)
    if with_text:
        text = dict(vocab_size=32000, hidden_size=hidden_size, intermediate_size=hidden_size * 4,
                    num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=64,
                    pad_token_id=1, bos_token_id=None, eos_token_id=1)  # SigLIP: </s> (1) pads and ends
        config = SiglipConfig(text_config=text, vision_config=vision)
        config.woundscore_notice = NOTICE  # the encoder copies it into the cache provenance
        model = SiglipModel(config)
    else:
        config = SiglipVisionConfig(**vision)
        config.woundscore_notice = NOTICE
        model = SiglipVisionModel(config)
    model.eval().save_pretrained(out, safe_serialization=True)  # creates the folder
    image_processor = SiglipImageProcessor(
        size={"height": image_size, "width": image_size}, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        resample=2,  # bilinear, as the notebook's pipeline
    )
    # Same file name as on the hub (preprocessor_config.json), whatever transformers version.
    image_processor.to_json_file(out / "preprocessor_config.json")
    if with_text:
        tokenizer = SiglipTokenizer.from_pretrained(ASSETS, model_max_length=64)
        SiglipProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(out)
        for name in ("spiece.model", "special_tokens_map.json"):
            if not (out / name).exists():
                shutil.copyfile(ASSETS / name, out / name)
    shutil.copyfile(ASSETS / "NOTICE", out / "NOTICE")
    (out / "README.md").write_text(
        _README.format(what="with text tower" if with_text else "vision only", notice=NOTICE, seed=seed,
                       hidden=hidden_size, layers=layers, heads=heads, image=image_size, patch=patch_size),
        encoding="utf-8",
    )
    return out

