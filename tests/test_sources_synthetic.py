"""embed/synthetic.py writes the real release format, deterministically, with labels that show."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from woundscore.cache.schema import LABEL_NAMES, encode_annotations
from woundscore.embed.sources import open_source
from woundscore.embed.synthetic import (
    URGENCY_TEXT,
    make_labels_csv_folder,
    make_release,
    make_release_images,
    split_sizes,
)

FILES = [f"{s}_{k}.json" for s in ("train", "val", "test") for k in ("question", "report")]
FIELDS = {"Wound Location", "Healing Status", "Closure Method", "Exudate Type", "Erythema", "Edema",
          "Infection Risk Assessment", "Urgency Level"}
QUESTION_KEYS = {"id", "image_name", "field", "task_type", "image", "question", "options", "answer"}
REPORT_KEYS = QUESTION_KEYS - {"options"}


def test_release_files_have_the_real_format(tmp_path):
    root = make_release(tmp_path, 12, seed=3, image_size=(40, 32))
    assert sorted(p.name for p in root.iterdir()) == sorted(FILES + ["WOUNDSCORE_NOTICE.txt"])
    per_image: dict[str, list[dict]] = {}
    for name in FILES:
        records = json.loads((root / name).read_text())
        assert isinstance(records, list) and records
        for r in records:
            if name.endswith("_question.json"):
                assert set(r) == QUESTION_KEYS and r["task_type"] == "multi_choice"
                assert r["field"] in FIELDS and r["answer"] in r["options"]
            else:
                assert set(r) == REPORT_KEYS and r["task_type"] == "report_generation"
                assert r["field"] == "Medical Report" and len(r["answer"]) > 20
            assert r["id"] == f"{r['image_name']}_{r['field'].lower().replace(' ', '_')}"
            per_image.setdefault(r["image_name"], []).append(r)
    assert len(per_image) == 12
    for name, records in per_image.items():
        assert len({r["image"] for r in records}) == 1  # base64 repeated in every record
        data = base64.b64decode(records[0]["image"], validate=True)  # no data-URI prefix
        assert data[:2] == b"\xff\xd8"
        assert Image.open(io.BytesIO(data)).size == (40, 32)
        fields = {r["field"] for r in records}
        # Healing, infection risk and urgency are never unsure in SurgWound; the rest may be omitted.
        assert {"Healing Status", "Infection Risk Assessment", "Urgency Level", "Medical Report"} <= fields
        urgency = [r["answer"] for r in records if r["field"] == "Urgency Level"]
        assert urgency[0] in URGENCY_TEXT.values()
    questions = sum(len(json.loads((root / f).read_text())) for f in FILES if "question" in f)
    assert questions < 12 * 8, "some unsure fields are omitted"


def test_generator_is_deterministic_in_seed(tmp_path):
    a = make_release(tmp_path / "a", 8, seed=11, image_size=(24, 24), field_names="mixed", shuffle_records=True)
    b = make_release(tmp_path / "b", 8, seed=11, image_size=(24, 24), field_names="mixed", shuffle_records=True)
    c = make_release(tmp_path / "c", 8, seed=12, image_size=(24, 24), field_names="mixed", shuffle_records=True)
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in FILES)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in FILES)


def test_class_balance_is_surgwound_like_with_positives_in_every_split():
    images = make_release_images(100, seed=0, image_size=(8, 8))
    assert [sum(i.split == s for i in images) for s in ("train", "val", "test")] == [70, 10, 20]
    Y = np.stack([encode_annotations(i.answers)[0] for i in images])
    split = np.array([i.split for i in images])
    for s in ("train", "val", "test"):
        for j, name in enumerate(LABEL_NAMES):
            y = Y[split == s, j]
            assert (y == 1).sum() >= 2 and (y == 0).sum() >= 2, (s, name)
    rate = {n: (Y[:, j] == 1).sum() / (Y[:, j] != -1).sum() for j, n in enumerate(LABEL_NAMES)}
    assert 0.25 < rate["healing_status"] < 0.6
    for rare in ("edema", "infection_risk", "urgency", "exudate"):
        assert rate[rare] < 0.35, rate  # positives are the minority, as in SurgWound
    assert (Y == -1).any(axis=0).tolist() == [False, True, True, False, False, True]


def test_labels_leave_visible_traces():
    images = make_release_images(60, seed=0, image_size=(96, 96))
    X = np.stack([np.asarray(Image.open(io.BytesIO(i.image)).convert("RGB"), dtype=np.float32) for i in images])
    R, G, B = X[..., 0], X[..., 1], X[..., 2]
    Y = np.stack([encode_annotations(i.answers)[0] for i in images])
    red_area = ((R - G) > 90).mean(axis=(1, 2))  # the erythema halo
    m = Y[:, 1] != -1
    assert roc_auc_score(Y[m, 1], red_area[m]) > 0.9
    yellow_area = (((G - B) > 70) & (G > 150)).mean(axis=(1, 2))  # serous / purulent patches
    exudate = np.array([i.answers.get("exudate", "?") for i in images])
    m = exudate != "?"
    m &= exudate != "Sanguineous"  # that one is dark red, not yellow
    assert roc_auc_score(exudate[m] != "Non-existent", yellow_area[m]) > 0.9
    dark_line = (X.max(axis=-1) < 110).mean(axis=(1, 2))  # thick dark incision when not healed
    assert roc_auc_score(Y[:, 0], dark_line) > 0.65


def test_labels_csv_folder_reads_back(tmp_path):
    root = make_labels_csv_folder(tmp_path, 10, seed=2)
    text = (root / "labels.csv").read_text()
    assert text.splitlines()[0] == (
        "image,split,healing_status,erythema,edema,infection_risk,urgency_level,exudate_type,location,closure_method"
    )
    assert "Uncertain" in text
    samples = open_source(root).samples()
    assert len(samples) == 10 and len(list((root / "images").iterdir())) == 10
    images = {i.name: i for i in make_release_images(10, seed=2, image_size=(96, 96))}
    for s in samples:
        np.testing.assert_array_equal(s.labels, encode_annotations(images[s.image_id].answers)[0])
        assert s.read_bytes() == images[s.image_id].image


def test_too_few_images_is_refused():
    with pytest.raises(ValueError, match="n_images must be at least 6"):
        split_sizes(5)


def test_make_release_default_size_reads(tmp_path: Path):
    samples = open_source(make_release(tmp_path, 20, seed=1)).samples()
    assert {s.split for s in samples} == {"train", "val", "test"}
    assert Image.open(io.BytesIO(samples[0].read_bytes())).size == (128, 128)


def test_generated_release_marks_itself_and_the_cache_repeats_it(tmp_path, tiny_siglip_dir) -> None:
    """Whatever is made from generated images says so: the source's notice reaches the cache."""
    from woundscore.cache import read_cache
    from woundscore.embed.run import run_embedding
    from woundscore.embed.sources import open_source
    from woundscore.embed.synthetic import GENERATED_NOTICE, make_release

    rel = make_release(tmp_path / "rel", 12, seed=1, image_size=(32, 32))
    assert open_source(rel).notice == GENERATED_NOTICE
    run_embedding(rel, tmp_path / "c.h5", model=tiny_siglip_dir, device="cpu", workers=0, quiet=True)
    notice = read_cache(tmp_path / "c.h5").provenance["notice"]
    assert GENERATED_NOTICE in notice and "random weights" in notice
    (rel / "WOUNDSCORE_NOTICE.txt").unlink()
    assert open_source(rel).notice is None
