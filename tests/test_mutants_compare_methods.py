"""The report's external-method runner and the predictions file, pinned by exact values and
messages, so mutants of compare/methods.py (_val_rows, _calibrate_and_threshold, external_method)
and compare/predictions.py (reading, writing, sidecar) fail (TESTING.md, `make mutants`, group
compare_methods). Calls the runner directly on a small set: about two seconds in all."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from woundscore.cache.schema import LABEL_NAMES
from woundscore.classify.calibration import fit_calibration
from woundscore.classify.thresholds import choose_thresholds
from woundscore.compare.methods import ReportError, _val_rows, external_method
from woundscore.compare.predictions import (
    HEADER,
    PredictionsError,
    read_predictions,
    read_predictions_meta,
    write_predictions,
)
from tests.test_report import make_set, sigmoid

HEAD = ",".join(HEADER)


def _csv(tmp_path, text: str, name: str = "p.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _row(i: str, v: str = "0.5") -> str:
    return ",".join([i] + [v] * 6)


@pytest.fixture  # per test: mutmut maps a function to the tests that ran it
def small():
    es, z = make_set(n_train=20, n_val=30, n_test=24, seed=4)
    P = sigmoid(z + 0.7 * np.random.default_rng(5).normal(size=z.shape))
    return es, {str(i): P[k] for k, i in enumerate(es.ids)}


def test_external_method_matches_ids_calibrates_on_val_and_notes_extra_rows(tmp_path, small) -> None:
    es, by_id = small
    test, val = es.subset("test"), es.subset("val")
    ids = [str(i) for i in (*test.ids[::-1], *val.ids, *es.subset("train").ids[:3])]  # reversed, plus 3 extra
    rng = np.random.default_rng(0)
    ids = [ids[k] for k in rng.permutation(len(ids))]
    p = write_predictions(tmp_path / "e.csv", ids, np.stack([by_id[i] for i in ids]))
    run = external_method("ext", p, es, "fallback description")
    P_val = np.stack([by_id[str(i)] for i in val.ids])
    cal = fit_calibration(val.Y, P_val)
    raw_test = np.stack([by_id[str(i)] for i in test.ids])
    np.testing.assert_allclose(run.P_test_raw, raw_test)
    np.testing.assert_allclose(run.P_test, cal.apply(raw_test))
    chosen = choose_thresholds(val.Y, cal.apply(P_val), label_names=LABEL_NAMES)["labels"]
    assert run.thresholds == {lab: {chosen[lab]["applied"]: chosen[lab]["value"]} for lab in LABEL_NAMES}
    assert run.calibration == {**cal.to_json(), "fitted_on": "30 val rows of the file"}
    assert run.calibration_note == "fitted on 30 val rows of the file: " + ", ".join(
        f"{k} {v}" for k, v in cal.methods.items())
    assert run.threshold_rule.startswith("chosen on 30 val rows of the file (calibrated scores): ")
    assert run.description == "fallback description" and run.origin == str(p)
    assert run.notes == ["no sidecar e.json: cost not reported",
                         "3 row(s) of the file are not in the cache's test/val splits and were ignored"]
    assert run.cost == {k: None for k in run.cost} and "train_seconds" in run.cost and run.notice is None
    obs = test.Y[:, 0] != -1
    assert roc_auc_score(test.Y[obs, 0], run.P_test_raw[obs, 0]) == pytest.approx(
        roc_auc_score(test.Y[obs, 0], raw_test[obs, 0]))


def test_external_method_without_val_rows_keeps_raw_scores_and_says_why(tmp_path, small) -> None:
    es, by_id = small
    test = es.subset("test")
    ids = [str(i) for i in test.ids][::-1]
    p = write_predictions(tmp_path / "t.csv", ids, np.stack([by_id[i] for i in ids]),
                          meta={"method": "my fine-tune", "train_seconds": 12.5, "notes": "hello", "notice": "N"})
    run = external_method("ext", p, es, "fallback")
    np.testing.assert_array_equal(run.P_test, np.stack([by_id[str(i)] for i in test.ids]))
    assert run.thresholds == {} and run.calibration is None
    assert run.calibration_note == "not calibrated: the file has no predictions for the val split, so no val-chosen threshold"
    assert run.threshold_rule == "0.5 only (the file has no predictions for the val split, so no val-chosen threshold)"
    assert run.description == "my fine-tune" and run.cost["train_seconds"] == 12.5 and run.notes == ["hello"]
    assert run.notice == "N"


def test_external_method_names_the_missing_test_ids(tmp_path, small) -> None:
    es, by_id = small
    test_ids = [str(i) for i in es.subset("test").ids]
    ids = test_ids[12:]  # 12 missing: ten shown, then "..."
    p = write_predictions(tmp_path / "m.csv", ids, np.stack([by_id[i] for i in ids]))
    shown = ", ".join(repr(m) for m in test_ids[:10])
    with pytest.raises(ReportError) as e:
        external_method("ext", p, es, "d")
    assert str(e.value) == (f"{p}: predictions for method 'ext' lack 12 of the cache's 24 test image id(s): "
                            f"{shown}, ...")
    for k, tail in ((10, ""), (11, ", ...")):  # "..." only past ten
        ids = test_ids[k:]
        p = write_predictions(tmp_path / f"m{k}.csv", ids, np.stack([by_id[i] for i in ids]))
        with pytest.raises(ReportError) as e:
            external_method("ext", p, es, "d")
        assert str(e.value).endswith(f"{shown}{tail}")
    ids = test_ids[1:]
    p = write_predictions(tmp_path / "m1.csv", ids, np.stack([by_id[i] for i in ids]))
    with pytest.raises(ReportError, match=re.escape(f"lack 1 of the cache's 24 test image id(s): {test_ids[0]!r}") + "$"):
        external_method("ext", p, es, "d")


def test_val_rows_by_id(small) -> None:
    es, _ = small
    val = es.subset("val")
    ids = ["x", *[str(i) for i in val.ids][::-1]]
    assert _val_rows(val, ids) == list(range(len(ids) - 1, 0, -1))
    assert _val_rows(val, ids[:-1]) is None  # one val image without a row
    assert _val_rows(val.select(np.arange(0)), ids) is None  # no val split at all


def test_read_predictions_reorders_columns_keeps_ids_and_skips_blank_lines(tmp_path) -> None:
    cols = list(HEADER[1:])[::-1]
    text = "\ufeff" + ",".join([" " + c + " " for c in cols] + ["image_id"]) + "\n" + \
        ",".join([str(k / 10) for k in range(6)] + [" a b "]) + "\n\n , \n" + \
        ",".join(["1"] * 6 + ["'=x"]) + "\n"
    ids, P = read_predictions(_csv(tmp_path, text))
    assert ids.tolist() == [" a b ", "=x"] and P.dtype == np.float64 and P.shape == (2, 6)
    np.testing.assert_array_equal(P[0], [0.5, 0.4, 0.3, 0.2, 0.1, 0.0])  # LABEL_NAMES order
    np.testing.assert_array_equal(P[1], np.ones(6))


@pytest.mark.parametrize("text, message", [
    ("", f": empty file; expected the header {HEAD}"),
    ("image_id,x\n", f": line 1: bad header (missing column(s) {', '.join(HEADER[1:])}; unknown column(s) x); "
                     f"expected {HEAD}"),
    (HEAD + ",image_id\n", f": line 1: bad header (duplicate column(s)); expected {HEAD}"),
    (HEAD + "\n" + _row("a") + ",0.1\n", ": line 2: 8 fields, header has 7"),
    (HEAD + "\n" + _row("  ") + "\n", ": line 2: empty image_id"),
    (HEAD + "\n" + _row("a", "abc") + "\n", ": line 2: image 'a': healing_status='abc' is not a probability in [0, 1]"),
    (HEAD + "\n" + _row("a", "nan") + "\n", ": line 2: image 'a': healing_status='nan' is not a probability in [0, 1]"),
    (HEAD + "\n" + "a,0,0,0,0,0,1.5\n", ": line 2: image 'a': exudate='1.5' is not a probability in [0, 1]"),
    (HEAD + "\n" + "a,-0.1,0,0,0,0,0\n", ": line 2: image 'a': healing_status='-0.1' is not a probability in [0, 1]"),
    (HEAD + "\n" + _row("a") + "\n\n" + _row("a") + "\n", ": line 4: image_id 'a' already on line 2"),
    (HEAD + "\n\n", ": no prediction rows after the header"),
])
def test_read_predictions_refusals_name_file_line_and_field(tmp_path, text: str, message: str) -> None:
    p = _csv(tmp_path, text)
    with pytest.raises(PredictionsError) as e:
        read_predictions(p)
    assert str(e.value) == f"{p}{message}"


def test_read_predictions_boundaries_and_missing_file(tmp_path) -> None:
    ids, P = read_predictions(_csv(tmp_path, HEAD + "\n" + "a,0,1,0.0,1.0,0,1\n"))
    assert ids.tolist() == ["a"] and P.tolist() == [[0, 1, 0, 1, 0, 1]]
    with pytest.raises(PredictionsError, match=r"nope\.csv: cannot read predictions file: No such file"):
        read_predictions(tmp_path / "nope.csv")


def test_write_predictions_round_trip_sidecar_and_refusals(tmp_path) -> None:
    P = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 1 / 3], [0, 1, 0, 1, 0, 1]], dtype=np.float64)
    p = write_predictions(tmp_path / "sub" / "w.csv", ["=cmd", "b"], P, meta={"z": 1, "a": "x"})
    assert p == tmp_path / "sub" / "w.csv"
    lines = p.read_text(encoding="utf-8").splitlines()
    assert lines[0] == HEAD and lines[1].startswith("'=cmd,0.1,0.2,") and lines[1].endswith(repr(1 / 3))
    ids, back = read_predictions(p)
    assert ids.tolist() == ["=cmd", "b"] and np.array_equal(back, P)
    assert (tmp_path / "sub" / "w.json").read_text() == '{\n  "a": "x",\n  "z": 1\n}\n'
    assert read_predictions_meta(p) == {"a": "x", "z": 1}
    assert not (tmp_path / "n.json").exists() and read_predictions_meta(write_predictions(tmp_path / "n.csv", ["a"], P[:1])) is None
    q = tmp_path / "q.csv"
    with pytest.raises(PredictionsError, match=re.escape(f"{q}: probabilities must have shape (2, 6), got (1, 6)")):
        write_predictions(q, ["a", "b"], P[:1])
    with pytest.raises(PredictionsError, match=re.escape(f"{q}: probabilities must have shape (1, 6), got (6,)")):
        write_predictions(q, ["a"], P[0])
    with pytest.raises(PredictionsError, match=re.escape(f"{q}: duplicate image ids ['a']")):
        write_predictions(q, ["a", "a"], P)
    bad = P.copy()
    bad[1, 2] = np.nan
    with pytest.raises(PredictionsError, match=re.escape(f"{q}: image 'b': edema=nan is not a probability in [0, 1]")):
        write_predictions(q, ["a", "b"], bad)
    bad[1, 2] = -0.5
    with pytest.raises(PredictionsError, match=re.escape("image 'b': edema=-0.5 is not")):
        write_predictions(q, ["a", "b"], bad)
    bad[1, 2], bad[0, 5] = 0.0, 1.01
    with pytest.raises(PredictionsError, match=re.escape("image 'a': exudate=1.01 is not")):
        write_predictions(q, ["a", "b"], bad)
    assert not q.exists()


def test_sidecar_refusals(tmp_path) -> None:
    p = tmp_path / "s.csv"
    (tmp_path / "s.json").write_text("{nope", encoding="utf-8")
    with pytest.raises(PredictionsError, match=re.escape(f"{tmp_path / 's.json'}: unreadable sidecar JSON: ")):
        read_predictions_meta(p)
    (tmp_path / "s.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(PredictionsError, match=re.escape(f"{tmp_path / 's.json'}: sidecar must be a JSON object, got list")):
        read_predictions_meta(p)
    json.loads("{}")
