"""The service scores every kind of model folder (issue 12, "Done when"): a probe folder and a
1-step fine-tune folder served in-process by ``create_app`` answer the contract (plus
``summary``), and their scores equal offline ``WoundScorer`` scores of the same images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from woundscore.cache.schema import LABEL_NAMES
from tests.serve_helpers import ready_client, trained  # noqa: F401 (fixture)
from tests.test_finetuned_head import ft  # noqa: F401 (fixture: a 1-step fine-tune of the tiny SigLIP)


def _served_equals_offline(model_dir: Path, images: list[Path], kind: str, **load) -> None:
    from woundscore.classify.prompt import render_prompt
    from woundscore.classify.scorer import CONTRACT_KEYS, WoundScorer
    from woundscore.classify.serve import create_app

    offline = WoundScorer.load(model_dir, device="cpu", dtype="float32", **load)
    with ready_client(create_app(str(model_dir), device="cpu", dtype="float32", **load)) as c:
        model = c.get("/v1/model").json()
        answers = [c.post("/v1/score", content=f.read_bytes(), headers={"content-type": "image/jpeg"})
                   for f in images]
    assert model["model"]["type"] == kind and model["labels"] == list(LABEL_NAMES)
    for f, r in zip(images, answers):
        assert r.status_code == 200, r.text
        obj = r.json()
        assert list(obj) == [*CONTRACT_KEYS, "summary"]
        assert obj["summary"] == render_prompt({k: v for k, v in obj.items() if k != "summary"})
        want = offline.score(f)
        for key in ("scores", "raw_scores"):
            np.testing.assert_allclose([obj[key][n] for n in LABEL_NAMES], [want[key][n] for n in LABEL_NAMES],
                                       rtol=0, atol=1e-5)
        assert {k: obj[k] for k in ("flags", "thresholds", "in_distribution", "model")} == \
            {k: want[k] for k in ("flags", "thresholds", "in_distribution", "model")}
        assert obj["model"]["type"] == kind


def test_probe_folder_is_served_like_offline(trained, mini_mlp, tiny_siglip_dir: Path, tmp_path: Path) -> None:
    from woundscore.cache import read_cache
    from woundscore.classify.train import train_on_set

    images = trained[2]
    probe = tmp_path / "probe"
    train_on_set(read_cache(mini_mlp[0]), probe, model="logreg", source="emb.h5")
    _served_equals_offline(probe, images[:3], "logreg", encoder=str(tiny_siglip_dir))


def test_finetune_folder_is_served_like_offline(ft, trained) -> None:
    """The fine-tune folder carries its own backbone: no --encoder needed."""
    _, out = ft
    _served_equals_offline(out, trained[2][:3], "finetune")
