"""compare.report (the runner), compare.document and compare.render: the comparison report on the same test images.

One module-scoped run trains the probe and the MLP on a small planted-signal EmbeddingSet and
reads a fine-tune's predictions file; the other tests score predictions files only (no Keras), so
the whole module stays a few seconds beyond the one MLP fit.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES
from woundscore.cache.types import EmbeddingSet
from woundscore.compare.predictions import read_predictions, write_predictions
from woundscore.compare.report import ReportError, run_comparison

HOSTILE_ID = "<script>alert(1)</script>.jpg"
HOSTILE_METHOD = "<img src=x onerror=alert(2)>"
HOSTILE_SITE = "<b>Abdomen</b>"
HOSTILE_NOTICE = "random weights, generated images <script>alert(3)</script>"

# ------------------------------------------------------------------------------------ data


def make_set(
    n_train: int = 160, n_val: int = 50, n_test: int = 70, d: int = 16, seed: int = 0,
    *, notice: str | None = None, hostile: bool = False,
) -> tuple[EmbeddingSet, np.ndarray]:
    """A planted-signal set: label j is positive when latent z_j is high; X carries z linearly.

    Returns the set and the (n, 6) latent z (a 'good' external method can score from it).
    """
    rng = np.random.default_rng(seed)
    n = n_train + n_val + n_test
    z = rng.normal(size=(n, 6))
    Y = (z + 0.5 * rng.normal(size=(n, 6)) > 0.6).astype(np.int8)
    Y[rng.random((n, 6)) < 0.05] = -1
    mix = rng.normal(size=(6, d))
    X = (z @ mix + 0.5 * rng.normal(size=(n, d))).astype(np.float32)
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * n_test)
    ids = [f"img{i:04d}.jpg" for i in range(n)]
    urgency = np.where(Y[:, 4] == 1, np.where(rng.random(n) < 0.3, "Red", "Yellow"), "Green")
    location = rng.choice(["Abdomen", "Ankle", "", "Facial region"], n).astype(object)
    if hostile:
        first_test = n_train + n_val
        ids[first_test] = HOSTILE_ID
        urgency[first_test] = "Red"
        location[first_test] = HOSTILE_SITE
    prov = {"encoder_id": "synthetic/test", "encoder_revision": "r1", "created": "2026-01-01T00:00:00Z"}
    if notice:
        prov["notice"] = notice
    es = EmbeddingSet(
        ids=np.array(ids, dtype=object).astype(str),
        X=X,
        Y=Y,
        split=split,
        sha256=np.array([f"{i:064x}" for i in range(n)]),
        extras={"urgency_level": urgency.astype(str), "location": location.astype(str)},
        provenance=prov,
    )
    return es, z


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def write_external(path: Path, es: EmbeddingSet, z: np.ndarray, *, split=("test",), noise=0.7, seed=1, meta=None):
    rng = np.random.default_rng(seed)
    m = np.isin(es.split, split)
    P = sigmoid(z[m] + noise * rng.normal(size=(int(m.sum()), 6)))
    return write_predictions(path, es.ids[m], P, meta=meta)


# ------------------------------------------------------------------------------------ md parsing

INTERVAL = re.compile(r"^[+-]?\d\.\d{3} \([+-]?\d\.\d{3} to [+-]?\d\.\d{3}\)$")
NOT_ESTIMABLE = re.compile(r"^not estimable( \(.+\))?$")
COST_HEADER = ["method", "device", "train time", "peak memory", "trainable parameters", "inference per image"]
EXTERNAL_HEADER = ["label", "published AUC (external, point only)"]
#: interval cells each method has at least: AUC, AP, Brier and ECE of each of the six labels
PER_METHOD_CI_CELLS = 6 * 4


def md_tables(md: str) -> list[tuple[list[str], list[list[str]]]]:
    """Markdown tables as (header, rows); cells unescaped (a backslash-escaped | stays in the cell)."""
    tables, block = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            block.append(line)
            continue
        if block:
            cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in block]
            assert set(cells[1]) <= {"---"}, block[:2]
            unesc = [[re.sub(r"\\(.)", r"\1", c) for c in r] for r in cells]
            tables.append((unesc[0], [r for r in unesc[2:]]))
            block = []
    return tables


def assert_every_number_has_n_and_ci(md: str) -> int:
    """Every metric cell carries an interval (or says not estimable) and every metric row an n.

    Returns how many interval cells it checked: callers assert a floor, so that a report whose
    metric tables vanished (0 cells checked) cannot pass."""
    checked = 0
    for header, rows in md_tables(md):
        if "n" not in header:
            # only two tables may hold numbers without n: measured cost and the external reference
            assert header in (COST_HEADER, EXTERNAL_HEADER), header
            continue
        n_col = header.index("n")
        for row in rows:
            assert len(row) == len(header), (header, row)
            assert re.fullmatch(r"\d+", row[n_col]), (header, row)
            for h, cell in zip(header, row):
                if "95% CI" in h:
                    assert INTERVAL.match(cell) or NOT_ESTIMABLE.match(cell), (h, cell)
                    checked += 1
                elif h != "threshold":
                    # any other column holds names or integer counts, never a bare estimate
                    assert not re.search(r"\d\.\d", cell) or h in ("label", "method", "comparison", "operating point"), (h, cell)
    return checked


# ------------------------------------------------------------------------------------ the trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    es, z = make_set()
    ft = write_external(
        tmp / "ft" / "predictions.csv", es, z,
        meta={"method": "SigLIP fine-tune, last 4 blocks", "train_seconds": 1350.0, "device": "cuda (Tesla T4)",
              "trainable_params": 28_000_000, "peak_memory_mb": 9000.0, "memory_kind": "GPU max allocated",
              "inference_ms_per_image": 12.5},
    )
    res = run_comparison(
        es, tmp / "out", finetune_dir=ft.parent, n_boot=300, seed=0, quiet=True,
        mlp_params={"max_epochs": 60, "patience": 15},
    )
    return res, es


def test_trained_run_writes_every_file_and_scores_all_methods(trained):
    res, es = trained
    for name in ("report.md", "report.html", "metrics.json", "roc.png", "reliability.png", "forest.png"):
        path = res.out_dir / name
        assert path.is_file() and path.stat().st_size > 0, name
    for png in ("roc.png", "reliability.png", "forest.png"):
        assert (res.out_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    m = json.loads((res.out_dir / "metrics.json").read_text())
    assert list(m["methods"]) == ["mlp", "finetune", "probe"]
    assert m["skipped"]["zero-shot"].startswith("needs both --source")
    # the planted signal is learned by both trained methods
    assert m["metrics"]["macro_auc"]["mlp"]["value"] > 0.75
    assert m["metrics"]["macro_auc"]["probe"]["value"] > 0.75
    assert m["metrics"]["macro_auc"]["mlp"]["n"] == int((es.split == "test").sum())
    pairs = [(c["a"], c["b"]) for c in m["metrics"]["comparisons"]]
    assert pairs == [("mlp", "finetune"), ("mlp", "probe")]


def test_cost_is_measured_for_trained_methods_and_read_from_the_sidecar(trained):
    res, es = trained
    m = res.metrics["methods"]
    d = es.X.shape[1]
    assert m["mlp"]["cost"]["trainable_params"] == d * 512 + 512 + 512 * 256 + 256 + 256 * 6 + 6
    assert m["probe"]["cost"]["trainable_params"] == 6 * d + 6
    assert m["mlp"]["cost"]["train_seconds"] > 0 and m["mlp"]["cost"]["inference_ms_per_image"] > 0
    assert m["finetune"]["cost"]["device"] == "cuda (Tesla T4)"
    md = (res.out_dir / "report.md").read_text()
    cost = next(rows for header, rows in md_tables(md) if header == COST_HEADER)
    ft_row = next(r for r in cost if r[0] == "finetune")
    assert ft_row[1:] == ["cuda (Tesla T4)", "1350.0 s", "not comparable: 9000.0 MiB (GPU max allocated)", "28,000,000", "12.500 ms"]


def test_thresholds_come_from_validation_with_the_rule_named(trained):
    res, _ = trained
    th = res.metrics["methods"]["mlp"]["thresholds"]
    assert set(th["urgency"]) == {"sensitivity>=0.90"} and set(th["edema"]) == {"youden"}
    ops = res.metrics["metrics"]["per_label"]["urgency"]["mlp"]["operating_points"]
    assert set(ops) == {"0.5", "sensitivity>=0.90"}
    # the fine-tune file holds test rows only: 0.5 and a stated reason
    assert res.metrics["methods"]["finetune"]["thresholds"] == {}
    assert "no predictions for the val split" in res.metrics["methods"]["finetune"]["threshold_rule"]


def test_every_number_in_report_md_carries_n_and_a_ci(trained):
    res, _ = trained
    md = (res.out_dir / "report.md").read_text()
    assert assert_every_number_has_n_and_ci(md) > 100
    assert "nan" not in md.lower().replace("nanmean", "")


def test_the_answer_comes_first_in_plain_words(trained):
    res, es = trained
    md = (res.out_dir / "report.md").read_text()
    sections = re.findall(r"(?m)^## (.+)$", md)
    assert sections[0] == "The answer"
    answer = md.split("## The answer", 1)[1].split("\n## ", 1)[0]
    n_test = int((es.split == "test").sum())
    assert f"On the same {n_test} test images, the cheap MLP" in answer
    assert "for finetune, the fine-tune" in answer and "The paired difference MLP - finetune is" in answer
    # each estimate in the answer is followed by an interval and an n
    estimates = re.findall(r"[+-]?\d\.\d{3} \(95% CI [+-]?\d\.\d{3} to [+-]?\d\.\d{3}, n=\d+", answer)
    assert len(estimates) == 4, answer  # the best method's macro AUC, then MLP, alternative, difference


def test_report_has_context_pooling_note_limitations_and_caveats(trained):
    res, es = trained
    md = (res.out_dir / "report.md").read_text()
    assert "external, not recomputed" in md and "0.745" in md and "22.5 min on a T4" in md
    ext = next(rows for header, rows in md_tables(md) if header == EXTERNAL_HEADER)
    assert [r[1] for r in ext] == ["0.718", "0.686", "0.713", "0.810", "0.822", "0.721"]
    assert "mean-pools the patch tokens" in md and "--pooling attention" in md
    test = es.subset("test")
    red = int((test.extras["urgency_level"] == "Red").sum())
    assert f"Red (emergency) urgency cases in test: {red} (image ids:" in md
    lim = next(rows for header, rows in md_tables(md) if header[:3] == ["label", "n", "positives"] and len(header) == 5)
    assert [int(r[2]) for r in lim] == [int((test.Y[:, j] == 1).sum()) for j in range(6)]
    assert "Body sites in test: " in md and "not recorded" in md
    for caveat in ("mostly not C-section scars", "social-media photos", "Research use only", "Not a medical device"):
        assert caveat in md


# ------------------------------------------------------------------------------------ predictions only


def test_html_escapes_every_string_from_data(tmp_path):
    """Catches: any data string reaching report.html unescaped, and the written page losing its
    Content-Security-Policy meta (deleting or loosening it in templates/report.html.j2)."""
    es, z = make_set(seed=2, notice=HOSTILE_NOTICE, hostile=True)
    p = write_external(tmp_path / "x.csv", es, z)
    ids, _ = read_predictions(p)
    assert HOSTILE_ID in ids
    res = run_comparison(es, tmp_path / "out", predictions={HOSTILE_METHOD: p, "plain": write_external(
        tmp_path / "plain.csv", es, z, noise=2.0)}, methods=(), zero_shot=False, n_boot=200, quiet=True)
    page = (tmp_path / "out" / "report.html").read_text()
    assert page.splitlines()[2] == CSP  # the written page keeps its policy (removing it fails here)
    assert "<script" not in page.lower()
    assert "<img src=x" not in page and "<b>Abdomen" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.jpg" in page  # the Red case's id, escaped
    assert "&lt;img src=x onerror=alert(2)&gt;" in page  # the method name
    assert "&lt;b&gt;Abdomen&lt;/b&gt;" in page  # the body site
    assert 'role="alert">NOTICE: random weights, generated images &lt;script&gt;' in page  # banner
    # self-contained: the only image sources are inline data, nothing is fetched
    assert re.findall(r'(?:src|href)="(?!data:image/png;base64,)', page) == []
    assert page.count('src="data:image/png;base64,') == 3
    md = (tmp_path / "out" / "report.md").read_text()
    assert "<script" not in md.replace("\\<script", "")
    assert md.splitlines()[2].startswith("> **NOTICE: random weights, generated images")
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["notice"] == [HOSTILE_NOTICE]
    assert HOSTILE_ID in m["limitations"]["red_urgency"]["ids"]
    assert res.metrics["answer"]["alternative"] is None  # no MLP trained: says so
    assert "The MLP was not run" in md


def test_one_class_label_is_not_estimable_in_md_and_null_with_reason_in_json(tmp_path):
    es, z = make_set(seed=3)
    Y = es.Y.copy()
    test = es.split == "test"
    Y[test, 4] = np.where(Y[test, 4] == -1, -1, 0)  # urgency: no positive in test
    es = EmbeddingSet(es.ids, es.X, Y, es.split, es.sha256, es.extras, es.schema, es.provenance)
    p = write_external(tmp_path / "a.csv", es, z)
    run_comparison(es, tmp_path / "out", predictions={"a": p, "b": write_external(tmp_path / "b.csv", es, z, seed=5)},
                   methods=(), zero_shot=False, n_boot=200, quiet=True)
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    auc = m["metrics"]["per_label"]["urgency"]["a"]["auc"]
    assert auc["value"] is None and auc["reason"].startswith("not estimable: test split has only negatives")
    assert "urgency" not in m["metrics"]["macro_auc"]["a"]["labels"]
    assert m["metrics"]["comparisons"][0]["per_label"]["urgency"]["value"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    row = next(r for h, rows in md_tables(md) if h[:2] == ["label", "method"] and "ROC AUC (95% CI)" in h
               for r in rows if r[:2] == ["urgency", "a"])
    assert row[4].startswith("not estimable (test split has only negatives")
    assert "Not estimable on this test split (one class only): urgency." in md
    assert assert_every_number_has_n_and_ci(md) >= PER_METHOD_CI_CELLS * 2  # methods a, b
    text = (tmp_path / "out" / "metrics.json").read_text()
    assert "NaN" not in text and "Infinity" not in text


def test_predictions_covering_val_get_val_chosen_thresholds(tmp_path):
    es, z = make_set(seed=4)
    p = write_external(tmp_path / "ft.csv", es, z, split=("val", "test"))
    res = run_comparison(es, tmp_path / "out", predictions={"ft": p}, methods=(), zero_shot=False,
                         n_boot=200, quiet=True)
    meth = res.metrics["methods"]["ft"]
    assert meth["threshold_rule"].startswith(f"chosen on {int((es.split == 'val').sum())} val rows of the file")
    assert set(meth["thresholds"]["infection_risk"]) == {"sensitivity>=0.90"}
    assert "no sidecar ft.json: cost not reported" in meth["notes"]


def test_missing_test_ids_fail_before_anything_is_written(tmp_path):
    es, z = make_set(seed=5)
    test_ids = es.ids[es.split == "test"]
    keep = ~np.isin(es.ids, test_ids[[3, 7]])
    sub = es.select(keep)
    p = write_external(tmp_path / "short.csv", sub, z[keep])
    with pytest.raises(ReportError) as e:
        run_comparison(es, tmp_path / "out", predictions={"ft": p}, zero_shot=False, quiet=True)
    assert str(e.value) == (
        f"{p}: predictions for method 'ft' lack 2 of the cache's {len(test_ids)} test image id(s): "
        f"{str(test_ids[3])!r}, {str(test_ids[7])!r}"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"predictions": {"mlp": "x.csv"}},
         "method name 'mlp' is taken by a built-in method; choose another NAME in NAME=FILE"),
        ({"methods": ("svm",)}, "unknown method(s) to train: 'svm'; choose from probe, mlp"),
        ({"n_boot": 10}, "--bootstrap 10 is too few for a 95% interval; use at least 100"),
        ({"methods": (), "zero_shot": False}, "no method to compare: train one (probe, mlp) or pass predictions"),
    ],
)
def test_bad_requests_are_named_errors(tmp_path, kwargs, message):
    es, _ = make_set(seed=6)
    with pytest.raises(ReportError) as e:
        run_comparison(es, tmp_path / "out", quiet=True, **kwargs)
    assert str(e.value) == message


def test_no_test_rows_and_no_finetune_predictions_are_clear_errors(tmp_path):
    es, _ = make_set(seed=7)
    no_test = es.select(es.split != "test")
    with pytest.raises(ReportError, match=r"^<in-memory EmbeddingSet>: no rows in the test split; nothing to compare on$"):
        run_comparison(no_test, tmp_path / "out", quiet=True)
    (tmp_path / "ft").mkdir()
    with pytest.raises(ReportError) as e:
        run_comparison(es, tmp_path / "out", finetune_dir=tmp_path / "ft", quiet=True)
    assert str(e.value) == f"{tmp_path / 'ft'}: no predictions.csv in the fine-tune folder"


def test_label_rows_follow_the_schema_order(trained):
    res, _ = trained
    md = (res.out_dir / "report.md").read_text()
    per_label = next(rows for h, rows in md_tables(md) if "ROC AUC (95% CI)" in h)
    assert [r[0] for r in per_label] == [lab for lab in LABEL_NAMES for _ in range(3)]
    assert [r[1] for r in per_label[:3]] == ["mlp", "finetune", "probe"]


# ------------------------------------------------------------------------------------ zero-shot


def test_zero_shot_scores_the_caches_own_test_images(tmp_path, mini_release, tiny_siglip_dir):
    """The real tiny-SigLIP zero-shot end to end. Catches: compare/methods.py zero_shot_method
    taking the scored rows in their order (reversed, or the last n_test) instead of by image id."""
    from woundscore.embed.run import run_embedding

    cache = tmp_path / "emb.h5"
    run_embedding(mini_release, cache, model=tiny_siglip_dir, quiet=True)
    res = run_comparison(cache, tmp_path / "out", source=mini_release, model=tiny_siglip_dir,
                         methods=(), n_boot=200, quiet=True)
    m = res.metrics
    assert list(m["methods"]) == ["zero-shot"] and m["skipped"] == {}
    zs = m["methods"]["zero-shot"]
    assert zs["cost"]["trainable_params"] == 0 and zs["cost"]["train_seconds"] == 0.0
    assert zs["origin"] == f"{tiny_siglip_dir} on images of {mini_release}"
    # every per-label number is the reference on the id-matched rows: an independent zero-shot
    # call (same images, same batches) scored by scikit-learn (catches rows taken in their order)
    from sklearn.metrics import roc_auc_score

    from woundscore.cache import read_cache
    from woundscore.compare.zeroshot import zero_shot_source

    es = read_cache(cache)
    val, test = es.subset("val"), es.subset("test")
    ref = zero_shot_source(mini_release, tiny_siglip_dir, ids=[str(i) for i in (*val.ids, *test.ids)])
    by_id = {str(i): p for i, p in zip(ref.ids, ref.P)}
    P = np.stack([by_id[str(i)] for i in test.ids])
    estimable = 0
    for j, lab in enumerate(LABEL_NAMES):
        got, obs = m["metrics"]["per_label"][lab]["zero-shot"], test.Y[:, j] != -1
        y, p = test.Y[obs, j], P[obs, j]
        assert got["n"] == int(obs.sum()) and got["positives"] == int((y == 1).sum())
        if len(set(y.tolist())) == 2:
            assert got["auc"]["value"] == pytest.approx(roc_auc_score(y, p), abs=1e-12), lab
            estimable += 1
        assert got["brier"]["value"] == pytest.approx(float(np.mean((p - y) ** 2)), abs=1e-12), lab
    assert estimable >= 3
    assert m["metrics"]["comparisons"] == []  # one method: nothing to compare, and the report says so
    md = (tmp_path / "out" / "report.md").read_text()
    assert assert_every_number_has_n_and_ci(md) >= PER_METHOD_CI_CELLS  # zero-shot alone
    assert "Only one method was scored: nothing to compare." in md


def set_from_source(source: Path, d: int = 8) -> EmbeddingSet:
    """An EmbeddingSet whose ids, splits, labels and sha256 are those of ``source`` (random X):
    zero-shot finds every cached image in the source, with the cache's bytes."""
    import hashlib

    from woundscore.embed.sources import open_source

    samples = open_source(source).samples()
    n = len(samples)
    return EmbeddingSet(
        ids=np.array([s.image_id for s in samples]).astype(str),
        X=np.random.default_rng(0).normal(size=(n, d)).astype(np.float32),
        Y=np.stack([s.labels for s in samples]).astype(np.int8),
        split=np.array([s.split for s in samples]),
        sha256=np.array([hashlib.sha256(s.read_bytes()).hexdigest() for s in samples]),  # run --source checks them
        extras={"urgency_level": np.array(["Green"] * n), "location": np.array([""] * n)},
        provenance={"encoder_id": "synthetic/test", "encoder_revision": "r1", "created": "2026-01-01T00:00:00Z"},
    )


def test_zero_shot_that_cannot_load_is_skipped_with_the_reason(tmp_path, mini_release):
    """The reason is the named load error with its message, for a cache whose images ARE in the
    source (so the model load is what fails). Catches: a reason that is not the exception's
    name + message, and the old test's blind spot (it passed on an unrelated id mismatch)."""
    from woundscore.cache.errors import WoundscoreError
    from woundscore.embed.runtime import EncoderLoadError

    es = set_from_source(mini_release)
    test = es.subset("test")
    p = write_predictions(tmp_path / "a.csv", test.ids, np.random.default_rng(1).random((len(test), 6)))
    missing = tmp_path / "no-such-model"
    with pytest.raises(WoundscoreError) as direct:  # what the zero-shot code raises on its own
        from woundscore.compare.zeroshot import zero_shot_source

        zero_shot_source(mini_release, missing, ids=list(map(str, es.ids[es.split != "train"])))
    res = run_comparison(es, tmp_path / "out", source=mini_release, model=missing,
                         predictions={"a": p}, methods=(), n_boot=200, quiet=True)
    reason = res.metrics["skipped"]["zero-shot"]
    assert reason == f"{type(direct.value).__name__}: {direct.value}"
    assert type(direct.value) is EncoderLoadError and str(missing) in reason
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"- zero-shot: skipped, {reason}" in md.replace("\\", "")


def test_tiny_test_split_reports_what_it_can_and_says_why_not_the_rest(tmp_path):
    es, z = make_set(n_train=20, n_val=5, n_test=6, seed=3)
    Y = es.Y.copy()
    te = es.split == "test"
    Y[te, 0] = -1  # healing_status: nothing observed in test
    Y[te, 1] = [1, 0, 0, 0, 0, 0]  # erythema: one positive
    Y[te, 2] = 0  # edema: negatives only
    es = EmbeddingSet(es.ids, es.X, Y, es.split, es.sha256, es.extras, es.schema, es.provenance)
    res = run_comparison(es, tmp_path / "out", predictions={"a": write_external(tmp_path / "a.csv", es, z),
                                                            "b": write_external(tmp_path / "b.csv", es, z, seed=4)},
                         methods=(), zero_shot=False, n_boot=200, quiet=True)
    per = res.metrics["metrics"]["per_label"]
    assert per["healing_status"]["a"]["auc"]["reason"] == "not estimable: no observed labels in the test split"
    assert per["healing_status"]["a"]["brier"]["value"] is None and per["healing_status"]["a"]["n"] == 0
    assert per["erythema"]["a"]["auc"]["value"] is not None and per["erythema"]["a"]["positives"] == 1
    assert per["edema"]["a"]["auc"]["value"] is None
    assert "healing_status" not in res.metrics["metrics"]["macro_auc"]["a"]["labels"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert assert_every_number_has_n_and_ci(md) >= PER_METHOD_CI_CELLS * 2  # methods a, b
    assert "Rough intervals: the macro interval of a, b rests on fewer than half of the 200 resamples" in md


# ------------------------------------------------------------------------------------ predictions file


def test_predictions_round_trip_exactly_with_sidecar(tmp_path):
    from woundscore.compare.predictions import read_predictions_meta

    rng = np.random.default_rng(0)
    P = rng.random((5, 6))
    P[0, 0], P[1, 1] = 0.0, 1.0
    ids = ["a.jpg", "b c.jpg", 'q"uote.jpg', "comma,.jpg", HOSTILE_ID]
    path = write_predictions(tmp_path / "predictions.csv", ids, P, meta={"device": "cpu", "train_seconds": 1.5})
    got_ids, got = read_predictions(path)
    assert got_ids.tolist() == ids and np.array_equal(got, P)
    assert read_predictions_meta(path) == {"device": "cpu", "train_seconds": 1.5}
    assert read_predictions_meta(tmp_path / "other.csv") is None
    # columns in another order are fine
    lines = path.read_text().splitlines()
    cols = lines[0].split(",")
    order = [0] + list(range(6, 0, -1))
    import csv
    import io
    rows = list(csv.reader(io.StringIO(path.read_text())))
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows([[r[k] for k in order] for r in rows])
    (tmp_path / "rev.csv").write_text(buf.getvalue())
    assert [cols[k] for k in order] == buf.getvalue().splitlines()[0].split(",")
    assert np.array_equal(read_predictions(tmp_path / "rev.csv")[1], P)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "{p}: empty file; expected the header image_id,healing_status,erythema,edema,infection_risk,urgency,exudate"),
        ("image_id,healing_status,erythema,edema,infection_risk,urgency,exudate,extra\n",
         "{p}: line 1: bad header (unknown column(s) extra); expected image_id,healing_status,erythema,edema,"
         "infection_risk,urgency,exudate"),
        ("image_id,healing_status,erythema,edema,infection_risk,urgency,exudate\n",
         "{p}: no prediction rows after the header"),
        ("image_id,healing_status,erythema,edema,infection_risk,urgency,exudate\na.jpg,0.1,0.2,0.3,0.4,0.5,1.5\n",
         "{p}: line 2: image 'a.jpg': exudate='1.5' is not a probability in [0, 1]"),
        ("image_id,healing_status,erythema,edema,infection_risk,urgency,exudate\na.jpg,nan,0.2,0.3,0.4,0.5,0.5\n",
         "{p}: line 2: image 'a.jpg': healing_status='nan' is not a probability in [0, 1]"),
        ("image_id,healing_status,erythema,edema,infection_risk,urgency,exudate\na.jpg,0,0,0,0,0,0\n"
         "a.jpg,0,0,0,0,0,0\n", "{p}: line 3: image_id 'a.jpg' already on line 2"),
        ("image_id,healing_status,erythema,edema,infection_risk,urgency,exudate\na.jpg,0,0,0\n",
         "{p}: line 2: 4 fields, header has 7"),
    ],
)
def test_bad_predictions_files_name_file_line_and_field(tmp_path, text, message):
    from woundscore.compare.predictions import PredictionsError

    p = tmp_path / "p.csv"
    p.write_text(text)
    with pytest.raises(PredictionsError) as e:
        read_predictions(p)
    assert str(e.value) == message.format(p=p)


def test_write_predictions_refuses_bad_arrays(tmp_path):
    from woundscore.compare.predictions import PredictionsError

    with pytest.raises(PredictionsError, match=r"probabilities must have shape \(2, 6\), got \(2, 5\)"):
        write_predictions(tmp_path / "p.csv", ["a", "b"], np.zeros((2, 5)))
    with pytest.raises(PredictionsError, match=r"image 'b': urgency=-0.1 is not a probability"):
        P = np.zeros((2, 6))
        P[1, 4] = -0.1
        write_predictions(tmp_path / "p.csv", ["a", "b"], P)
    with pytest.raises(PredictionsError, match=r"duplicate image ids \['a'\]"):
        write_predictions(tmp_path / "p.csv", ["a", "a"], np.zeros((2, 6)))
    assert not (tmp_path / "p.csv").exists()


def test_every_figure_carries_the_notice(tmp_path, monkeypatch):
    """A PNG copied out of the report keeps its warning: each figure draws the cache's notice."""
    from matplotlib.figure import Figure

    drawn: list[str] = []
    real_text = Figure.text

    def spy(self, x, y, s, *args, **kwargs):
        drawn.append(str(s))
        return real_text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Figure, "text", spy)
    es, z = make_set(seed=2, notice="random weights, generated images")
    p = write_external(tmp_path / "x.csv", es, z)
    run_comparison(es, tmp_path / "out", predictions={"ext": p}, methods=(), zero_shot=False, n_boot=100, quiet=True)
    assert drawn.count("NOTICE: random weights, generated images") == 3  # roc, reliability, forest
    drawn.clear()
    es, z = make_set(seed=2)
    run_comparison(es, tmp_path / "out2", predictions={"ext": write_external(tmp_path / "y.csv", es, z)},
                   methods=(), zero_shot=False, n_boot=100, quiet=True)
    assert not any(t.startswith("NOTICE") for t in drawn)


# ------------------------------------------------------------------------------------ render


CSP = ('<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:; '
       'style-src \'unsafe-inline\'">')


def test_html_page_keeps_its_content_security_policy_and_escapes_every_block_kind(tmp_path):
    """Catches: the CSP meta removed, moved below the title or loosened (e.g. no default-src 'none')."""
    from woundscore.compare.render import render_html, render_markdown

    (tmp_path / "f.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    evil = "<script>x</script>"
    blocks = [("h1", evil), ("banner", evil), ("h2", evil), ("p", evil), ("list", [evil]),
              ("table", [evil], [[evil]]), ("image", "f.png", evil)]
    page = render_html(blocks, base_dir=tmp_path)
    assert page.splitlines()[2] == CSP  # no scripts, no fetches: only inline styles and data: images
    assert "<script" not in page and page.count("&lt;script&gt;x&lt;/script&gt;") == 10  # title too; alt and caption
    assert 'src="data:image/png;base64,iVBORw0KGgp4eA=="' in page
    assert "<script" not in render_markdown(blocks).replace("\\<script", "")
    with pytest.raises(ValueError, match="unknown block 'video'"):
        render_markdown([("video", "x")])
