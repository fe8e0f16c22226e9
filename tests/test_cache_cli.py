"""wound-cache info / verify / merge through click's CliRunner: exact text and exit codes."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from woundscore.cache.cli import cli
from woundscore.cache import CacheWriter
from tests.test_cache_helpers import DIM, PROV, make_rows


def build(path, start=0, stop=8, prov=PROV, failures=()):
    with CacheWriter(path, prov) as w:
        w.append(**make_rows(start, stop), order=np.arange(start, stop))
        for image_id, reason in failures:
            w.record_failure(image_id, reason)
    return path


@pytest.fixture
def runner():
    return CliRunner()


def test_every_command_has_help_with_an_example(runner):
    names = sorted(cli.commands)
    assert names == ["info", "merge", "verify"]
    for name in names:
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0, result.output
        assert "Example:\n      wound-cache " + name in result.output
        assert "Exit codes:" in result.output
    assert runner.invoke(cli, ["--help"]).exit_code == 0


def test_info_text(runner, tmp_path):
    path = build(tmp_path / "c.h5", failures=[("bad.jpg", "truncated JPEG")])
    result = runner.invoke(cli, ["info", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:5] == [
        f"cache: {path}",
        f"rows: 8 (embedding dim {DIM})",
        "encoder: tiny-siglip @ abc123",
        'preprocessing: {"mean": [0.5, 0.5, 0.5], "resample": "bilinear", "size": [64, 64], "std": [0.5, 0.5, 0.5]}',
        "compute: float32 on cpu",
    ]
    Y = make_rows(0, 8)["labels"][[2, 6]]  # the val rows
    i = lines.index("split val: 2 rows")
    assert lines[i + 1].split() == ["label", "pos", "neg", "missing"]
    assert lines[i + 2].split() == ["healing_status", *(str(int((Y[:, 0] == v).sum())) for v in (1, 0, -1))]
    assert "failures: 1" in lines and "  bad.jpg: truncated JPEG" in lines
    assert any(line.startswith("runs: 1") for line in lines)


def test_info_json(runner, tmp_path):
    path = build(tmp_path / "c.h5")
    result = runner.invoke(cli, ["info", str(path), "--json"])
    assert result.exit_code == 0
    info = json.loads(result.output)
    assert info["rows"] == 8 and {s: d["rows"] for s, d in info["splits"].items()} == {"train": 4, "val": 2, "test": 2}
    assert info["provenance"]["preprocessing"]["size"] == [64, 64]
    assert info["failures"] == {"count": 0, "items": []}


def test_info_errors(runner, tmp_path):
    result = runner.invoke(cli, ["info", str(tmp_path / "missing.h5")])
    assert result.exit_code == 2
    assert result.output.endswith(f"Error: Invalid value for 'CACHE': File '{tmp_path / 'missing.h5'}' does not exist.\n")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1]
    result = runner.invoke(cli, ["info", str(other)])
    assert result.exit_code == 1
    assert result.output == f"Error: {other}: not a woundscore embedding cache (no 'layout_version' attribute)\n"


def test_verify_ok(runner, tmp_path):
    path = build(tmp_path / "c.h5", failures=[("bad.jpg", "empty file")])
    result = runner.invoke(cli, ["verify", str(path)])
    assert result.exit_code == 0
    assert result.output == ("OK: 8 rows, dim 8 (train 4, val 2, test 2), 1 failure(s) recorded\n"
                             "leakage: no duplicate images across splits (same bytes, or embedding cosine >= 0.98)\n")


def test_verify_reports_problems_and_exits_1(runner, tmp_path):
    path = build(tmp_path / "c.h5")
    with h5py.File(path, "r+") as f:
        f["embeddings"][1, 0] = np.nan
        f["image_id"][3] = "img 000.jpg"
    result = runner.invoke(cli, ["verify", str(path)])
    assert result.exit_code == 1
    assert result.stdout == (
        f"{path}: 1 row(s) have NaN/inf embeddings: img 001.jpg\n"
        f"{path}: 1 duplicate image id(s): img 000.jpg\n"
    )
    assert result.stderr == f"Error: 2 problem(s) in {path}\n"


def test_merge(runner, tmp_path):
    a = build(tmp_path / "a.h5", 4, 8)
    b = build(tmp_path / "b.h5", 0, 5)  # row 4 is in both shards
    out = tmp_path / "m.h5"
    result = runner.invoke(cli, ["merge", str(a), str(b), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output == f"Merged 2 shard(s): 8 rows (1 duplicate(s) skipped) -> {out}\n"
    assert runner.invoke(cli, ["verify", str(out)]).exit_code == 0
    again = runner.invoke(cli, ["merge", str(a), str(b), "--out", str(out)])
    assert again.exit_code == 1
    assert again.output == f"Error: {out}: already exists; pass overwrite=True (--overwrite) to replace it\n"
    assert runner.invoke(cli, ["merge", str(a), str(b), "--out", str(out), "--overwrite"]).exit_code == 0


def test_merge_refuses_mismatched_shards(runner, tmp_path):
    a = build(tmp_path / "a.h5", 0, 4)
    b = build(tmp_path / "b.h5", 4, 8, prov={**PROV, "encoder_id": "google/medsiglip-448"})
    result = runner.invoke(cli, ["merge", str(a), str(b), "--out", str(tmp_path / "m.h5")])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {b} (compared with {a}): refusing to mix rows from a different setup:\n"
        "  encoder_id: cache has 'tiny-siglip', new rows have 'google/medsiglip-448'\n"
    )


def test_merge_usage_errors(runner, tmp_path):
    a = build(tmp_path / "a.h5", 0, 4)
    result = runner.invoke(cli, ["merge", str(a)])
    assert result.exit_code == 2 and "Missing option '--out'" in result.output
    result = runner.invoke(cli, ["merge", "--out", str(tmp_path / "m.h5")])
    assert result.exit_code == 2 and "Missing argument 'PART...'" in result.output
