"""The cache (woundscore.cache: layout, writer, parts, guarded, read, merge): round trip, resume, crash safety (SIGKILL), single writer, mismatch, disk full,
read while writing, merge, verify. Tiny arrays (d = 8); subprocesses only where a real process
must die or hold a lock."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from woundscore.cache.schema import EXTRA_NAMES, LABEL_NAMES, SCHEMA
from woundscore.cache import (
    CacheValueError,
    CacheWriteError,
    CacheWriter,
    cache_info,
    consolidate_cache,
    lock_path,
    merge_caches,
    parts_dir,
    read_cache,
    read_failures,
    read_runs,
    verify_cache,
)
from woundscore.cache.types import CacheError, CacheLockedError, CacheMismatchError
from tests.test_cache_helpers import DIM, PROV, make_rows, resume

REPO = Path(__file__).resolve().parents[1]
def write_cache(path: Path, start: int = 0, stop: int = 12, batch: int = 4, prov: dict = PROV, **kw) -> Path:
    with CacheWriter(path, prov, **kw) as w:
        for a in range(start, stop, batch):
            w.append(**make_rows(a, min(a + batch, stop)), order=np.arange(a, min(a + batch, stop)))
    return path


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_rows(es, start: int, stop: int) -> None:
    ref = make_rows(start, stop)
    assert es.ids.tolist() == ref["ids"]
    np.testing.assert_array_equal(es.X, ref["embeddings"])  # bit-identical
    np.testing.assert_array_equal(es.Y, ref["labels"])
    assert es.sha256.tolist() == ref["sha256"]
    assert es.split.tolist() == ref["split"]
    assert es.extras["location"].tolist() == ref["extras"]["location"]


def run_child(code: str, *args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, **kw,
    )


# ----------------------------------------------------------------------------- round trip


def test_round_trip_keeps_rows_dtypes_and_provenance(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 10, batch=4)
    es = read_cache(path)
    assert_rows(es, 0, 10)
    assert es.X.dtype == np.float32 and es.Y.dtype == np.int8 and es.X.shape == (10, DIM)
    assert es.schema == SCHEMA
    assert set(es.extras) == set(EXTRA_NAMES)
    assert es.extras["exudate_type"].tolist() == [""] * 10  # absent extras stored as ""
    p = es.provenance
    assert p["encoder_id"] == "tiny-siglip" and p["encoder_revision"] == "abc123"
    assert p["preprocessing"] == PROV["preprocessing"]  # parsed back into a dict
    assert p["embedding_dim"] == DIM and p["label_schema"] == SCHEMA.to_json()
    assert p["versions"]["h5py"] == h5py.__version__
    assert not parts_dir(path).exists()  # consolidated at close


def test_file_is_readable_with_plain_h5py_as_documented(tmp_path):
    """The README's plain-h5py example (section "The cache file") runs against a real cache."""
    path = write_cache(tmp_path / "embeddings.h5", 0, 6)
    section = (REPO / "README.md").read_text().split("## The cache file")[1]
    code = section.split("```python\n")[1].split("```")[0]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        env: dict = {}
        exec(compile(code, "docstring-example", "exec"), env)  # noqa: S102 - our own docstring
    finally:
        os.chdir(cwd)
    assert env["X"].shape == (6, DIM) and env["names"] == list(LABEL_NAMES)
    with h5py.File(path, "r") as f:
        assert f["embeddings"].chunks is not None and f["embeddings"].maxshape == (None, DIM)
        assert f["embeddings"].compression is None
        assert f["order"][()].tolist() == list(range(6))
        assert json.loads(f.attrs["preprocessing"]) == PROV["preprocessing"]
        assert f.attrs["layout_version"] == 1 and f.attrs["label_schema"] == SCHEMA.to_json()
        assert json.loads(f["runs"].asstr()[0])["status"] == "completed"


def test_rows_are_sorted_by_order_whatever_the_append_order(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, PROV) as w:
        w.append(**make_rows(4, 8), order=np.arange(4, 8))
        w.append(**make_rows(0, 4), order=np.arange(0, 4))
        assert_rows(read_cache(path), 0, 8)  # also before consolidation
    assert_rows(read_cache(path), 0, 8)


# ----------------------------------------------------------------------------- resume


def test_append_resumes_skipping_known_hashes(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 8)
    with CacheWriter(path, PROV) as w:
        assert w.known_hashes() == set(make_rows(0, 8)["sha256"])
        assert w.append(**make_rows(4, 12), order=np.arange(4, 12)) == 4  # 4..7 are known
        assert w.append(**make_rows(0, 12), order=np.arange(0, 12)) == 0
    assert_rows(read_cache(path), 0, 12)
    assert verify_cache(path) == []


def test_identical_bytes_under_two_ids_keep_two_rows(tmp_path):
    """Issue 14.1. Catches: rows deduplicated by sha256 (the old behaviour dropped img 002's row,
    its labels and its split)."""
    rows = make_rows(0, 3)
    rows["sha256"][2] = rows["sha256"][0]
    with CacheWriter(tmp_path / "c.h5", PROV) as w:
        assert w.append(**rows) == 3
    with CacheWriter(tmp_path / "c.h5", PROV) as w:  # and a rerun keeps both
        assert w.append(**rows) == 0
    es = read_cache(tmp_path / "c.h5")
    assert es.ids.tolist() == rows["ids"] and es.split.tolist() == rows["split"]
    np.testing.assert_array_equal(es.Y, rows["labels"])
    assert verify_cache(tmp_path / "c.h5") == []


def test_one_id_twice_in_a_batch_is_refused(tmp_path):
    rows = make_rows(0, 2)
    rows["ids"][1] = rows["ids"][0]
    with CacheWriter(tmp_path / "c.h5", PROV) as w, pytest.raises(CacheValueError) as e:
        w.append(**rows)
    assert str(e.value) == f"{tmp_path / 'c.h5'}: image id 'img 000.jpg' appears twice in one batch"


def test_default_order_continues_after_existing_rows(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, PROV) as w:
        w.append(**make_rows(0, 3))
    with CacheWriter(path, PROV) as w:
        w.append(**make_rows(3, 5))
    with h5py.File(path, "r") as f:
        assert f["order"][()].tolist() == [0, 1, 2, 3, 4]
        assert f.attrs["order_kind"] == "append"
    assert_rows(read_cache(path), 0, 5)


def test_same_image_id_with_other_bytes_is_refused(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 4)
    rows = make_rows(0, 1)
    rows["sha256"] = ["f" * 64]
    with CacheWriter(path, PROV) as w, pytest.raises(CacheValueError) as e:
        w.append(**rows)
    assert str(e.value) == (
        f"{path}: image id 'img 000.jpg' is already in the cache with sha256 {make_rows(0, 1)['sha256'][0]}, "
        f"new bytes have {'f' * 64} (was the file changed? remove it or use --overwrite)"
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["labels"].__setitem__((1, 2), 2), "img 001.jpg: label edema has value 2; expected 1, 0 or -1"),
        (lambda r: r["embeddings"].__setitem__((2, 0), np.nan), "img 002.jpg: embedding has NaN or inf values"),
        (lambda r: r.__setitem__("embeddings", r["embeddings"][:, :4]), "embeddings must be (3, 8), got (3, 4)"),
        (lambda r: r["sha256"].__setitem__(0, "xyz"), "img 000.jpg: sha256 'xyz' is not a 64-digit hex digest"),
        (lambda r: r["split"].__setitem__(1, "dev"), "img 001.jpg: split 'dev' is not one of train/val/test/''"),
    ],
)
def test_malformed_rows_are_refused_with_the_image_and_field(tmp_path, change, message):
    rows = make_rows(0, 3)
    change(rows)
    path = tmp_path / "c.h5"
    with CacheWriter(path, PROV) as w:
        with pytest.raises(CacheValueError) as e:
            w.append(**rows)
        assert str(e.value) == f"{path}: {message}"
        w.append(**make_rows(10, 11))  # the writer stays usable
    assert read_cache(path).ids.tolist() == ["img 010.jpg"]


def test_failures_are_recorded_and_dropped_once_embedded(tmp_path):
    path = tmp_path / "c.h5"
    with CacheWriter(path, PROV) as w:
        w.append(**make_rows(0, 2))
        w.record_failure("img 002.jpg", "truncated JPEG (images/img 002.jpg)")
        w.record_failure("bomb.png", "decompression bomb: 40000x40000")
    assert read_failures(path) == [
        {"image_id": "img 002.jpg", "reason": "truncated JPEG (images/img 002.jpg)"},
        {"image_id": "bomb.png", "reason": "decompression bomb: 40000x40000"},
    ]
    with CacheWriter(path, PROV) as w:  # a rerun embeds img 002 after all
        w.append(**make_rows(2, 3))
    assert read_failures(path) == [{"image_id": "bomb.png", "reason": "decompression bomb: 40000x40000"}]
    assert [r["failures"] for r in read_runs(path)] == [2, 0]


def test_overwrite_starts_a_new_cache(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 8)
    other = {**PROV, "encoder_id": "another"}
    with CacheWriter(path, other, overwrite=True) as w:
        assert w.known_hashes() == set()
        w.append(**make_rows(20, 22))
    es = read_cache(path)
    assert es.ids.tolist() == make_rows(20, 22)["ids"] and es.provenance["encoder_id"] == "another"


def test_a_file_that_is_not_a_cache_is_refused_and_kept(tmp_path):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f["x"] = [1, 2]
    before = file_digest(path)
    with pytest.raises(CacheError, match=r"not a woundscore embedding cache \(no 'layout_version' attribute\)"):
        CacheWriter(path, PROV)
    with pytest.raises(CacheError, match="not a woundscore embedding cache"):
        read_cache(path)
    assert file_digest(path) == before
    CacheWriter(path, PROV, overwrite=True).close()  # the lock was released


# ----------------------------------------------------------------------------- mismatch


@pytest.mark.parametrize(
    "change, key, have, new",
    [
        ({"encoder_id": "google/medsiglip-448"}, "encoder_id", "'tiny-siglip'", "'google/medsiglip-448'"),
        ({"encoder_revision": "def456"}, "encoder_revision", "'abc123'", "'def456'"),
        ({"preprocessing": {**PROV["preprocessing"], "size": [448, 448]}}, "preprocessing.size", "[64, 64]", "[448, 448]"),
        ({"embedding_dim": 16}, "embedding_dim", "8", "16"),
        ({"label_schema": json.dumps({**SCHEMA.to_dict(), "version": SCHEMA.version + 1}, sort_keys=True)},
         "label_schema.version", str(SCHEMA.version), str(SCHEMA.version + 1)),
    ],
)
def test_other_encoder_revision_preprocessing_dim_or_schema_is_refused(tmp_path, change, key, have, new):
    path = write_cache(tmp_path / "c.h5", 0, 4)
    before = file_digest(path)
    with pytest.raises(CacheMismatchError) as e:
        CacheWriter(path, {**PROV, **change})
    assert str(e.value) == (
        f"{path}: refusing to mix rows from a different setup:\n  {key}: cache has {have}, new rows have {new}"
    )
    assert file_digest(path) == before and not parts_dir(path).exists()
    with CacheWriter(path, PROV) as w:  # lock released; the right setup may append
        w.append(**make_rows(4, 5))
    assert len(read_cache(path)) == 5


def test_other_dtype_or_device_is_allowed_and_recorded(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 4)
    with CacheWriter(path, {**PROV, "compute_dtype": "bfloat16", "device": "cuda:0"}) as w:
        w.append(**make_rows(4, 8))
    runs = read_runs(path)
    assert [(r["compute_dtype"], r["device"]) for r in runs] == [("float32", "cpu"), ("bfloat16", "cuda:0")]
    assert runs[1]["compute_dtype_differs_from_cache"] == "float32"
    assert runs[1]["device_differs_from_cache"] == "cpu"
    assert_rows(read_cache(path), 0, 8)


# ----------------------------------------------------------------------------- locking

HOLDER = """
import sys, time
from woundscore.cache import CacheWriter
from tests.test_cache_helpers import PROV, make_rows
w = CacheWriter(sys.argv[1], PROV)
w.append(**make_rows(0, 4))
print("ready", flush=True)
time.sleep(60)
"""


def test_second_writer_is_refused_naming_the_holder_then_a_killed_holder_is_taken_over(tmp_path):
    path = tmp_path / "c.h5"
    child = run_child(HOLDER, str(path))
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        with pytest.raises(CacheLockedError) as e:
            CacheWriter(path, PROV)
        msg = str(e.value)
        assert re.match(
            rf"{re.escape(str(path))}: another writer holds the cache: pid {child.pid} on \S+ since "
            r"\d{4}-\d\d-\d\dT[\d:]+\+00:00 \(-c .*\)\. Wait for it to finish", msg,
        ), msg
        assert e.value.holder["pid"] == child.pid
        assert read_cache(path).ids.tolist() == make_rows(0, 4)["ids"]  # readers take no lock
        assert cache_info(path)["pending_batches"] == 1
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The kernel dropped the dead process's flock: the next writer takes over and says so.
    with CacheWriter(path, PROV) as w:
        assert len(w.known_hashes()) == 4
        w.append(**make_rows(4, 6))
    runs = read_runs(path)
    assert runs[0]["status"] == "unfinished" and runs[0]["rows_added"] == 4 and runs[0]["pid"] == child.pid
    assert runs[1]["took_over_stale_lock_from"]["pid"] == child.pid
    assert_rows(read_cache(path), 0, 6)


def test_second_writer_in_the_same_process_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "c.h5"
    first = CacheWriter(path, PROV)
    with pytest.raises(CacheLockedError, match=f"pid {os.getpid()} on "):
        CacheWriter(path, PROV)
    first.close()
    assert lock_path(path).read_text() == ""  # a clean release leaves no holder behind
    CacheWriter(path, PROV).close()


# ----------------------------------------------------------------------------- crash safety

APPENDER = """
import os, signal, sys
import woundscore.cache.writer as writer
from tests.test_cache_helpers import PROV, resume
path, stop, crash = sys.argv[1], int(sys.argv[2]), sys.argv[3]
calls = {"replace": 0}
real_replace = os.replace
def replace(src, dst):  # die at a chosen step of a write
    calls["replace"] += 1
    if crash == "before-part-rename" and str(src).endswith(".tmp") and ".parts" in str(src) and calls["replace"] > 3:
        os.kill(os.getpid(), signal.SIGKILL)
    if crash == "before-main-rename" and ".parts" not in str(src) and calls["replace"] > 1:
        os.kill(os.getpid(), signal.SIGKILL)
    real_replace(src, dst)
writer.os.replace = replace
if crash == "before-parts-removed":
    def remove(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    writer.remove_parts = remove
w = writer.CacheWriter(path, PROV)
resume(w, stop, report=lambda idx: print("done", " ".join(map(str, idx)), flush=True))
w.close()
print("closed", flush=True)
"""
N_ROWS = 20


def _finish_and_check(path: Path, reported: set[int]) -> None:
    es = read_cache(path)  # opens, whatever moment the kill hit
    have = {int(i[4:7]) for i in es.ids}
    assert reported <= have, f"batches reported done were lost: {sorted(reported - have)}"
    assert len(set(es.sha256.tolist())) == len(es)
    assert verify_cache(path) == []
    with CacheWriter(path, PROV) as w:  # the rerun finishes the rest
        resume(w, N_ROWS)
    assert_rows(read_cache(path), 0, N_ROWS)  # = an uninterrupted run, bit for bit
    assert verify_cache(path) == []
    assert not parts_dir(path).exists()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("crash", ["before-part-rename", "before-main-rename", "before-parts-removed"])
def test_kill9_at_each_step_of_a_write_loses_no_reported_batch(tmp_path, crash):
    path = tmp_path / "c.h5"
    child = run_child(APPENDER, str(path), str(N_ROWS), crash)
    out, err = child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL, err
    reported = {int(x) for line in out.splitlines() if line.startswith("done") for x in line.split()[1:]}
    assert "closed" not in out
    _finish_and_check(path, reported)


MIDWRITE = """
import builtins, sys, time
import woundscore.cache.guarded as guarded
import woundscore.cache.parts as parts
import woundscore.cache.writer as writer
from tests.test_cache_helpers import PROV, resume
path, stop, target, offset = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
# target: "part<k>" (the k-th batch file this process writes) or "main" (the consolidated file)
def pause(tmp):  # the temp file exists, half written, not yet renamed: tell the parent, wait
    print("mid-write", tmp, flush=True)
    time.sleep(600)
class Hooked:
    def __init__(self, fh):
        self.fh, self.written = fh, 0
    def write(self, data):
        data = memoryview(data).cast("B")
        if self.written + len(data) > offset:
            self.fh.write(data[: max(0, offset - self.written)])
            self.fh.flush()
            pause(self.fh.name)
        self.written += len(data)
        return self.fh.write(data)
    def __getattr__(self, name):
        return getattr(self.fh, name)
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.fh.__exit__(*exc)
n_parts, real_open = [0], builtins.open
def hooked_open(file, mode="r", *a, **k):
    fh = real_open(file, mode, *a, **k)
    if "w" in mode and str(file).endswith(".tmp"):
        n_parts[0] += 1
        if target == f"part{n_parts[0]}":
            return Hooked(fh)
    return fh
parts.open = hooked_open  # the module's name lookup finds this before the builtin
real_write = guarded.GuardedFile.write
def main_write(self, data):
    n = real_write(self, data)
    if target == "main" and self.pos >= offset:
        self.fh.flush()
        pause(self.fh.name)
    return n
guarded.GuardedFile.write = main_write
w = writer.CacheWriter(path, PROV)
resume(w, stop, report=lambda idx: print("done", " ".join(map(str, idx)), flush=True))
w.close()
print("closed", flush=True)
"""


def _kill_mid_write(path: Path, target: str, offset: int) -> set[int]:
    """Run MIDWRITE, SIGKILL it while the temp file of ``target`` is half written (the child says
    when), assert it died there, and return the rows it reported durable."""
    child = run_child(MIDWRITE, str(path), str(N_ROWS), target, str(offset))
    reported: set[int] = set()
    tmp = None
    for line in child.stdout:
        if line.startswith("done"):
            reported |= {int(x) for x in line.split()[1:]}
        elif line.startswith("mid-write"):
            tmp = Path(line.split(" ", 1)[1].strip())
            break
    assert tmp is not None, f"{target} at byte {offset} was never reached: {child.communicate()[1][-2000:]}"
    assert tmp.is_file()
    assert tmp.name.endswith(".tmp"), f"{tmp} is being written in place, not through a temp file"
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=60)
    assert child.returncode == -signal.SIGKILL
    assert tmp.exists(), "the kill did not land while the temp file was half written"
    es = read_cache(path)  # the main file was never touched in place: it opens
    have = {int(i[4:7]) for i in es.ids}
    assert reported <= have, f"batches reported done were lost: {sorted(reported - have)}"
    assert verify_cache(path) == []
    return reported


def test_kill9_mid_write_of_batches_and_of_the_main_file_then_rerun_equals_an_uninterrupted_run(tmp_path):
    """Issue 16.2: every kill lands while a temp file is half written, by construction (the child
    stops there and says so). Catches: the main file written in place instead of temp + rename
    (the third kill leaves it half written: read_cache fails), a part written in place (a torn
    part: verify lists it), and a rerun that does not complete the rest."""
    path = tmp_path / "c.h5"
    CacheWriter(path, PROV).close()
    rnd = random.Random(7)
    # 1st batch file of a run, 2nd batch file of the next (one batch done), then the consolidation
    for target, offset in (("part1", rnd.randint(0, 300)), ("part2", rnd.randint(0, 300)),
                           ("main", rnd.randint(0, 30000))):
        _kill_mid_write(path, target, offset)
    _finish_and_check(path, set())


@pytest.mark.slow
def test_kill9_mid_write_at_20_random_points(tmp_path):
    rnd = random.Random(11)
    for attempt in range(20):
        path = tmp_path / f"c{attempt}.h5"
        CacheWriter(path, PROV).close()
        target = rnd.choice(["part1", "part2", "part3", "part5", "main"])
        _kill_mid_write(path, target, rnd.randint(0, 300 if target != "main" else 30000))
        _finish_and_check(path, set())


CTRL_C = """
import sys, time
from woundscore.cache import CacheWriter
from tests.test_cache_helpers import PROV, make_rows
with CacheWriter(sys.argv[1], PROV) as w:
    for a in range(0, 1000, 2):
        w.append(**make_rows(a, a + 2))
        print("done", a + 2, flush=True)
        time.sleep(0.05)
"""


def test_ctrl_c_consolidates_the_batches_done_and_releases_the_lock(tmp_path):
    path = tmp_path / "c.h5"
    child = run_child(CTRL_C, str(path))
    assert child.stdout.readline().startswith("done"), child.stderr.read()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode != 0 and "KeyboardInterrupt" in err
    n = int(out.splitlines()[-1].split()[1]) if out.strip() else 2
    es = read_cache(path)
    assert len(es) >= n and not parts_dir(path).exists()  # consolidated on the way out
    assert_rows(es, 0, len(es))
    CacheWriter(path, PROV).close()  # lock released


def test_consolidate_cache_folds_an_interrupted_runs_batches(tmp_path):
    path = tmp_path / "c.h5"
    w = CacheWriter(path, PROV)
    w.append(**make_rows(0, 4))
    w.abort()  # as if killed: batches stay in the parts folder
    assert parts_dir(path).exists() and len(read_cache(path)) == 4
    consolidate_cache(path)
    assert not parts_dir(path).exists()
    assert_rows(read_cache(path), 0, 4)
    with h5py.File(path, "r") as f:  # now complete for plain h5py readers too
        assert f["embeddings"].shape == (4, DIM)


# ----------------------------------------------------------------------------- read while writing

CYCLER = """
import sys
import numpy as np
from woundscore.cache import CacheWriter
from tests.test_cache_helpers import PROV, make_rows
path = sys.argv[1]
n = 0
for cycle in range(4):  # every close consolidates: readers race with os.replace + part removal
    with CacheWriter(path, PROV) as w:
        for b in range(5):
            w.append(**make_rows(n, n + 2), order=np.arange(n, n + 2))
            n += 2
print("finished", flush=True)
"""


def test_readers_see_only_complete_batches_while_a_writer_appends_and_consolidates(tmp_path):
    path = tmp_path / "c.h5"
    CacheWriter(path, PROV).close()
    child = run_child(CYCLER, str(path))
    seen, reads = [], 0
    while child.poll() is None or reads == 0:
        es = read_cache(path)
        reads += 1
        n = len(es)
        assert n % 2 == 0  # whole batches only
        assert_rows(es, 0, n)  # a prefix, no duplicates, bit-identical vectors
        seen.append(n)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert seen == sorted(seen)  # never goes backwards
    assert_rows(read_cache(path), 0, 40)


# ----------------------------------------------------------------------------- disk full / unwritable

FILLER = """
import resource, signal, sys
import numpy as np
from woundscore.cache import CacheWriteError, CacheWriter
from tests.test_cache_helpers import PROV, make_rows
path, limit, start = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sizes = [int(x) for x in sys.argv[4].split(",")]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like ENOSPC
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
w = CacheWriter(path, PROV)
try:
    a = start
    for size in sizes:
        w.append(**make_rows(a, a + size), order=np.arange(a, a + size))
        a += size
        print("done", a, flush=True)
    w.close()
except CacheWriteError as e:
    print("ERROR", e, flush=True)
    w.abort()
"""


def test_disk_full_during_consolidation_leaves_the_cache_untouched_and_resumable(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 8)
    before = file_digest(path)
    # Batch files (~2 KB) fit under the limit, the consolidated file (> 16 KB) does not.
    child = run_child(FILLER, str(path), "16000", "8", ",".join(["4"] * 8))
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert "Segmentation" not in err
    assert out.count("done") == 8
    assert out.splitlines()[-1] == (
        f"ERROR {path}: cannot write the cache (File too large [errno EFBIG]); the existing cache is "
        "unchanged. Free some space or choose another output, then rerun to resume."
    )
    assert file_digest(path) == before  # main file untouched
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert_rows(read_cache(path), 0, 40)  # every reported batch is still there
    consolidate_cache(path)  # space is back
    assert_rows(read_cache(path), 0, 40)
    assert verify_cache(path) == []  # (was `assert_rows(...) and ...`: never ran, assert_rows returns None)


def test_disk_full_during_a_batch_keeps_the_earlier_batches(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 4)
    before = file_digest(path)
    # A batch of 2 rows (~1 KB) fits under the limit, one of 40 rows does not.
    child = run_child(FILLER, str(path), "4000", "4", "2,2,40,2")
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert out.splitlines()[:2] == ["done 6", "done 8"]
    assert out.splitlines()[-1].startswith(f"ERROR {path}: cannot write the cache (File too large [errno EFBIG])")
    assert file_digest(path) == before
    names = sorted(p.name for p in parts_dir(path).iterdir())
    assert len(names) == 2 and all(re.fullmatch(r"\d{9}\.part", n) for n in names), names  # no temp left
    assert_rows(read_cache(path), 0, 8)  # the cache and the batches before the failure


def test_disk_full_via_enospc_from_h5py_leaves_the_cache_untouched(tmp_path, monkeypatch):
    import errno

    from woundscore.cache.guarded import GuardedFile

    path = write_cache(tmp_path / "c.h5", 0, 4)
    before = file_digest(path)
    real_write = GuardedFile.write

    def full(self, data):  # the disk fills up after the first few KB
        if self.pos > 2048:
            self.error = self.error or OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(GuardedFile, "write", full)
    w = CacheWriter(path, PROV)
    w.append(**make_rows(4, 8))
    with pytest.raises(CacheWriteError) as e:
        w.close()
    assert "(No space left on device [errno ENOSPC])" in str(e.value)
    assert file_digest(path) == before
    monkeypatch.undo()
    assert_rows(read_cache(path), 0, 8)


def test_unwritable_output_is_a_clear_error(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    with pytest.raises(CacheWriteError) as e:
        CacheWriter(blocker / "c.h5", PROV)
    assert str(e.value) == (
        f"{blocker / 'c.h5'}: cannot write the cache (File exists [errno EEXIST]); the existing cache is "
        "unchanged. Free some space or choose another output, then rerun to resume."
    )


# ----------------------------------------------------------------------------- merge


def test_sharded_run_merged_equals_single_process_run(tmp_path):
    single = write_cache(tmp_path / "single.h5", 0, 24, batch=5)
    shards = []
    for rank in range(3):  # round-robin sharding, like a per-rank embed run
        path = tmp_path / f"shard-{rank}.h5"
        with CacheWriter(path, PROV) as w:
            for i in range(rank, 24, 3):
                w.append(**make_rows(i, i + 1), order=[i])
            if rank == 2:
                w.append(**make_rows(0, 1), order=[0])  # a duplicate image across shards
                w.record_failure("broken.jpg", "empty file")
        shards.append(path)
    out = tmp_path / "merged.h5"
    summary = merge_caches(shards, out)
    assert summary == {"shards": 3, "rows": 24, "duplicates": 1}
    a, b = read_cache(single), read_cache(out)
    assert_rows(b, 0, 24)
    np.testing.assert_array_equal(a.X, b.X)
    assert a.ids.tolist() == b.ids.tolist()
    assert verify_cache(out) == []
    assert read_failures(out) == [{"image_id": "broken.jpg", "reason": "empty file"}]
    assert read_runs(out)[-1]["status"] == "merged"


def test_merge_refuses_mismatched_shards_existing_output_and_live_shards(tmp_path):
    a = write_cache(tmp_path / "a.h5", 0, 4)
    b = write_cache(tmp_path / "b.h5", 4, 8, prov={**PROV, "encoder_revision": "zzz"})
    out = tmp_path / "out.h5"
    with pytest.raises(CacheMismatchError) as e:
        merge_caches([a, b], out)
    assert str(e.value) == (
        f"{b} (compared with {a}): refusing to mix rows from a different setup:\n"
        "  encoder_revision: cache has 'abc123', new rows have 'zzz'"
    )
    assert not out.exists()
    c = write_cache(tmp_path / "c.h5", 4, 8)
    merge_caches([a, c], out)
    with pytest.raises(CacheError, match="already exists; pass overwrite=True"):
        merge_caches([a, c], out)
    w = CacheWriter(c, PROV)
    try:
        with pytest.raises(CacheLockedError, match=f"{c}: shard is still being written by pid {os.getpid()}"):
            merge_caches([a, c], out, overwrite=True)
    finally:
        w.close()
    merge_caches([c, a], out, overwrite=True)
    assert_rows(read_cache(out), 0, 8)  # sorted by source order, not by shard order


def test_merge_without_source_order_sorts_by_id_whatever_the_argument_order(tmp_path):
    """Issue 14.1. Catches: rows concatenated in argument order (the old behaviour)."""
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    for path, (s, e) in ((a, (4, 8)), (b, (0, 4))):
        with CacheWriter(path, PROV) as w:
            w.append(**make_rows(s, e))  # no order given: append order
    merge_caches([a, b], tmp_path / "m.h5")
    merge_caches([b, a], tmp_path / "n.h5")
    assert_rows(read_cache(tmp_path / "m.h5"), 0, 8)
    assert_rows(read_cache(tmp_path / "n.h5"), 0, 8)


# ----------------------------------------------------------------------------- verify / info


def test_verify_finds_planted_nan_duplicates_and_bad_labels(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 8)
    assert verify_cache(path) == []
    with h5py.File(path, "r+") as f:  # damage it behind the package's back
        f["embeddings"][2, 3] = np.nan
        f["embeddings"][5, 0] = np.inf
        f["image_id"][6] = "img 001.jpg"
        f["sha256"][7] = f["sha256"][0]  # identical bytes under two ids: allowed (issue 14.1)
        f["labels"][4, 1] = 7
    assert verify_cache(path) == [
        f"{path}: 2 row(s) have NaN/inf embeddings: img 002.jpg, img 005.jpg",
        f"{path}: 1 row(s) have labels outside {{-1, 0, 1}}: img 004.jpg (e.g. img 004.jpg erythema=7)",
        f"{path}: 1 duplicate image id(s): img 001.jpg",
    ]


def test_verify_finds_missing_attributes_and_datasets(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 4)
    with h5py.File(path, "r+") as f:
        del f.attrs["encoder_id"]
        del f["split"]
        f.attrs["preprocessing"] = "{not json"
    assert verify_cache(path) == [
        f"{path}: attribute 'encoder_id' is missing",
        f"{path}: dataset 'split' is missing",
        f"{path}: attribute 'preprocessing' is not JSON",
    ]
    assert verify_cache(tmp_path / "nope.h5") == [f"{tmp_path / 'nope.h5'}: no such file"]


def test_cache_info_counts_rows_and_labels_per_split(tmp_path):
    path = write_cache(tmp_path / "c.h5", 0, 12)
    info = cache_info(path)
    assert info["rows"] == 12 and info["embedding_dim"] == DIM and info["pending_batches"] == 0
    assert {s: d["rows"] for s, d in info["splits"].items()} == {"train": 6, "val": 3, "test": 3}
    Y = make_rows(0, 12)["labels"][[i for i in range(12) if i % 4 == 2]]
    val = info["splits"]["val"]["labels"]
    for j, name in enumerate(LABEL_NAMES):
        assert val[name] == {"pos": int((Y[:, j] == 1).sum()), "neg": int((Y[:, j] == 0).sum()), "missing": int((Y[:, j] == -1).sum())}
    assert info["provenance"]["preprocessing"] == PROV["preprocessing"]
    assert info["failures"] == {"count": 0, "items": []}
    json.dumps(info)  # JSON-able for --json
