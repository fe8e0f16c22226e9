"""`wound-compare`: every command has --help with an Example; `run` is a thin adapter whose errors
are exact texts with meaningful exit codes (1: the comparison cannot run, 2: usage)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from woundscore.cache import CacheWriter
from woundscore.compare.cli import cli
from woundscore.compare.predictions import HEADER
from tests.test_report import make_set, write_external


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory):
    """A real cache file (CacheWriter) of the planted-signal set, and the set's latent z."""
    es, z = make_set(n_train=120, n_val=40, n_test=50, seed=21)
    path = tmp_path_factory.mktemp("cli") / "emb.h5"
    prov = {
        "encoder_id": "synthetic/test", "encoder_revision": "r1", "embedding_dim": es.X.shape[1],
        "preprocessing": {"size": [16, 16]}, "compute_dtype": "float32", "device": "cpu",
        "notice": "random vectors: means nothing clinically",
    }
    with CacheWriter(path, prov, overwrite=True) as w:
        w.append(list(es.ids), list(es.sha256), list(es.split), es.Y,
                 {k: list(v) for k, v in es.extras.items()}, es.X)
    return path, es, z


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_every_compare_command_has_help_with_an_example():
    top = invoke("--help")
    assert top.exit_code == 0
    assert "run" in cli.commands
    for name in cli.commands:
        r = invoke(name, "--help")
        assert r.exit_code == 0, name
        assert "Example:" in r.output, name
        assert f"wound-compare {name}" in r.output.split("Example:", 1)[1], name


def test_run_help_documents_exit_codes():
    out = invoke("run", "--help").output
    assert "Exit codes: 0 report written; 1 the comparison could not run" in out


def test_run_writes_the_report_and_prints_where(cache_file, tmp_path):
    path, es, z = cache_file
    p = write_external(tmp_path / "ft.csv", es, z)
    out = tmp_path / "report"
    r = invoke("run", str(path), "--out", str(out), "--train", "probe", "--predictions", f"ft={p}",
               "--no-zero-shot", "--bootstrap", "200", "--quiet")
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[-2:] == [f"report: {out / 'report.html'}", f"        {out / 'report.md'}"]
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["methods"]) == ["probe", "ft"]
    assert m["notice"] == ["random vectors: means nothing clinically"]
    assert m["cache"]["path"] == str(path)
    assert m["metrics"]["bootstrap"]["n_resamples"] == 200
    assert m["skipped"] == {"zero-shot": "not requested (--no-zero-shot)"}
    assert lines[0] == m["answer"]["text"]


def test_missing_ids_exit_1_naming_file_and_ids(cache_file, tmp_path):
    path, es, z = cache_file
    test_ids = [str(i) for i in es.ids[es.split == "test"]]
    keep = es.ids != test_ids[4]
    p = write_external(tmp_path / "short.csv", es.select(keep), z[keep])
    r = invoke("run", str(path), "--out", str(tmp_path / "o"), "--train", "none", "--predictions", f"ft={p}",
               "--no-zero-shot", "--quiet")
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {p}: predictions for method 'ft' lack 1 of the cache's {len(test_ids)} test image id(s): "
        f"{test_ids[4]!r}\n"
    )
    assert not (tmp_path / "o").exists()


def test_bad_predictions_header_exit_1(cache_file, tmp_path):
    path, _, _ = cache_file
    p = tmp_path / "bad.csv"
    p.write_text(",".join(HEADER[:-1]) + "\nimg0001.jpg,0.1,0.2,0.3,0.4,0.5\n")
    r = invoke("run", str(path), "--out", str(tmp_path / "o"), "--predictions", f"x={p}", "--quiet")
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {p}: line 1: bad header (missing column(s) exudate); expected {','.join(HEADER)}\n"
    )


def test_finetune_dir_without_predictions_exit_1(cache_file, tmp_path):
    path, _, _ = cache_file
    r = invoke("run", str(path), "--out", str(tmp_path / "o"), "--finetune-dir", str(tmp_path), "--quiet")
    assert r.exit_code == 1
    assert r.output == f"Error: {tmp_path}: no predictions.csv in the fine-tune folder\n"


def test_not_a_cache_exit_1(tmp_path):
    bogus = tmp_path / "not.h5"
    bogus.write_bytes(b"this is not HDF5")
    r = invoke("run", str(bogus), "--out", str(tmp_path / "o"), "--quiet")
    assert r.exit_code == 1
    assert r.output.startswith(f"Error: {bogus}")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--predictions", "nofile"], "Invalid value for '--predictions': 'nofile' is not NAME=FILE"),
        (["--predictions", "a=x.csv", "--predictions", "a=y.csv"],
         "Invalid value for '--predictions': method name 'a' given twice"),
        (["--bootstrap", "50"], "Invalid value for '--bootstrap': 50 is not in the range x>=100."),
        (["--train", "svm"], "Invalid value for '--train': 'svm' is not one of 'probe', 'mlp', 'none'."),
    ],
)
def test_usage_errors_exit_2(cache_file, tmp_path, args, message):
    path, _, _ = cache_file
    r = invoke("run", str(path), "--out", str(tmp_path / "o"), *args)
    assert r.exit_code == 2
    assert message in r.output


def test_missing_cache_and_out_are_usage_errors(cache_file, tmp_path):
    missing = tmp_path / "nope.h5"
    r = invoke("run", str(missing), "--out", str(tmp_path / "o"))
    assert r.exit_code == 2 and f"Error: Invalid value for 'CACHE': File '{missing}' does not exist." in r.output
    r = invoke("run", str(cache_file[0]))
    assert r.exit_code == 2 and "Error: Missing option '--out'." in r.output


def test_name_clash_is_exit_1(cache_file, tmp_path):
    path, es, z = cache_file
    p = write_external(tmp_path / "p.csv", es, z)
    r = invoke("run", str(path), "--out", str(tmp_path / "o"), "--predictions", f"probe={p}", "--quiet")
    assert r.exit_code == 1
    assert r.output == "Error: method name 'probe' is taken by a built-in method; choose another NAME in NAME=FILE\n"


def test_finetune_whose_loss_stays_nan_exits_3_with_its_message(monkeypatch, tmp_path):
    """The one WoundscoreGroup handler keeps an error's own exit code (3: NaN loss), not 1."""
    import woundscore.compare.finetune as ft

    def nan_loss(*args, **kwargs):
        raise ft.NonFiniteLossError("the loss was NaN/inf for 3 steps in a row; try --dtype float32")

    monkeypatch.setattr(ft, "finetune", nan_loss)
    r = invoke("finetune", str(tmp_path), "--out", str(tmp_path / "ft"))
    assert r.exit_code == 3
    assert r.output == "Error: the loss was NaN/inf for 3 steps in a row; try --dtype float32\n"


def test_a_library_error_exits_1_through_the_one_handler(monkeypatch, tmp_path):
    import woundscore.compare.finetune as ft

    def bad_source(*args, **kwargs):
        raise ft.FineTuneError(f"{tmp_path}: no val split")

    monkeypatch.setattr(ft, "finetune", bad_source)
    r = invoke("finetune", str(tmp_path), "--out", str(tmp_path / "ft"))
    assert (r.exit_code, r.output) == (1, f"Error: {tmp_path}: no val split\n")
