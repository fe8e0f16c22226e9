"""Issue 16.6: one test per documented guard of `wound-cache merge` (each names the mutation it
catches), and issue 14.1: a merge never depends on the order of its arguments."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache import CacheWriter, merge_caches, read_cache, read_failures
from woundscore.cache.cli import cli
from woundscore.cache.types import CacheError, CacheLockedError, CacheMismatchError, CacheValueError
from tests.test_cache_helpers import PROV, make_rows, rows_for


def shard(path: Path, indices: list[int], change=None, prov=PROV) -> Path:
    rows = rows_for(indices)
    if change is not None:
        change(rows)
    with CacheWriter(path, prov) as w:
        w.append(**rows)
    return path


def test_same_id_with_other_bytes_in_two_shards_stops_naming_the_id(tmp_path):
    """Catches: the "same id, different sha256" guard disabled (one row silently wins)."""
    a = shard(tmp_path / "a.h5", [0, 1, 2])
    b = shard(tmp_path / "b.h5", [2, 3], lambda r: r["sha256"].__setitem__(0, "f" * 64))
    with pytest.raises(CacheValueError) as e:
        merge_caches([a, b], tmp_path / "m.h5")
    assert str(e.value) == ("shards disagree about 1 image id(s); re-embed them from one source:\n"
                            f"  img 002.jpg: sha256 differ ({a}, {b})")
    assert not (tmp_path / "m.h5").exists()


@pytest.mark.parametrize("what, change", [
    ("labels", lambda r: r["labels"].__setitem__((0, 0), 1 - r["labels"][0, 0] if r["labels"][0, 0] >= 0 else 1)),
    ("split", lambda r: r["split"].__setitem__(0, "test" if r["split"][0] != "test" else "val")),
])
def test_same_id_with_other_labels_or_split_stops_naming_the_id(tmp_path, what, change):
    """Catches: shards that disagree about an id's labels or split merged by keeping either row
    (which one then depends on the argument order)."""
    a = shard(tmp_path / "a.h5", [0, 1, 2])
    b = shard(tmp_path / "b.h5", [2, 3], change)
    for parts in ([a, b], [b, a]):
        with pytest.raises(CacheValueError, match=f"img 002.jpg: {what} differ"):
            merge_caches(parts, tmp_path / "m.h5")


def test_output_that_is_one_of_the_shards_is_refused(tmp_path):
    """Catches: the "output is one of the inputs" guard disabled (the shard would be replaced)."""
    a, b = shard(tmp_path / "a.h5", [0, 1]), shard(tmp_path / "b.h5", [2, 3])
    before = a.read_bytes()
    with pytest.raises(CacheError, match="the output is also one of the shards"):
        merge_caches([a, b], a, overwrite=True)
    link = tmp_path / "link.h5"
    link.symlink_to(a)
    with pytest.raises(CacheError, match="the output is also one of the shards"):
        merge_caches([link, b], a, overwrite=True)
    assert a.read_bytes() == before


def test_existing_output_needs_overwrite_and_live_shards_are_refused(tmp_path):
    """Catches: the existing-output guard or the live-writer guard disabled."""
    a, b, out = shard(tmp_path / "a.h5", [0, 1]), shard(tmp_path / "b.h5", [2, 3]), tmp_path / "m.h5"
    out.write_bytes(b"precious")
    with pytest.raises(CacheError, match="already exists; pass overwrite=True"):
        merge_caches([a, b], out)
    assert out.read_bytes() == b"precious"
    w = CacheWriter(b, PROV)
    try:
        with pytest.raises(CacheLockedError, match="shard is still being written"):
            merge_caches([a, b], out, overwrite=True)
    finally:
        w.close()


def test_shards_from_another_setup_are_refused(tmp_path):
    """Catches: the provenance identity check disabled."""
    a = shard(tmp_path / "a.h5", [0, 1])
    b = shard(tmp_path / "b.h5", [2, 3], prov={**PROV, "preprocessing": {**PROV["preprocessing"], "size": [32, 32]}})
    with pytest.raises(CacheMismatchError, match="preprocessing.size"):
        merge_caches([a, b], tmp_path / "m.h5")


def _content(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("embeddings", "image_id", "sha256", "split", "labels", "order")}
        out["attrs"] = {k: v for k, v in f.attrs.items() if k not in ("created", "updated")}
    out["failures"] = read_failures(path)
    return out


def test_the_result_does_not_depend_on_the_order_of_the_arguments(tmp_path):
    """Issue 14.1. Catches: rows, failures, ties or provenance taken in argument order."""
    a = shard(tmp_path / "a.h5", [0, 2, 4, 5])
    b = shard(tmp_path / "b.h5", [1, 3, 5], prov={**PROV, "device": "cuda:0"})  # 5 in both: kept once
    with CacheWriter(b, {**PROV, "device": "cuda:0"}) as w:
        w.record_failure("x.jpg", "reason b")
    with CacheWriter(a, PROV) as w:
        w.record_failure("x.jpg", "reason a")
    assert merge_caches([a, b], tmp_path / "ab.h5")["duplicates"] == 1
    merge_caches([b, a], tmp_path / "ba.h5")
    ab, ba = _content(tmp_path / "ab.h5"), _content(tmp_path / "ba.h5")
    for key in ("embeddings", "image_id", "sha256", "split", "labels", "order"):
        np.testing.assert_array_equal(ab[key], ba[key])
    assert ab["failures"] == ba["failures"] and ab["attrs"] == ba["attrs"]
    assert read_cache(tmp_path / "ab.h5").ids.tolist() == make_rows(0, 6)["ids"]
    r = CliRunner().invoke(cli, ["merge", str(b), str(a), "--out", str(tmp_path / "cli.h5")])
    assert r.exit_code == 0 and "(1 duplicate(s) skipped)" in r.output, r.output
