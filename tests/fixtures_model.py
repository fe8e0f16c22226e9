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


@pytest.fixture(scope="session")
def mini_mlp(mini_release: Path, tiny_siglip_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(cache, MLP folder): the mini release embedded by the tiny SigLIP and an MLP trained on it for
    3 epochs; built once for the predict, batch-predict and service tests. Read-only: copy to modify."""
    from woundscore.cache import read_cache
    from woundscore.classify.train import train_on_set
    from woundscore.embed.run import run_embedding

    work = tmp_path_factory.mktemp("mini_mlp")
    cache = work / "emb.h5"
    run_embedding(mini_release, cache, model=tiny_siglip_dir, batch_size=8, workers=0, device="cpu", quiet=True)
    train_on_set(read_cache(cache), work / "mlp", model="mlp", max_epochs=3, source=str(cache))
    return cache, work / "mlp"
