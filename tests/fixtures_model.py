"""Model fixtures (owned by the encoder work): a tiny random SigLIP saved with save_pretrained,
loaded through the same code path as google/medsiglip-448. Nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random SigLIP checkpoint folder (vision hidden 32, 2 layers, image 64, patch 16,
    2 heads; text tower with the real 32,000-piece tokenizer). Random weights - not MedSigLIP.
    Treat it as read-only (shared by the whole session)."""
    from woundscore.embed.tiny import build_tiny_siglip

    return build_tiny_siglip(tmp_path_factory.mktemp("tiny_siglip") / "tiny-siglip", seed=0)
