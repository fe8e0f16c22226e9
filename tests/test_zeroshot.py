"""Zero-shot MedSigLIP: prompt table, real tokenization, scoring equal to SigLIP's own forward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from woundscore.cache.schema import LABEL_NAMES
from woundscore.compare.cli import cli
from woundscore.compare.zeroshot import MAX_TEXT_LENGTH, PROMPTS, ZeroShotError, ZeroShotModel, tokenize_prompts

SHARED_TOKENIZER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "medsiglip_tokenizer"


@pytest.fixture(scope="module")
def zs_model(tiny_siglip_dir: Path) -> ZeroShotModel:
    return ZeroShotModel.from_pretrained(tiny_siglip_dir, device="cpu")


def _images(n: int, seed: int = 0) -> list[Image.Image]:
    g = np.random.default_rng(seed)
    return [Image.fromarray(g.integers(0, 256, size=(40 + 7 * i, 90, 3), dtype=np.uint8)) for i in range(n)]


def test_prompt_table_covers_every_label_with_a_contrasting_pair() -> None:
    assert tuple(PROMPTS) == LABEL_NAMES
    for name, (pos, neg) in PROMPTS.items():
        assert pos != neg and pos.startswith("a photo of") and neg.startswith("a photo of"), name
        assert "wound" in pos and "wound" in neg, name
    texts = [t for pair in PROMPTS.values() for t in pair]
    assert len(set(texts)) == len(texts)


@pytest.mark.parametrize("where", ["shared", "vendored"])
def test_real_prompts_tokenize_padded_to_64_within_the_vocabulary(where: str) -> None:
    from transformers import AutoTokenizer

    from woundscore.embed.tiny import ASSETS

    folder = SHARED_TOKENIZER if where == "shared" else ASSETS
    if not (folder / "spiece.model").is_file():
        pytest.skip(f"no SigLIP tokenizer at {folder}")
    tok = AutoTokenizer.from_pretrained(str(folder))
    texts = [t for pair in PROMPTS.values() for t in pair]
    enc = tokenize_prompts(tok, texts)
    ids = enc["input_ids"]
    assert ids.shape == (12, MAX_TEXT_LENGTH)
    assert int(ids.max()) < 32000
    # Every prompt fits (ends in </s>, then padding): none was truncated.
    eos = tok.eos_token_id
    for row, text in zip(ids.tolist(), texts):
        n = row.index(eos) + 1
        assert n < MAX_TEXT_LENGTH, text
        assert all(t == tok.pad_token_id for t in row[n:]), text
    # Positive and negative prompts of a label really differ as token sequences.
    assert all(ids[i].tolist() != ids[i + 1].tolist() for i in range(0, 12, 2))


def test_scores_equal_softmax_over_siglip_pair_logits(zs_model: ZeroShotModel, tiny_siglip_dir: Path) -> None:
    from transformers import AutoTokenizer, SiglipModel

    from woundscore.compare.zeroshot import zero_shot_probabilities
    from woundscore.embed.preprocess import preprocess, resolve_spec

    images = _images(3)
    P = zero_shot_probabilities(zs_model, images, batch_size=2)
    assert P.shape == (3, 6) and np.all((P > 0) & (P < 1))

    # Reference: SigLIP's own forward (scale * cos + bias per pair), softmax over [pos, neg].
    ref = SiglipModel.from_pretrained(tiny_siglip_dir).eval()
    tok = AutoTokenizer.from_pretrained(str(tiny_siglip_dir))
    spec = resolve_spec(tiny_siglip_dir)
    texts = [PROMPTS[k][0] for k in LABEL_NAMES] + [PROMPTS[k][1] for k in LABEL_NAMES]
    enc = tok(texts, padding="max_length", max_length=64, return_tensors="pt")
    pixels = torch.stack([preprocess(im, spec) for im in images])
    with torch.no_grad():
        logits = ref(input_ids=enc["input_ids"], pixel_values=pixels).logits_per_image  # (3, 12)
    pair = torch.stack([logits[:, :6], logits[:, 6:]], dim=-1)
    expected = torch.softmax(pair, dim=-1)[..., 0].numpy()
    np.testing.assert_allclose(P, expected, rtol=0, atol=1e-5)
    # Scores differ between images (the image tower is used) and between labels.
    assert np.ptp(P, axis=0).min() > 0 and np.ptp(P, axis=1).min() > 0


def test_source_scoring_by_split_and_by_cache_ids(zs_model: ZeroShotModel, mini_release: Path) -> None:
    from woundscore.compare.zeroshot import zero_shot_probabilities, zero_shot_source
    from woundscore.embed.sources import open_source

    test = [s for s in open_source(mini_release).samples() if s.split == "test"]
    res = zero_shot_source(mini_release, zs_model, split="test", batch_size=4)
    assert list(res.ids) == [s.image_id for s in test] and res.skipped == []
    np.testing.assert_allclose(res.P, zero_shot_probabilities(zs_model, [s.read_bytes() for s in test]), atol=1e-6)
    assert res.meta["trainable_params"] == 0 and "random weights - not MedSigLIP" in res.meta["notice"]
    picked = [test[2].image_id, test[0].image_id]
    by_ids = zero_shot_source(mini_release, zs_model, ids=picked)
    assert list(by_ids.ids) == picked
    np.testing.assert_allclose(by_ids.P, res.P[[2, 0]], atol=1e-6)
    with pytest.raises(ZeroShotError) as e:
        zero_shot_source(mini_release, zs_model, ids=["nope.jpg"])
    assert str(e.value) == f"{mini_release}: 1 image id(s) not in the source, e.g. 'nope.jpg'"


def test_zero_shot_cli_writes_predictions_and_refuses_a_vision_only_checkpoint(
    tiny_siglip_dir: Path, mini_release: Path, tmp_path: Path
) -> None:
    from woundscore.compare.predictions import read_predictions, read_predictions_meta
    from woundscore.embed.tiny import build_tiny_siglip

    out = tmp_path / "zs.csv"
    r = CliRunner().invoke(cli, ["zero-shot", str(mini_release), "--out", str(out), "--model", str(tiny_siglip_dir),
                                 "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert r.output == f"{out}: 6 images scored zero-shot\n"
    ids, P = read_predictions(out)
    assert P.shape == (6, 6)
    meta = read_predictions_meta(out)
    assert meta["prompts"]["erythema"] == list(PROMPTS["erythema"])

    vision_only = build_tiny_siglip(tmp_path / "vision-only", with_text=False)
    r = CliRunner().invoke(cli, ["zero-shot", str(mini_release), "--out", str(out), "--model", str(vision_only), "-q"])
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {vision_only}: checkpoint has no text tower (SiglipVisionModel); "
        "zero-shot needs the full SigLIP model\n"
    )
    r = CliRunner().invoke(cli, ["zero-shot", "--help"])
    assert r.exit_code == 0 and "Example:" in r.output
