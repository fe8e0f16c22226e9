"""Issue 14.1/14.2 end to end: the cache keeps one row per image id and follows its source on a
rerun; `wound-cache verify --source`; the leakage audit in the run summary and `wound-cache info`;
encoder identity by weights; a symlinked cache path."""

from __future__ import annotations

import csv
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache import CacheWriter, cache_info, format_info, read_cache, verify_cache
from woundscore.cache.cli import cli as cache_cli
from woundscore.cache.types import CacheLockedError, CacheMismatchError
from woundscore.embed.run import run_embedding
from woundscore.embed.sources import open_source
from woundscore.embed.synthetic import make_release_images, write_release
from tests.test_cache_helpers import PROV, make_rows


@pytest.fixture(scope="module")
def leaky_release(tmp_path_factory) -> tuple[Path, list[tuple[str, str]]]:
    """50 drawn images (35 train) + 30 train photos saved again under a second name in test (80 ids)."""
    images = make_release_images(50, seed=5, image_size=(64, 64))
    train = [im for im in images if im.split == "train"][:30]
    copies = [replace(im, name=f"copy-of-{im.name}", split="test") for im in train]
    out = write_release(tmp_path_factory.mktemp("leaky"), images + copies)
    return out, [(im.name, f"copy-of-{im.name}") for im in train]


def test_30_photos_under_two_names_across_train_and_test_keep_every_id_and_are_listed(
        leaky_release, tiny_siglip_dir, tmp_path):
    """The issue's done-when case. Catches: rows deduplicated by bytes (the old run stored 50 rows
    and dropped 30 test ids with their labels), and a summary / info without the leaked pairs."""
    source, pairs = leaky_release
    out = tmp_path / "leaky.h5"
    summary = run_embedding(source, out, model=tiny_siglip_dir, batch_size=8, workers=0, quiet=True)
    samples = open_source(source).samples()
    es = read_cache(out)
    assert len(samples) == 80
    assert summary.embedded == 80
    assert es.ids.tolist() == [s.image_id for s in samples]
    assert es.split.tolist() == [s.split for s in samples]
    np.testing.assert_array_equal(es.Y, np.stack([s.labels for s in samples]))
    assert verify_cache(out) == []
    audit = summary.leakage
    assert {(a, b) for a, sa, b, sb, _ in audit.exact if (sa, sb) == ("train", "test")} == set(pairs)
    assert audit.n_exact == 30 and audit.leaked_test_ids() >= {b for _, b in pairs}
    text = summary.format()
    assert "30 exact-duplicate pair(s)" in text
    for a, b in pairs[:20]:
        assert f"exact: {a} (train) = {b} (test)" in text
    info = cache_info(out)
    assert info["leakage"]["counts"]["exact"] == 30
    shown = CliRunner().invoke(cache_cli, ["info", str(out)])
    assert shown.exit_code == 0, shown.output
    assert f"exact: {pairs[0][0]} (train) = {pairs[0][1]} (test)" in shown.output
    assert "30 exact-duplicate pair(s)" in format_info(info)


def test_identical_bytes_in_one_batch_share_a_forward_pass_and_keep_their_rows(tmp_path, tiny_siglip_dir):
    """Catches: identical bytes stored once, or embedded twice (``shared`` would stay 0)."""
    images = make_release_images(8, seed=2, image_size=(64, 64))
    twin = replace(images[0], name="twin.jpg")
    src = write_release(tmp_path / "src", [images[0], twin] + images[1:])
    summary = run_embedding(src, tmp_path / "c.h5", model=tiny_siglip_dir, batch_size=16, workers=0, quiet=True)
    es = read_cache(tmp_path / "c.h5")
    assert summary.shared == 1 and len(es) == 9
    i, j = es.ids.tolist().index(images[0].name), es.ids.tolist().index("twin.jpg")
    assert np.array_equal(es.X[i], es.X[j]) and es.sha256[i] == es.sha256[j]


def _edit_csv(path: Path, edit) -> None:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def test_rerun_follows_the_source_and_verify_source_lists_every_difference(tmp_path, tiny_siglip_dir, labels_csv_dir):
    """Catches: a corrected label, a moved split or a deleted row kept by a rerun (the old run
    skipped them by sha256, exit 0, verify OK), and `verify --source` missing any of them."""
    from tests.test_hostile_images import jpeg

    src = tmp_path / "src"
    shutil.copytree(labels_csv_dir, src)
    out = tmp_path / "c.h5"
    run_embedding(src, out, model=tiny_siglip_dir, batch_size=4, workers=0, quiet=True)
    before = read_cache(out)
    ok = CliRunner().invoke(cache_cli, ["verify", str(out), "--source", str(src)])
    assert ok.exit_code == 0 and "same as" in ok.output and "leakage:" in ok.output, ok.output
    header_rows = []

    def edit(rows):
        header_rows.append(rows[0])
        h = rows[0]
        rows[1][h.index("healing_status")] = "Not Healed" if rows[1][h.index("healing_status")] == "Healed" else "Healed"
        rows[2][h.index("split")] = "test" if rows[2][h.index("split")] != "test" else "val"
        return [r for k, r in enumerate(rows) if k != 3]  # the 3rd image leaves the source

    _edit_csv(src / "labels.csv", edit)
    relabelled, moved, removed = before.ids[0], before.ids[1], before.ids[2]
    changed = before.ids[4]
    (src / "images" / changed).write_bytes(jpeg(40, 40, seed=5))
    r = CliRunner().invoke(cache_cli, ["verify", str(out), "--source", str(src)])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert f"{out}: {relabelled}: label healing_status differs" in r.output
    assert any(line.startswith(f"{out}: {moved}: split differs") for line in lines)
    assert f"{out}: {removed}: not in the source" in r.output
    assert f"{out}: {changed}: bytes differ" in r.output
    assert "4 problem(s)" in r.output

    s = run_embedding(src, out, model=tiny_siglip_dir, batch_size=4, workers=0, quiet=True)
    assert (s.reembedded, s.embedded) == (1, 1)
    assert {k: v for k, v in s.reconciled.items() if v} == {"relabelled": 1, "moved": 1, "removed": 1}
    text = s.format()
    assert "1 re-embedded (bytes changed), 1 relabelled, 1 moved to another split, 1 removed" in text
    after, samples = read_cache(out), open_source(src).samples()
    assert after.ids.tolist() == [x.image_id for x in samples]
    assert after.split.tolist() == [x.split for x in samples]
    np.testing.assert_array_equal(after.Y, np.stack([x.labels for x in samples]))
    keep = [before.ids.tolist().index(i) for i in after.ids.tolist() if i != changed]
    np.testing.assert_array_equal(after.X[after.ids != changed], before.X[keep])  # not re-embedded
    r = CliRunner().invoke(cache_cli, ["verify", str(out), "--source", str(src)])
    assert r.exit_code == 0, r.output


def test_the_same_checkpoint_in_another_folder_is_accepted_another_checkpoint_refused(
        tmp_path, tiny_siglip_dir, labels_csv_dir):
    """Catches: encoder identity by folder name ("local/<folder>") instead of the weights hash."""
    from woundscore.embed.tiny import build_tiny_siglip

    out = tmp_path / "c.h5"
    run_embedding(labels_csv_dir, out, model=tiny_siglip_dir, batch_size=8, workers=0, quiet=True)
    copy = shutil.copytree(tiny_siglip_dir, tmp_path / "moved" / "renamed-checkpoint")
    again = run_embedding(labels_csv_dir, out, model=copy, batch_size=8, workers=0, quiet=True)
    assert (again.embedded, again.skipped) == (0, 16)
    other = build_tiny_siglip(tmp_path / "other" / tiny_siglip_dir.name, seed=1)  # same folder name
    with pytest.raises(CacheMismatchError, match="encoder_revision"):
        run_embedding(labels_csv_dir, out, model=other, batch_size=8, workers=0, quiet=True)


def test_a_symlinked_cache_is_locked_and_written_at_its_real_path(tmp_path):
    """Issue 14.4. Catches: the lock taken on the link's name (two writers at once) and the link
    replaced by a file on consolidation."""
    real = tmp_path / "store" / "real.h5"
    real.parent.mkdir()
    with CacheWriter(real, PROV) as w:
        w.append(**make_rows(0, 2))
    link = tmp_path / "link.h5"
    link.symlink_to(real)
    w = CacheWriter(link, PROV)
    try:
        with pytest.raises(CacheLockedError):
            CacheWriter(real, PROV)
        w.append(**make_rows(2, 4))
        assert len(read_cache(link)) == 4  # readers through the link see the batches too
    finally:
        w.close()
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert [i for i in read_cache(real).ids] == make_rows(0, 4)["ids"]
    assert not Path(str(link) + ".parts").exists() and not Path(str(link) + ".lock").exists()
