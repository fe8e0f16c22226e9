"""cache/merge.py and cache/reconcile.py pinned by exact values and messages: what a merge keeps,
records and counts; what a source view changes and reports (TESTING.md, `make mutants`, group
cache_merge). Small shards, no model: about a second."""

from __future__ import annotations

import numpy as np
import pytest

from woundscore.cache import CacheWriter, merge_caches
from woundscore.cache.layout import Rows, strs
from woundscore.cache.read import load, read_runs
from woundscore.cache.reconcile import SourceView, apply_source, reconcile_counts, source_differences
from woundscore.cache.types import CacheError, CacheValueError
from tests.test_cache_helpers import PROV, rows_for
from tests.test_cache_merge import shard


def test_merge_keeps_one_row_per_id_sorted_by_source_order_and_records_the_runs(tmp_path) -> None:
    a = shard(tmp_path / "a.h5", [4, 0, 2])
    b = shard(tmp_path / "b.h5", [3, 2, 1])
    out = tmp_path / "m.h5"
    assert merge_caches([b, a], out) == {"shards": 2, "rows": 5, "duplicates": 1}
    ld = load(out, with_x=True)
    assert ld.rows.image_id.tolist() == [f"img {i:03d}.jpg" for i in range(5)]
    assert ld.rows.order.tolist() == [0, 1, 2, 3, 4] and ld.attrs["order_kind"] == "source"
    ref = rows_for([0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ld.rows.X, ref["embeddings"])
    np.testing.assert_array_equal(ld.rows.labels, ref["labels"])
    assert ld.rows.extras["location"].tolist() == ref["extras"]["location"]
    runs = read_runs(out)
    merged = runs[-1]
    assert merged["status"] == "merged" and merged["shards"] == [str(a), str(b)] and merged["rows_added"] == 5
    assert merged["started"] == merged["finished"] and len(merged["run_id"]) == 12
    assert sorted(r["shard"] for r in runs[:-1]) == sorted([str(a), str(b)])
    assert ld.provenance["updated"] == merged["finished"]
    assert ld.provenance["created"] <= ld.provenance["updated"]


def test_merge_of_append_ordered_shards_sorts_by_id_and_renumbers(tmp_path) -> None:
    def appended(path, idx):
        r = rows_for(idx)
        r["order"] = np.array([1, 9][: len(idx)], dtype=np.int64)  # not the id order: the sort must be by id
        with CacheWriter(path, PROV) as w:
            w.append(**r)
        return path

    a, b = appended(tmp_path / "a.h5", [5, 1]), shard(tmp_path / "b.h5", [3])
    import h5py

    with h5py.File(a, "a") as f:
        f.attrs["order_kind"] = "append"
    merge_caches([a, b], tmp_path / "m.h5")
    ld = load(tmp_path / "m.h5", with_x=False)
    assert ld.rows.image_id.tolist() == ["img 001.jpg", "img 003.jpg", "img 005.jpg"]
    assert ld.rows.order.tolist() == [0, 1, 2] and ld.attrs["order_kind"] == "append"


def test_shards_without_an_order_kind_count_as_source_ordered_and_paths_sort_as_text(tmp_path) -> None:
    import h5py

    (tmp_path / "s").mkdir()
    (tmp_path / "s-1").mkdir()
    a = shard(tmp_path / "s" / "x.h5", [3, 0])
    b = shard(tmp_path / "s-1" / "x.h5", [1])
    r = rows_for([2])
    r["order"] = np.array([0], dtype=np.int64)  # image 2 at source position 0: first when sorted by order
    with CacheWriter(tmp_path / "c.h5", PROV) as w:
        w.append(**r)
    for path in (a, b, tmp_path / "c.h5"):
        with h5py.File(path, "a") as f:
            del f.attrs["order_kind"]  # written before the attribute existed
    merge_caches([a, b, tmp_path / "c.h5"], tmp_path / "m.h5")
    ld = load(tmp_path / "m.h5", with_x=False)
    assert ld.rows.image_id.tolist() == ["img 000.jpg", "img 002.jpg", "img 001.jpg", "img 003.jpg"]
    assert ld.attrs["order_kind"] == "source"
    with h5py.File(tmp_path / "m.h5", "r") as f:  # the FILE is in source order (load alone may re-sort)
        assert [v.decode() if isinstance(v, bytes) else v for v in f["image_id"][:]] == \
            ["img 000.jpg", "img 002.jpg", "img 001.jpg", "img 003.jpg"]
        assert f["order"][:].tolist() == [0, 0, 1, 3]
    # "s-1/x.h5" < "s/x.h5" as text ("-" before "/"), though Path ordering puts "s" first
    assert read_runs(tmp_path / "m.h5")[-1]["shards"] == [str(tmp_path / "c.h5"), str(b), str(a)]


def test_agreeing_copies_keep_the_smaller_vector_whatever_shard_it_is_in(tmp_path) -> None:
    base = rows_for([2])["embeddings"][0]
    bumped = base.copy()
    bumped[0] = np.nextafter(bumped[0], np.float32(np.inf))
    small, large = sorted([base, bumped], key=lambda v: v.tobytes())

    def with_x(v):
        return lambda r: r["embeddings"].__setitem__(0, v)

    a = shard(tmp_path / "a.h5", [2], with_x(large))  # the first shard (by path) has the larger bytes
    b = shard(tmp_path / "b.h5", [2], with_x(small))
    assert merge_caches([a, b], tmp_path / "m.h5")["duplicates"] == 1
    np.testing.assert_array_equal(load(tmp_path / "m.h5").rows.X[0], small)


def test_merge_guards_exact_messages_and_existing_output_overwritten_when_asked(tmp_path) -> None:
    with pytest.raises(CacheError) as e:
        merge_caches([], tmp_path / "m.h5")
    assert str(e.value) == "merge needs at least one shard"
    a = shard(tmp_path / "a.h5", [0, 1])
    out = tmp_path / "m.h5"
    out.write_bytes(b"old")
    with pytest.raises(CacheError) as e:
        merge_caches([a], out)
    assert str(e.value) == f"{out}: already exists; pass overwrite=True (--overwrite) to replace it"
    assert merge_caches([a, a], out, overwrite=True) == {"shards": 1, "rows": 2, "duplicates": 0}
    with pytest.raises(CacheError) as e:
        merge_caches([a], a, overwrite=True)
    assert str(e.value) == f"{a}: the output is also one of the shards"


def test_disagreeing_shards_list_every_id_and_every_difference(tmp_path) -> None:
    def change(r):
        r["sha256"][0] = "0" * 64  # img 001: bytes
        r["split"][1] = "test" if r["split"][1] != "test" else "val"  # img 002: split and annotation
        r["extras"]["location"][1] = "elsewhere"

    a = shard(tmp_path / "a.h5", [1, 2, 3])
    b = shard(tmp_path / "b.h5", [1, 2, 3], change)
    with pytest.raises(CacheValueError) as e:
        merge_caches([a, b], tmp_path / "m.h5")
    assert str(e.value) == ("shards disagree about 2 image id(s); re-embed them from one source:\n"
                            f"  img 001.jpg: sha256 differ ({a}, {b})\n"
                            f"  img 002.jpg: split and annotations differ ({a}, {b})")


def _rows(ids, split, labels, extras=None, order=None) -> Rows:
    n = len(ids)
    return Rows(strs(ids), strs([f"h{i}" for i in ids]), strs(split), np.asarray(labels, np.int8).reshape(n, 6),
                np.arange(n, dtype=np.int64) if order is None else np.asarray(order, np.int64),
                np.arange(n * 2, dtype=np.float32).reshape(n, 2), extras or {"location": strs(["x"] * n)})


L0, L1 = [0] * 6, [1] * 6


def test_apply_source_and_counts_by_hand() -> None:
    rows = _rows(["a", "b", "c", "d"], ["train", "val", "test", "train"], [L0, L0, L1, L0],
                 {"location": strs(["x", "y", "z", "w"])})
    view = SourceView(ids=["d", "c", "b", "e"], split=["train", "train", "val", "test"],
                      labels=np.array([L0, L1, L1, L0]), extras={"location": ["w", "z", "Y", "q"], "new": ["1", "2", "3", "4"]},
                      order=np.array([30, 20, 10, 0]))
    assert reconcile_counts(rows, view) == {"relabelled": 1, "moved": 1, "annotations": 1, "removed": 1}
    new = apply_source(rows, view)
    assert new.image_id.tolist() == ["b", "c", "d"] and new.order.tolist() == [10, 20, 30]
    assert new.split.tolist() == ["val", "train", "train"] and new.labels.tolist() == [L1, L1, L0]
    assert new.extras["location"].tolist() == ["Y", "z", "w"] and new.extras["new"].tolist() == ["3", "2", "1"]
    np.testing.assert_array_equal(new.X, rows.X[[1, 2, 3]])
    assert new.labels.dtype == np.int8 and new.sha256.tolist() == ["hb", "hc", "hd"]
    dropped = apply_source(rows, view, drop={"c"})
    assert dropped.image_id.tolist() == ["b", "d"]
    # without an order: source positions; a column only the cache has becomes ""
    plain = apply_source(rows, SourceView(ids=["c", "a"], split=["test", "train"], labels=np.array([L1, L0])))
    assert plain.image_id.tolist() == ["c", "a"] and plain.order.tolist() == [0, 1]
    assert plain.extras["location"].tolist() == ["", ""]
    assert reconcile_counts(rows, SourceView(ids=["a"], split=["train"], labels=np.array([L0]))) == {
        "relabelled": 0, "moved": 0, "annotations": 1, "removed": 3}


def test_source_view_refusals() -> None:
    with pytest.raises(CacheValueError) as e:
        SourceView(ids=["a", "b", "a"], split=["", "", ""], labels=np.zeros((3, 6)))
    assert str(e.value) == "source lists image id 'a' more than once"
    with pytest.raises(CacheValueError) as e:
        SourceView(ids=["a"], split=[""], labels=np.zeros((2, 6)))
    assert str(e.value) == "source labels must be (1, 6), got (2, 6)"
    assert SourceView(ids=[3, "b"], split=["", ""], labels=np.zeros((2, 6))).index() == {"3": 0, "b": 1}


def test_source_differences_every_line() -> None:
    rows = _rows(["a", "b", "c"], ["train", "val", "test"], [L0, L0, L1])
    view = SourceView(ids=["a", "b", "d", "e"], split=["train", "test", "val", "val"],
                      labels=np.array([[0, 0, 1, 0, 0, -1], L0, L0, L0]), sha256=["ha", "XX", "hd", "he"])
    assert source_differences(rows, view, where="C", failed={"d": "unreadable"}) == [
        "C: a: label edema differs (cache 0, source 1)",
        "C: a: label exudate differs (cache 0, source -1)",
        "C: b: bytes differ (cache sha256 hb, source XX)",
        "C: b: split differs (cache 'val', source 'test')",
        "C: c: not in the source (removed from it since it was embedded)",
        "C: d: in the source but has no row in the cache (recorded as failed: unreadable)",
        "C: e: in the source but has no row in the cache",
    ]
    same = SourceView(ids=["a", "b", "c"], split=["train", "val", "test"], labels=np.array([L0, L0, L1]),
                      sha256=["ha", "hb", "hc"])
    assert source_differences(rows, same) == []
    assert source_differences(rows.take(np.array([0])), same)[0] == "cache: b: in the source but has no row in the cache"
    with pytest.raises(CacheValueError) as e:
        source_differences(rows, SourceView(ids=["a"], split=[""], labels=np.zeros((1, 6))))
    assert str(e.value) == "source_differences needs the source's sha256 of every image"


def _rewritten(path, *, created, updated, runs, failures):
    """The shard at ``path`` rewritten with chosen provenance times, run history and failures."""
    from woundscore.cache.writer import write_new_cache

    ld = load(path, with_x=True)
    write_new_cache(path, {**ld.provenance, "created": created, "updated": updated}, ld.rows,
                    order_kind="source", failures=failures, runs=runs)
    return path


def test_merge_joins_failures_sorts_runs_and_keeps_the_earliest_created(tmp_path) -> None:
    a = _rewritten(shard(tmp_path / "a.h5", [0, 1]), created="2021-05-01T00:00:00+00:00",
                   updated="2021-05-02T00:00:00+00:00",
                   runs=[{"run_id": "a1", "started": "2021-03-01T00:00:00+00:00"},
                         {"run_id": "y", "started": "2021-01-01T00:00:00+00:00"},
                         {"run_id": "A", "started": "2021-02-01T00:00:00+00:00"}],
                   failures=[{"image_id": "img 009.jpg", "reason": "b"}, {"image_id": "img 000.jpg", "reason": "x"}])
    b = _rewritten(shard(tmp_path / "b.h5", [2]), created="2020-01-01T00:00:00+00:00",
                   updated="2020-01-02T00:00:00+00:00",
                   runs=[{"run_id": "z0", "started": "2020-12-01T00:00:00+00:00"},
                         {"run_id": "x", "started": "2021-01-01T00:00:00+00:00"},
                         {"started": "2021-02-01T00:00:00+00:00"},
                         {"run_id": "nostart"}],
                   failures=[{"image_id": "img 008.jpg", "reason": "a"}, {"image_id": "img 009.jpg", "reason": "a"}])
    out = tmp_path / "m.h5"
    merge_caches([b, a], out)
    ld = load(out, with_x=False)
    # every shard's failures, sorted by (id, reason), the last reason per id, none for an embedded id
    assert ld.failures == [{"image_id": "img 008.jpg", "reason": "a"}, {"image_id": "img 009.jpg", "reason": "b"}]
    runs = ld.runs
    assert [(r.get("started"), r.get("run_id"), r["shard"]) for r in runs[:-1]] == [
        (None, "nostart", str(b)),
        ("2020-12-01T00:00:00+00:00", "z0", str(b)),
        ("2021-01-01T00:00:00+00:00", "x", str(b)),
        ("2021-01-01T00:00:00+00:00", "y", str(a)),
        ("2021-02-01T00:00:00+00:00", None, str(b)),
        ("2021-02-01T00:00:00+00:00", "A", str(a)),
        ("2021-03-01T00:00:00+00:00", "a1", str(a)),
    ]
    merged = runs[-1]
    assert merged["status"] == "merged" and merged["rows_added"] == 3
    assert ld.provenance["created"] == "2020-01-01T00:00:00+00:00"  # the earliest shard's, not the first's
    assert ld.provenance["updated"] == merged["started"] > "2021-05-02"
    assert "CREATED" not in ld.provenance and "XXcreatedXX" not in ld.provenance and "UPDATED" not in ld.provenance


def test_merge_of_shards_without_created_uses_the_merge_time(tmp_path) -> None:
    import h5py

    a = shard(tmp_path / "a.h5", [0])
    b = _rewritten(shard(tmp_path / "b.h5", [1]), created="2030-01-01T00:00:00+00:00",
                   updated="2030-01-01T00:00:00+00:00", runs=[], failures=[])
    with h5py.File(a, "a") as f:
        f.attrs["created"] = ""  # no creation time recorded: the merge time stands in
    merge_caches([a, b], tmp_path / "m.h5")
    ld = load(tmp_path / "m.h5", with_x=False)
    assert ld.provenance["created"] == ld.runs[-1]["started"] == ld.provenance["updated"]
    assert ld.failures == []
