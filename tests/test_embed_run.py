"""`wound-embed run`: both source formats into a verified cache equal to the reference computation,
resume and --overwrite, label errors before any embedding, CLI help and exit codes, and a
two-rank torchrun run whose merged cache equals a single-process run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.embed.cli import cli
from woundscore.embed.run import chunk_indices, part_path, run_embedding, shard_from_env, EmbedRunError
from woundscore.embed.sources import open_source

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def release_cache(tmp_path_factory, mini_release, tiny_siglip_dir):
    out = tmp_path_factory.mktemp("run") / "release.h5"
    summary = run_embedding(mini_release, out, model=tiny_siglip_dir, batch_size=4, workers=1, quiet=True)
    return out, summary


def _reference(source, tiny_siglip_dir, batch_size=4):
    """What the cache must hold: the one preprocessing + the encoder, on the same fixed chunks."""
    from woundscore.embed.encoder import load_encoder
    from woundscore.embed.sources import open_source

    enc = load_encoder(tiny_siglip_dir, device="cpu", dtype="float32")
    samples = open_source(source).samples()
    X = enc.embed_images([s.read_bytes() for s in samples], batch_size=batch_size)
    return samples, X


def independent_reference(samples, model_dir) -> np.ndarray:
    """(n, d) vectors made without the package: PIL decode, the torchvision pipeline of the
    MedSigLIP notebook (CenterCrop(max side) -> Resize bilinear -> ToTensor -> Normalize) and
    Hugging Face's SiglipModel.get_image_features pooled output, one image at a time."""
    import io

    import torch
    from PIL import Image
    from torchvision import transforms as T
    from transformers import SiglipModel

    model = SiglipModel.from_pretrained(model_dir).eval()
    size = model.config.vision_config.image_size
    out = []
    for s in samples:
        im = Image.open(io.BytesIO(s.read_bytes())).convert("RGB")
        x = T.Compose([T.CenterCrop(max(im.size)), T.Resize((size, size), interpolation=T.InterpolationMode.BILINEAR),
                       T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])(im)
        with torch.no_grad():
            out.append(model.get_image_features(pixel_values=x[None]).pooler_output.numpy()[0])
    return np.stack(out)


def test_release_run_equals_reference_and_verifies(release_cache, mini_release, tiny_siglip_dir):
    from woundscore.cache import read_cache, verify_cache

    out, summary = release_cache
    assert (summary.total, summary.embedded, summary.skipped, summary.failed) == (30, 30, 0, [])
    assert summary.exit_code == 0
    assert verify_cache(out) == []
    es = read_cache(out)
    samples, X = _reference(mini_release, tiny_siglip_dir)
    assert es.ids.tolist() == [s.image_id for s in samples]  # source order
    assert es.split.tolist() == [s.split for s in samples]
    assert np.array_equal(es.Y, np.stack([s.labels for s in samples]))
    assert np.array_equal(es.X, X)  # same chunks, same numbers, bit for bit
    assert es.provenance["encoder_revision"].startswith("local:")
    # the checkpoint's notice, then the generated release's (Source.notice)
    assert es.provenance["notice"] == f"random weights - not MedSigLIP; {open_source(mini_release).notice}"
    assert es.provenance["preprocessing"]["size"] == [64, 64]


def test_labels_csv_run_through_cli(labels_csv_dir, tiny_siglip_dir, tmp_path):
    from woundscore.cache import read_cache, verify_cache

    out = tmp_path / "csv.h5"
    r = CliRunner().invoke(cli, ["run", str(labels_csv_dir), "--out", str(out), "--model", str(tiny_siglip_dir),
                                 "--batch-size", "4", "--workers", "0"])
    assert r.exit_code == 0, r.output
    assert f"{out}: 16 embedded, 0 skipped as already cached, 0 failed, of 16 images in" in r.output
    assert verify_cache(out) == []
    es = read_cache(out)
    samples, X = _reference(labels_csv_dir, tiny_siglip_dir)
    assert es.ids.tolist() == [s.image_id for s in samples]
    assert np.array_equal(es.X, X)
    assert set(es.extras) >= {"location", "closure_method"}
    # a rerun skips everything (by sha256); --overwrite rebuilds
    r2 = CliRunner().invoke(cli, ["run", str(labels_csv_dir), "--out", str(out), "--model", str(tiny_siglip_dir),
                                  "--batch-size", "4", "--workers", "0"])
    assert r2.exit_code == 0 and "0 embedded, 16 skipped as already cached" in r2.output
    s3 = run_embedding(labels_csv_dir, out, model=tiny_siglip_dir, batch_size=4, workers=0, overwrite=True, quiet=True)
    assert (s3.embedded, s3.skipped) == (16, 0)
    assert np.array_equal(read_cache(out).X, X)


def test_resume_after_partial_cache_embeds_only_the_rest(release_cache, mini_release, tiny_siglip_dir, tmp_path):
    """A cache holding the first chunks (as a killed run leaves it) is completed, not redone."""
    from woundscore.cache import read_cache

    full = read_cache(release_cache[0])
    out = tmp_path / "partial.h5"
    # chunks 0, 3, 6 only (rank 0 of 3), then renamed: a cache with holes, as after a kill
    first = run_embedding(mini_release, out, model=tiny_siglip_dir, batch_size=4, workers=0, quiet=True, shard=(0, 3))
    assert first.out == str(tmp_path / "partial.rank0-of-3.h5") and first.embedded == 12
    os.replace(first.out, out)
    s = run_embedding(mini_release, out, model=tiny_siglip_dir, batch_size=4, workers=1, quiet=True)
    assert s.skipped == first.embedded and s.embedded == 30 - first.embedded
    es = read_cache(out)
    assert es.ids.tolist() == full.ids.tolist() and np.array_equal(es.X, full.X)


def test_label_error_stops_before_any_embedding(tmp_path, tiny_siglip_dir, labels_csv_dir):
    import shutil

    src = tmp_path / "src"
    shutil.copytree(labels_csv_dir, src)
    text = (src / "labels.csv").read_text().splitlines()
    cells = text[3].split(",")
    cells[2] = "Maybe"  # healing_status
    text[3] = ",".join(cells)
    (src / "labels.csv").write_text("\n".join(text) + "\n")
    out = tmp_path / "e.h5"
    r = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "--model", str(tiny_siglip_dir), "--quiet"])
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {src / 'labels.csv'}: row 4")
    assert "healing_status" in r.output and "'Maybe'" in r.output
    assert not out.exists()


def test_cli_help_and_usage_errors(tmp_path):
    r = CliRunner().invoke(cli, ["run", "--help"])
    assert r.exit_code == 0
    assert "Example:" in r.output and "wound-embed run SurgWound/ --out emb.h5" in r.output
    for code in ("0 every image embedded", "3 some images failed", "1 error", "2 usage error", "130 interrupted"):
        assert code in " ".join(r.output.split())
    r = CliRunner().invoke(cli, ["run", str(tmp_path), "--out", str(tmp_path / "e.h5"), "--batch-size", "0"])
    assert r.exit_code == 2 and "Invalid value for '--batch-size'" in r.output
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "nope"), "--out", str(tmp_path / "e.h5")])
    assert r.exit_code == 2 and "does not exist" in r.output


def test_sharding_helpers():
    assert part_path("out/emb.h5", 1, 4) == Path("out/emb.rank1-of-4.h5")
    assert part_path("emb.h5", 0, 1) == Path("emb.h5")
    assert chunk_indices(10, 3) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert chunk_indices(10, 3, 1, 2) == [[3, 4, 5], [9]]
    both = sorted(i for r in range(2) for c in chunk_indices(10, 3, r, 2) for i in c)
    assert both == list(range(10))  # the ranks cover every sample exactly once
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == (1, 2)
    assert shard_from_env({}) == (0, 1)
    with pytest.raises(EmbedRunError, match=r"RANK=2 is not in \[0, WORLD_SIZE=2\)"):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})


def test_torchrun_two_ranks_merge_equals_single_process(release_cache, mini_release, tiny_siglip_dir, tmp_path):
    from woundscore.cache.cli import cli as cache_cli
    from woundscore.cache import read_cache, verify_cache

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "emb.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "woundscore.embed", "run", str(mini_release),
         "--out", str(out), "--model", str(tiny_siglip_dir), "--batch-size", "4", "--workers", "0", "--quiet"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = [tmp_path / "emb.rank0-of-2.h5", tmp_path / "emb.rank1-of-2.h5"]
    assert all(p.exists() for p in parts) and not out.exists()
    assert {len(read_cache(p)) for p in parts} == {16, 14}  # chunks 0,2,4,6 (4 each) / 1,3,5,7 (4+4+4+2)
    r = CliRunner().invoke(cache_cli, ["merge", *map(str, parts), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert verify_cache(out) == []
    merged, single = read_cache(out), read_cache(release_cache[0])
    assert merged.ids.tolist() == single.ids.tolist()
    assert merged.sha256.tolist() == single.sha256.tolist()
    assert merged.split.tolist() == single.split.tolist() and np.array_equal(merged.Y, single.Y)
    # Each rank runs the very chunks the single process ran (one thread per rank under torchrun):
    np.testing.assert_allclose(merged.X, single.X, atol=1e-6, rtol=0)
    # ... and both equal a reference made without the package (issue 16.10: not the same code path)
    samples = open_source(mini_release).samples()
    np.testing.assert_allclose(merged.X, independent_reference(samples, tiny_siglip_dir), atol=1e-5, rtol=0)


def test_an_image_changed_since_it_was_embedded_is_re_embedded(tmp_path, tiny_siglip_dir, labels_csv_dir):
    """Issue 14.1. Catches: the old row kept (the old behaviour: a failure, the stale vector
    kept), or the new bytes embedded but the old row not replaced."""
    import shutil

    from woundscore.cache import read_cache, read_failures
    from tests.test_hostile_images import jpeg

    src = tmp_path / "src"
    shutil.copytree(labels_csv_dir, src)
    out = tmp_path / "e.h5"
    first = run_embedding(src, out, model=tiny_siglip_dir, batch_size=4, workers=0, quiet=True)
    assert first.embedded == 16
    before = read_cache(out)
    changed = before.ids[5]
    (src / "images" / changed).write_bytes(jpeg(50, 50, seed=99))
    s = run_embedding(src, out, model=tiny_siglip_dir, batch_size=4, workers=0, quiet=True)
    assert (s.exit_code, s.failed, s.embedded, s.skipped, s.reembedded) == (0, [], 1, 15, 1)
    assert "1 re-embedded (bytes changed)" in s.format()
    after = read_cache(out)
    assert after.ids.tolist() == before.ids.tolist()
    other = after.ids != changed
    assert np.array_equal(after.X[other], before.X[other])  # the others untouched, bit for bit
    row = [x for x in open_source(src).samples() if x.image_id == changed]
    np.testing.assert_allclose(after.X[~other], independent_reference(row, tiny_siglip_dir), atol=1e-5, rtol=0)
    assert after.sha256[~other][0] != before.sha256[~other][0]
    assert read_failures(out) == []


def test_fast_decode_is_recorded_and_never_mixed_with_exact_rows(tmp_path, tiny_siglip_dir, labels_csv_dir):
    from woundscore.cache import read_provenance
    from woundscore.cache.types import CacheMismatchError

    out = tmp_path / "fast.h5"
    run_embedding(labels_csv_dir, out, model=tiny_siglip_dir, batch_size=8, workers=0, quiet=True, fast_decode=True)
    assert read_provenance(out)["preprocessing"]["decode"] == "draft"
    with pytest.raises(CacheMismatchError, match="preprocessing"):
        run_embedding(labels_csv_dir, out, model=tiny_siglip_dir, batch_size=8, workers=0, quiet=True)


def test_a_batch_size_below_1_is_refused_before_anything_runs(mini_release, tmp_path):
    with pytest.raises(EmbedRunError) as e:
        run_embedding(mini_release, tmp_path / "x.h5", model=tmp_path / "never-loaded", batch_size=-1, quiet=True)
    assert str(e.value) == "batch size must be >= 1, got -1"
    assert not (tmp_path / "x.h5").exists()
