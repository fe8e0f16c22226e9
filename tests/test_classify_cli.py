"""wound-classify train / evaluate / predict on a real cache file: output, exact errors, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.cli import cli
from woundscore.classify.synthetic import synthetic_embedding_set, write_synthetic_cache


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cli") / "emb.h5"
    write_synthetic_cache(path, synthetic_embedding_set(160, 60, 60, dim=16, seed=9, signal=4.0))
    return path


@pytest.fixture(scope="module")
def trained(cache: Path) -> tuple[Path, str]:
    out = cache.parent / "mlp"
    r = CliRunner().invoke(cli, ["train", str(cache), "--out", str(out), "--max-epochs", "6", "--seed", "1"])
    assert r.exit_code == 0, r.output
    return out, r.output


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_every_command_has_help_with_example_and_exit_codes(command: str) -> None:
    r = CliRunner().invoke(cli, [command, "--help"])
    assert r.exit_code == 0
    assert "Example:\n" in r.output and "Exit codes: 0" in r.output
    assert f"wound-classify {command} " in r.output


def test_train_prints_progress_and_the_validation_table(trained: tuple[Path, str]) -> None:
    out, output = trained
    lines = output.splitlines()
    epochs = [l for l in lines if l.startswith("epoch ")]
    assert 1 <= len(epochs) <= 6 and epochs[0].startswith("epoch   1/6  loss ")
    assert "val macro AUC" in epochs[0]
    header = next(i for i, l in enumerate(lines) if l.startswith("label"))
    assert lines[header].split() == ["label", "n", "pos", "AUC", "thresh", "sens", "spec", "rule"]
    assert lines[header + 2 + LABEL_NAMES.index("urgency")].endswith("  sensitivity>=0.90")
    assert [l.split()[0] for l in lines[header + 2 : header + 8]] == list(LABEL_NAMES)
    assert any(l.startswith("macro AUC") for l in lines)
    assert lines[-1] == "NOTICE: synthetic embeddings with a planted signal; means nothing clinically"
    assert (out / "model.keras").is_file()


def test_train_quiet_logreg(cache: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["train", str(cache), "--out", str(tmp_path / "p"), "--model", "logreg", "--quiet"])
    assert r.exit_code == 0, r.output
    assert not [l for l in r.output.splitlines() if l.startswith("epoch")]
    assert (tmp_path / "p" / "probe.json").is_file()


def test_train_refuses_an_existing_folder(cache: Path, trained: tuple[Path, str]) -> None:
    out, _ = trained
    r = CliRunner().invoke(cli, ["train", str(cache), "--out", str(out), "--quiet"])
    assert r.exit_code == 1
    assert r.output == f"Error: {out}: folder exists and is not empty (use --overwrite to replace it)\n"


def test_usage_errors_exit_2(cache: Path, tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["train", str(cache), "--out", str(tmp_path / "x"), "--model", "svm"])
    assert r.exit_code == 2 and "Invalid value for '--model': 'svm' is not one of 'mlp', 'logreg'." in r.output
    r = CliRunner().invoke(cli, ["train", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = CliRunner().invoke(cli, ["train", str(cache)])
    assert r.exit_code == 2 and "Missing option '--out'" in r.output


def test_evaluate_table_and_json(cache: Path, trained: tuple[Path, str]) -> None:
    out, _ = trained
    r = CliRunner().invoke(cli, ["evaluate", str(out), str(cache), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["split"] == "test" and d["n_rows"] == 60 and d["model_type"] == "mlp"
    assert set(d["labels"]) == set(LABEL_NAMES) and d["rules"]["urgency"] == "sensitivity>=0.90"
    thr = json.loads((out / "thresholds.json").read_text())
    assert d["labels"]["edema"]["threshold"] == thr["labels"]["edema"]["value"]
    r = CliRunner().invoke(cli, ["evaluate", str(out), str(cache), "--split", "val"])
    assert r.exit_code == 0 and r.output.startswith(f"val split of {cache} (60 rows), model {out}\nlabel")


def test_evaluate_refuses_a_cache_from_another_encoder(trained: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = trained
    other = tmp_path / "other.h5"
    write_synthetic_cache(other, synthetic_embedding_set(10, 5, 5, dim=16, seed=1, encoder_id="google/medsiglip-448"))
    r = CliRunner().invoke(cli, ["evaluate", str(out), str(other)])
    assert r.exit_code == 1
    assert r.output == (
        f"Error: {out}: refusing to score embeddings made differently from the model's training data:\n"
        f"  encoder_id: model has 'synthetic/encoder', cache {other} has 'google/medsiglip-448'\n"
    )


def test_evaluate_empty_split_and_bad_model_folder(cache: Path, trained: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = trained
    only_train = tmp_path / "t.h5"
    write_synthetic_cache(only_train, synthetic_embedding_set(20, 0, 0, dim=16, seed=2))
    r = CliRunner().invoke(cli, ["evaluate", str(out), str(only_train)])
    assert r.exit_code == 1
    assert r.output == f"Error: {only_train}: split 'test' has no rows (train=20, val=0, test=0)\n"
    (tmp_path / "empty").mkdir()
    r = CliRunner().invoke(cli, ["evaluate", str(tmp_path / "empty"), str(cache)])
    assert r.exit_code == 1
    assert r.output == f"Error: {tmp_path / 'empty'}: not a woundscore model folder (provenance.json is missing)\n"


def test_train_on_cache_without_val_rows_is_a_clear_error(tmp_path: Path) -> None:
    c = tmp_path / "noval.h5"
    write_synthetic_cache(c, synthetic_embedding_set(20, 0, 5, dim=16, seed=2))
    r = CliRunner().invoke(cli, ["train", str(c), "--out", str(tmp_path / "m"), "--quiet"])
    assert r.exit_code == 1
    assert r.output == (f"Error: {c}: needs rows in both the train and val splits (has train=20, val=0, test=5); "
                        "val chooses the epoch and the thresholds\n")
    assert not (tmp_path / "m").exists()


def test_predict_refuses_an_encoder_that_cannot_load(trained: tuple[Path, str], tmp_path: Path) -> None:
    out, _ = trained
    img = tmp_path / "a.jpg"
    img.write_bytes(b"x")
    r = CliRunner().invoke(cli, ["predict", str(out), str(img), "--encoder", str(tmp_path / "no-such-model")])
    assert r.exit_code == 1 and r.output.startswith("Error: ")
    assert str(tmp_path / "no-such-model") in r.output
    assert r.output.endswith("(here the option is --encoder)\n")


def test_help_loads_no_encoder_library() -> None:
    # `import woundscore` registers the Keras loss (so it loads keras and torch); the encoder's
    # library (transformers) and scikit-learn's estimators still load only when a command runs.
    import subprocess
    import sys

    code = ("import sys\nfrom click.testing import CliRunner\nfrom woundscore.classify.cli import cli\n"
            "for c in ('train', 'evaluate', 'predict'):\n    assert CliRunner().invoke(cli, [c, '--help']).exit_code == 0\n"
            "print(sorted(m for m in ('transformers', 'sklearn.linear_model') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
