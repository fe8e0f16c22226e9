"""Batch predict: a folder (recursive, images only) with a broken image among good ones, globs,
dataset folders, a cache to CSV without any encoder, streaming per batch, CSV cells a spreadsheet
would execute neutralised, ids with spaces kept, and --format prompt."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.cli import cli


@pytest.fixture(scope="module")
def setup(mini_release: Path, tiny_siglip_dir: Path, mini_mlp, tmp_path_factory):
    from woundscore.cache import read_cache
    from woundscore.classify.scorer import WoundScorer
    from woundscore.embed.sources import open_source

    cache, model_dir = mini_mlp
    es = read_cache(cache)
    work = tmp_path_factory.mktemp("predict_batch")
    folder = work / "photos"
    (folder / "ward" / "b").mkdir(parents=True)
    good = []
    for k, s in enumerate(open_source(mini_release).samples()[:5]):
        f = (folder if k < 2 else folder / "ward" / "b") / Path(s.image_id).name
        f.write_bytes(s.read_bytes())
        good.append(f)
    (folder / "ward" / "broken.jpg").write_text("<html>not a photo</html>")
    (folder / "notes.txt").write_text("not an image: skipped")
    (folder / ".hidden.jpg").write_text("hidden: skipped")
    scorer = WoundScorer.load(model_dir, encoder=str(tiny_siglip_dir), device="cpu")
    return es, cache, model_dir, folder, good, scorer


def predict(*args: str) -> tuple[int, str]:
    r = CliRunner().invoke(cli, ["predict", *args])
    return r.exit_code, r.output


def test_folder_with_a_broken_image(setup, tiny_siglip_dir: Path, tmp_path: Path) -> None:
    es, _, model_dir, folder, good, scorer = setup
    out = tmp_path / "scores.jsonl"
    code, text = predict(str(model_dir), str(folder), "--encoder", str(tiny_siglip_dir), "--device", "cpu",
                         "--batch-size", "2", "--out", str(out), "--quiet")
    assert code == 3, text
    assert 'Error: 1 of 6 images could not be scored' in text
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    broken = str(folder / "ward" / "broken.jpg")
    assert sorted(o["image"] for o in lines) == sorted([*map(str, good), broken])
    for o in lines:
        if o["image"] == broken:
            assert set(o) == {"image", "error"} and o["error"].startswith(f"{broken}: not an image")
        else:
            ref = scorer.score(o["image"])
            np.testing.assert_allclose([o["scores"][n] for n in LABEL_NAMES], [ref["scores"][n] for n in LABEL_NAMES],
                                       rtol=0, atol=1e-5)
    assert not (tmp_path / "scores.jsonl.partial").exists()


def test_glob_and_prompt_format(setup, tiny_siglip_dir: Path) -> None:
    _, _, model_dir, folder, good, _ = setup
    code, text = predict(str(model_dir), str(folder / "ward" / "**" / "*.jpg"), "--encoder", str(tiny_siglip_dir),
                         "--device", "cpu", "--format", "prompt")
    assert code == 3  # broken.jpg matches the pattern too
    assert text.count("Healing: ") == 3 and text.count("The photo could not be read") == 1
    assert text.index("Healing: ") < text.index("Erythema (redness): ") < text.index("Urgency: ")


def test_release_folder_by_image_id(setup, mini_release: Path, tiny_siglip_dir: Path) -> None:
    es, *_ = setup
    code, text = predict(str(setup[2]), str(mini_release), "--encoder", str(tiny_siglip_dir), "--device", "cpu")
    assert code == 0, text
    lines = [json.loads(l) for l in text.splitlines()]
    assert sorted(o["image"] for o in lines) == sorted(es.ids.tolist())
    by_id = {o["image"]: o for o in lines}
    P = setup[5].score_embeddings(es.X, es.provenance)
    for i, image_id in enumerate(es.ids):
        np.testing.assert_allclose([by_id[image_id]["scores"][n] for n in LABEL_NAMES], P[i], rtol=0, atol=1e-5)


def test_cache_to_csv_needs_no_encoder(setup, tmp_path: Path) -> None:
    """The model's encoder is a local checkpoint that is NOT given: touching it would fail, so
    exit 0 proves the cache's vectors were scored without an encoder."""
    es, cache, model_dir, _, _, scorer = setup
    out = tmp_path / "scores.csv"
    code, text = predict(str(model_dir), str(cache), "--out", str(out))
    assert code == 0, text
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["image"] for r in rows] == es.ids.tolist()
    P = scorer.score_embeddings(es.X, es.provenance)
    got = np.array([[float(r[f"{n}_score"]) for n in LABEL_NAMES] for r in rows])
    np.testing.assert_allclose(got, P, rtol=0, atol=1e-9)
    thresholds = json.loads((model_dir / "thresholds.json").read_text())["labels"]
    for r, p in zip(rows, P):
        for j, n in enumerate(LABEL_NAMES):
            assert r[f"{n}_flag"] == str(bool(p[j] >= thresholds[n]["value"])).lower()


def test_csv_cells_a_spreadsheet_would_run_are_neutralised(setup, tmp_path: Path) -> None:
    from woundscore.classify.inputs import CacheInput
    from woundscore.classify.predict_run import Sink, run_predict

    es, _, _, _, _, scorer = setup
    ids = np.array(["=HYPERLINK(\"http://x\")", "+1+1", "-2", "@SUM(A1)", "  padded id  ", "plain.jpg"])
    out = tmp_path / "s.csv"
    n, failed = run_predict(scorer, [CacheInput("c", ids, es.X[:6], es.provenance)], Sink("csv", str(out)),
                            batch_size=4, progress=False)
    assert (n, failed) == (6, 0)
    got = [r["image"] for r in csv.DictReader(out.open(newline=""))]
    assert got == ["'=HYPERLINK(\"http://x\")", "'+1+1", "'-2", "'@SUM(A1)", "  padded id  ", "plain.jpg"]


def test_results_stream_batch_by_batch(setup, tiny_siglip_dir: Path, tmp_path: Path) -> None:
    """Each batch is written (and flushed) before the next one is scored; one forward per batch."""
    from woundscore.classify.inputs import resolve_inputs
    from woundscore.classify.predict_run import Sink, run_predict

    _, _, _, _, good, scorer = setup
    events: list[str] = []
    enc = scorer.encoder
    orig = enc.embed_images

    class Spy(Sink):
        def write(self, results):
            super().write(results)
            events.append(f"write {len(list(results))} {len(self._tmp.read_text().splitlines())}")

    def embed(images, **kw):
        events.append(f"forward {len(images)}")
        return orig(images, **kw)

    enc.embed_images = embed
    try:
        run_predict(scorer, resolve_inputs([str(f) for f in good]), Spy("json", str(tmp_path / "o.jsonl")),
                    batch_size=2, progress=False)
    finally:
        del enc.embed_images
    assert events == ["forward 2", "write 2 2", "forward 2", "write 2 4", "forward 1", "write 1 5"]


def test_prompt_to_csv_is_a_usage_error(setup, tmp_path: Path) -> None:
    code, text = predict(str(setup[2]), str(setup[1]), "--out", str(tmp_path / "x.csv"), "--format", "prompt")
    assert code == 2 and "--format prompt" in text
