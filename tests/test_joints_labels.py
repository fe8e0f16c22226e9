"""Label errors come before any model load (issue 16, item 7; README Reliability: "error before any
model load or write").

The model path here fails loudly when touched: ``load_encoder`` is replaced by a spy that records
the call and raises, and the CLI gets a model folder that does not exist. A label error must win
in both, and nothing may be written.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from woundscore.embed.samples import SourceError


class ModelTouched(Exception):
    """Raised by the spy: the run loaded the model before it had checked the labels."""


def _rewrite(src: Path, edit) -> None:
    with open(src / "labels.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    rows = edit(rows)
    with open(src / "labels.csv", "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def _set(rows, r, col, value):
    rows[r][rows[0].index(col)] = value
    return rows


# one edit per kind of label problem the README's Reliability row names
BAD_LABELS = {
    "unknown label value": lambda rows: _set(rows, 3, "healing_status", "Maybe"),
    "missing column": lambda rows: [[c for k, c in enumerate(r) if k != rows[0].index("edema")] for r in rows],
    "two answers for one image": lambda rows: rows + [_other_answer(rows, 2)],
    "unknown split": lambda rows: _set(rows, 4, "split", "holdout"),
    "empty split": lambda rows: _set(rows, 4, "split", ""),
    "image in two splits": lambda rows: rows + [_other_split(rows, 2)],
}


def _other_answer(rows, r):
    row = list(rows[r])
    k = rows[0].index("erythema")
    row[k] = "Yes" if row[k] != "Yes" else "No"
    return row


def _other_split(rows, r):
    row = list(rows[r])
    k = rows[0].index("split")
    row[k] = "val" if row[k] != "val" else "test"
    return row


@pytest.fixture
def spy_encoder(monkeypatch):
    import woundscore.embed.run as run

    calls: list[tuple] = []

    def load_encoder(*args, **kwargs):
        calls.append(args)
        raise ModelTouched(f"model loaded before the labels were checked: {args!r}")

    monkeypatch.setattr(run, "load_encoder", load_encoder)
    return calls


@pytest.mark.parametrize("kind", list(BAD_LABELS))
def test_label_error_is_raised_before_the_model_is_loaded(kind, tmp_path, labels_csv_dir, spy_encoder):
    """Catches: embed/run.py run_embedding loading the encoder before ``open_source(...).samples()``
    (then the spy's ModelTouched comes out instead of the SourceError)."""
    from woundscore.embed.run import run_embedding

    src = tmp_path / "src"
    shutil.copytree(labels_csv_dir, src)
    _rewrite(src, BAD_LABELS[kind])
    out = tmp_path / "e.h5"
    with pytest.raises(SourceError) as e:
        run_embedding(src, out, model=tmp_path / "model-that-must-not-be-touched", workers=0, quiet=True)
    assert str(src / "labels.csv") in str(e.value)
    assert spy_encoder == []
    assert list(tmp_path.iterdir()) == [src]  # no cache, no part file, no lock


def test_control_a_good_source_does_reach_the_model(tmp_path, labels_csv_dir, spy_encoder):
    """The spy works: with valid labels the run gets to the model and the spy fires."""
    from woundscore.embed.run import run_embedding

    with pytest.raises(ModelTouched):
        run_embedding(labels_csv_dir, tmp_path / "e.h5", model=tmp_path / "m", workers=0, quiet=True)
    assert len(spy_encoder) == 1


def test_cli_reports_the_label_error_not_the_missing_model(tmp_path, labels_csv_dir):
    """Through `wound-embed run` with a model folder that does not exist: exit 1 with the label
    error. Catches loading the model first (the message would be the encoder's load error)."""
    from woundscore.embed.cli import cli

    src = tmp_path / "src"
    shutil.copytree(labels_csv_dir, src)
    _rewrite(src, BAD_LABELS["unknown label value"])
    out = tmp_path / "e.h5"
    r = CliRunner().invoke(cli, ["run", str(src), "--out", str(out), "--model", str(tmp_path / "no-model"), "--quiet"])
    assert r.exit_code == 1, r.output
    assert r.output.startswith(f"Error: {src / 'labels.csv'}: row 4"), r.output
    assert "no-model" not in r.output and not out.exists()
