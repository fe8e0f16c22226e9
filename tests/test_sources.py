"""Readers of embed/sources.py: the HF release, labels.csv folders, plain images; errors name
file, record/row, field and value before anything is embedded."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES, LabelError, LabelValueError, encode_annotations
from woundscore.embed.release import iter_json_array, read_release
from woundscore.embed.samples import ImageReadError, Sample, SourceError, SourceLabelError
from woundscore.embed.sources import open_source
from woundscore.embed.synthetic import make_release_images, write_release

B1 = base64.b64encode(b"\xff\xd8image-one").decode()
B2 = base64.b64encode(b"\xff\xd8image-two").decode()
B3 = base64.b64encode(b"\xff\xd8image-three").decode()


def rec(name: str, field: str, answer, image: str = B1, **extra) -> dict:
    r = {"id": f"{name}_{field.lower().replace(' ', '_')}", "image_name": name, "field": field,
         "task_type": "multi_choice", "image": image, "question": "?", "options": [], "answer": answer}
    r.update(extra)
    return r


def write_raw_release(root: Path, files: dict[str, list | str]) -> Path:
    """Six release files; ``files`` maps a stem (``train_question``) to records or raw text.
    Unlisted question files get one valid record of their own image."""
    root.mkdir(parents=True, exist_ok=True)
    defaults = {
        "train_question": [rec("t.jpg", "Erythema", "Existent", B1)],
        "val_question": [rec("v.jpg", "Erythema", "Existent", B2)],
        "test_question": [rec("s.jpg", "Erythema", "Existent", B3)],
        "train_report": [], "val_report": [], "test_report": [],
    }
    defaults.update(files)
    for stem, content in defaults.items():
        text = content if isinstance(content, str) else json.dumps(content)
        (root / f"{stem}.json").write_text(text, encoding="utf-8")
    return root


def by_id(samples: list[Sample]) -> dict[str, Sample]:
    return {s.image_id: s for s in samples}


# ----------------------------------------------------------------------------------------------
# HF release


def test_release_reads_what_the_generator_wrote(tmp_path):
    images = make_release_images(12, seed=5, image_size=(16, 16))
    root = write_release(tmp_path / "rel", images, field_names="mixed", seed=1)
    samples = open_source(root).samples()
    assert [s.image_id for s in samples] == [i.name for i in images if i.split == "train"] + [
        i.name for i in images if i.split == "val"] + [i.name for i in images if i.split == "test"]
    got = by_id(samples)
    for img in images:
        s = got[img.name]
        labels, extras = encode_annotations(img.answers)
        assert s.split == img.split
        assert s.labels.dtype == np.int8 and s.labels.shape == (6,)
        np.testing.assert_array_equal(s.labels, labels)
        assert s.extras == extras
        assert s.read_bytes() == img.image
        assert s.report == img.report


def test_mini_release_fixture_has_old_names_omitted_fields_and_three_splits(mini_release):
    text = (mini_release / "train_question.json").read_text()
    assert '"Wound Status"' in text and '"Healing Status"' in text
    assert '"Exudate Characteristics"' in text and '"Exudate Type"' in text
    source = open_source(mini_release)
    assert source.kind == "hf_release"
    samples = source.samples()
    assert source.samples() is samples  # read once
    assert [sum(s.split == k for s in samples) for k in ("train", "val", "test")] == [21, 3, 6]
    Y = np.stack([s.labels for s in samples])
    assert (Y == -1).any(), "some fields are omitted (unsure)"
    assert set(np.unique(Y)) <= {-1, 0, 1}
    # healing status, infection risk and urgency are never omitted, as in SurgWound
    assert (Y[:, [0, 3, 4]] != -1).all()


def test_missing_field_record_is_unsure(tmp_path):
    root = write_raw_release(tmp_path, {"train_question": [
        rec("a.jpg", "Healing Status", "Healed"),
        rec("a.jpg", "Urgency Level", "Emergency Care (Red): Seek immediate medical attention"),
    ]})
    a = by_id(open_source(root).samples())["a.jpg"]
    np.testing.assert_array_equal(a.labels, [0, -1, -1, -1, 1, -1])
    assert a.extras["urgency_level"] == "Red"
    assert a.extras["urgency_text"] == "Emergency Care (Red): Seek immediate medical attention"


def test_old_field_names_are_aliases(tmp_path):
    root = write_raw_release(tmp_path, {"train_question": [
        rec("a.jpg", "Wound Status", "Not Healed"),
        rec("a.jpg", "Exudate Characteristics", "Purulent"),
        rec("b.jpg", "Healing Status", "not healed", B2),
        rec("b.jpg", "Exudate Type", " PURULENT ", B2),
    ], "val_question": [rec("v.jpg", "Erythema", "Existent", B3)],
        "test_question": [rec("s.jpg", "Erythema", "Existent", base64.b64encode(b"s").decode())]})
    got = by_id(open_source(root).samples())
    np.testing.assert_array_equal(got["a.jpg"].labels, got["b.jpg"].labels)
    np.testing.assert_array_equal(got["a.jpg"].labels, [1, -1, -1, -1, -1, 1])
    assert got["a.jpg"].extras["exudate_type"] == "Purulent"


def test_report_records_keep_text_and_add_no_labels(tmp_path):
    root = write_raw_release(tmp_path, {
        "train_report": [rec("t.jpg", "Medical Report", "A healed wound.", B1, task_type="report_generation")],
    })
    t = by_id(open_source(root).samples())["t.jpg"]
    assert t.report == "A healed wound."
    np.testing.assert_array_equal(t.labels, [-1, 1, -1, -1, -1, -1])


def test_conflicting_answers_fail_before_any_sample(tmp_path):
    root = write_raw_release(tmp_path, {"train_question": [
        rec("a.jpg", "Erythema", "Existent"),
        rec("a.jpg", "Healing Status", "Healed"),
        rec("a.jpg", "Erythema", "Non-existent"),
    ]})
    f = root / "train_question.json"
    with pytest.raises(SourceLabelError) as e:
        open_source(root).samples()
    assert str(e.value) == (
        f"{f}: record 2 (id 'a.jpg_erythema', image 'a.jpg'): conflicting answers for image 'a.jpg' "
        f"field 'erythema': 'Non-existent' here, 'Existent' in {f}: record 0 (id 'a.jpg_erythema', image 'a.jpg')"
    )
    assert isinstance(e.value, LabelError)  # a label problem, whichever class a caller catches


def test_repeated_identical_answer_is_fine(tmp_path):
    root = write_raw_release(tmp_path, {"train_question": [
        rec("a.jpg", "Erythema", "Existent"), rec("a.jpg", "Erythema", " existent"),
    ]})
    np.testing.assert_array_equal(by_id(open_source(root).samples())["a.jpg"].labels, [-1, 1, -1, -1, -1, -1])


def test_unknown_answer_names_file_record_field_value(tmp_path):
    root = write_raw_release(tmp_path, {"val_question": [
        rec("v.jpg", "Erythema", "Existent", B2), rec("v.jpg", "Edema", "Maybe", B2),
    ]})
    with pytest.raises(LabelValueError) as e:
        open_source(root).samples()
    assert str(e.value) == (
        f"{root / 'val_question.json'}: record 1 (id 'v.jpg_edema', image 'v.jpg'): "
        "field 'edema' has unknown value 'Maybe'"
    )


def test_non_string_answer_is_an_unknown_value(tmp_path):
    root = write_raw_release(tmp_path, {"train_question": [rec("t.jpg", "Erythema", 1)]})
    with pytest.raises(LabelValueError, match=r"field 'erythema' has unknown value 1$"):
        open_source(root).samples()


def test_unknown_field_and_missing_keys(tmp_path):
    root = write_raw_release(tmp_path / "a", {"train_question": [rec("t.jpg", "Erythma", "Existent")]})
    with pytest.raises(SourceError) as e:
        open_source(root).samples()
    assert str(e.value) == (
        f"{root / 'train_question.json'}: record 0 (id 't.jpg_erythma', image 't.jpg'): unknown field 'Erythma'"
    )
    bad = rec("t.jpg", "Erythema", "Existent")
    del bad["image_name"]
    root = write_raw_release(tmp_path / "b", {"train_question": [bad]})
    with pytest.raises(SourceError) as e:
        open_source(root).samples()
    assert str(e.value) == f"{root / 'train_question.json'}: record 0 (id 't.jpg_erythema'): missing key 'image_name'"


def test_image_in_two_splits_is_refused(tmp_path):
    root = write_raw_release(tmp_path, {"test_question": [rec("t.jpg", "Erythema", "Existent", B1)]})
    with pytest.raises(SourceLabelError) as e:
        open_source(root).samples()
    f = root / "train_question.json"
    assert str(e.value) == (
        f"{root / 'test_question.json'}: record 0 (id 't.jpg_erythema', image 't.jpg'): image 't.jpg' is in "
        f"split 'test' but also in split 'train' ({f}: record 0 (id 't.jpg_erythema', image 't.jpg'))"
    )


def test_empty_split_is_refused(tmp_path):
    root = write_raw_release(tmp_path, {"val_question": []})
    with pytest.raises(SourceLabelError) as e:
        open_source(root).samples()
    assert str(e.value) == f"{root}: split 'val' is empty: val_question.json has no records of new images"


def test_bad_base64_fails_that_image_only(tmp_path):
    root = write_raw_release(tmp_path, {"train_question": [
        rec("bad.jpg", "Erythema", "Existent", image="not*base64!"),
        rec("good.jpg", "Erythema", "Existent", image=B1),
        rec("empty.jpg", "Erythema", "Existent", image=""),
    ]})
    got = by_id(open_source(root).samples())
    assert got["good.jpg"].read_bytes() == b"\xff\xd8image-one"
    f = root / "train_question.json"
    with pytest.raises(ImageReadError) as e:
        got["bad.jpg"].read_bytes()
    assert str(e.value) == (
        f"{f}: record 0 (id 'bad.jpg_erythema', image 'bad.jpg'): bad base64 in 'image': "
        "Only base64 data is allowed"
    )
    assert e.value.origin == f"{f}: record 0 (id 'bad.jpg_erythema', image 'bad.jpg')"
    with pytest.raises(ImageReadError, match=r"empty image \(the 'image' value is an empty string\)$"):
        got["empty.jpg"].read_bytes()
    np.testing.assert_array_equal(got["bad.jpg"].labels, [-1, 1, -1, -1, -1, -1])  # labels still read


def test_different_image_for_one_name_fails_that_image_only(tmp_path):
    root = write_raw_release(tmp_path, {
        "train_question": [rec("a.jpg", "Erythema", "Existent", B1), rec("b.jpg", "Edema", "Existent", B3)],
        "train_report": [rec("a.jpg", "Medical Report", "r", B2)],
    })
    got = by_id(open_source(root).samples())
    with pytest.raises(ImageReadError) as e:
        got["a.jpg"].read_bytes()
    f, r = root / "train_question.json", root / "train_report.json"
    assert str(e.value) == (
        f"{f}: record 0 (id 'a.jpg_erythema', image 'a.jpg'): different image bytes in "
        f"{r}: record 0 (id 'a.jpg_medical_report', image 'a.jpg') than in the first record of this image_name"
    )
    assert got["b.jpg"].read_bytes() == b"\xff\xd8image-three"


def test_release_without_images_kept_for_stats(tmp_path):
    root = write_raw_release(tmp_path, {})
    samples = read_release(root, load_images=False)
    with pytest.raises(ImageReadError, match="no image data"):
        samples[0].read_bytes()


@pytest.mark.parametrize(
    "text, message",
    [
        ('[{"a": 1}, {"b": 2', "record 1: invalid JSON: Expecting ',' delimiter"),
        ('[{"a": 1},', "truncated JSON array after record 0"),
        ('[{"a": 1}, ]', "trailing ',' after record 0"),
        ('[{"a": 1} {"b": 2}]', "record 0: expected ',' or ']' after it, found '{'"),
        ('{"a": 1}\n{"b": 2}\n', "expected a JSON array starting with '[', found '{' (JSON Lines is not the release format)"),
        ("", "expected a JSON array starting with '[', found an empty file"),
        ('[{"a": 1}] x', "unexpected data after the JSON array's closing ']'"),
        ("[", "truncated JSON array after '['"),
    ],
)
def test_malformed_json_is_named(tmp_path, text, message):
    f = tmp_path / "x.json"
    f.write_text(text)
    with pytest.raises(SourceError) as e:
        list(iter_json_array(f, chunk_chars=4))
    assert str(e.value) == f"{f}: {message}"


def test_malformed_release_file_names_file_and_record(tmp_path):
    root = write_raw_release(tmp_path, {"test_question": '[{"image_name": "s.jpg", "field": "Ed'})
    with pytest.raises(SourceError) as e:
        open_source(root).samples()
    assert str(e.value) == f"{root / 'test_question.json'}: record 0: invalid JSON: Unterminated string starting at"


def test_streaming_parser_matches_json_load_for_any_chunk_size(tmp_path):
    records = [{"id": i, "image": "x" * (i * 37), "text": "é\u2028\"quoted\" \\ ünïcode 🩹", "n": [1.5, None, True]}
               for i in range(40)]
    for indent in (None, 4):
        f = tmp_path / f"a{indent}.json"
        f.write_text("\ufeff" + json.dumps(records, indent=indent, ensure_ascii=False), encoding="utf-8")
        for chunk in (1, 3, 64, 1 << 20):
            got = [v for _, v in iter_json_array(f, chunk_chars=chunk)]
            assert got == records
    assert list(iter_json_array(_write(tmp_path / "e.json", " [ ] "))) == []


def test_oversized_record_is_refused_not_read_whole(tmp_path):
    f = _write(tmp_path / "big.json", '[{"image": "' + "A" * 5000)
    with pytest.raises(SourceError) as e:
        list(iter_json_array(f, chunk_chars=100, max_record_chars=1000))
    assert str(e.value) == f"{f}: record 0: larger than 1000 characters or malformed JSON"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_incomplete_release_is_named(tmp_path):
    root = write_raw_release(tmp_path, {})
    (root / "val_question.json").unlink()
    with pytest.raises(SourceError) as e:
        open_source(root)
    assert str(e.value) == (
        f"{root}: incomplete SurgWound release: missing val_question.json "
        "(expected {train,val,test}_{question,report}.json)"
    )


def test_report_files_are_optional(tmp_path):
    root = write_raw_release(tmp_path, {})
    for s in ("train", "val", "test"):
        (root / f"{s}_report.json").unlink()
    assert len(open_source(root).samples()) == 3


# ----------------------------------------------------------------------------------------------
# labels.csv folders

HEADER = "image,split,healing_status,erythema,edema,infection_risk,urgency_level,exudate_type"
ROW_A = "a.jpg,train,Healed,Existent,Non-existent,Low,Home Care (Green): Manage with routine care,Non-existent"
ROW_B = "b.jpg,val,not healed,EXISTENT,Uncertain,High,Emergency Care (Red): now,Serous"


def csv_folder(tmp_path: Path, lines: list[str], images: dict[str, bytes] | None = None) -> Path:
    (tmp_path / "images").mkdir(parents=True, exist_ok=True)
    for name, data in (images if images is not None else {"a.jpg": b"A", "b.jpg": b"B"}).items():
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / name).write_bytes(data)
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    return tmp_path


def test_labels_csv_fixture_reads_rows_and_bytes(labels_csv_dir):
    import csv

    source = open_source(labels_csv_dir)
    assert source.kind == "labels_csv"
    samples = source.samples()
    with open(labels_csv_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [s.image_id for s in samples] == [r["image"] for r in rows]
    for s, r in zip(samples, rows):
        raw = {"healing_status": r["healing_status"], "erythema": r["erythema"], "edema": r["edema"],
               "infection_risk": r["infection_risk"], "urgency": r["urgency_level"],
               "exudate": r["exudate_type"], "location": r["location"], "closure_method": r["closure_method"]}
        labels, extras = encode_annotations(raw)
        np.testing.assert_array_equal(s.labels, labels)
        assert s.extras == extras and s.split == r["split"]
        assert s.read_bytes() == (labels_csv_dir / "images" / r["image"]).read_bytes()


def test_labels_csv_values_case_insensitive_and_aliases(tmp_path):
    root = csv_folder(tmp_path, [HEADER.replace("image,", "File_Name,"), ROW_A, ROW_B])
    a, b = open_source(root).samples()
    np.testing.assert_array_equal(a.labels, [0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(b.labels, [1, 1, -1, 1, 1, 1])
    assert (a.split, b.split) == ("train", "val")
    assert a.origin == f"{root / 'labels.csv'}: row 2 (image 'a.jpg')"


def test_labels_csv_missing_required_column(tmp_path):
    root = csv_folder(tmp_path, [HEADER.replace(",edema", ""), ROW_A.replace(",Non-existent,Low", ",Low")])
    with pytest.raises(SourceLabelError) as e:
        open_source(root).samples()
    assert str(e.value) == f"{root / 'labels.csv'}: missing required column 'edema'"
    root2 = csv_folder(tmp_path / "b", ["name,split", "a.jpg,train"])
    with pytest.raises(SourceLabelError) as e:
        open_source(root2).samples()
    assert str(e.value) == (
        f"{root2 / 'labels.csv'}: missing required column 'image' (also accepted: 'image_name', "
        "'file_name'); columns are 'name', 'split'"
    )


def test_labels_csv_unknown_value_names_row_field_value(tmp_path):
    root = csv_folder(tmp_path, [HEADER, ROW_A, ROW_B.replace("Serous", "Bloody")])
    with pytest.raises(LabelValueError) as e:
        open_source(root).samples()
    assert str(e.value) == f"{root / 'labels.csv'}: row 3 (image 'b.jpg'): field 'exudate' has unknown value 'Bloody'"


@pytest.mark.parametrize(
    "value, message",
    [("", "field 'split' is empty (expected train, val or test)"),
     ("training", "field 'split' has unknown value 'training' (expected train, val or test)")],
)
def test_labels_csv_bad_split(tmp_path, value, message):
    root = csv_folder(tmp_path, [HEADER, ROW_A, ROW_B.replace(",val,", f",{value},")])
    with pytest.raises(SourceLabelError) as e:
        open_source(root).samples()
    assert str(e.value) == f"{root / 'labels.csv'}: row 3 (image 'b.jpg'): {message}"


def test_labels_csv_duplicate_id(tmp_path):
    same = csv_folder(tmp_path / "same", [HEADER, ROW_A, ROW_B, ROW_A.replace("a.jpg", "./a.jpg")])
    assert [s.image_id for s in open_source(same).samples()] == ["a.jpg", "b.jpg"]
    root = csv_folder(tmp_path / "diff", [HEADER, ROW_A, ROW_B, ROW_A.replace("Existent,Non", "Non-existent,Non")])
    with pytest.raises(SourceLabelError) as e:
        open_source(root).samples()
    assert str(e.value) == (
        f"{root / 'labels.csv'}: row 4: duplicate image 'a.jpg' (also row 2) with different labels "
        "(erythema: 'Existent' vs 'Non-existent')"
    )


def test_labels_csv_paths_escaping_images_fail_per_image(tmp_path):
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(b"secret")
    root = csv_folder(tmp_path / "ds", [
        HEADER, ROW_A,
        ROW_A.replace("a.jpg", "../../secret.jpg"),
        ROW_A.replace("a.jpg", str(outside)),
        ROW_A.replace("a.jpg", "link.jpg"),
        ROW_A.replace("a.jpg", "sub/../missing.jpg"),
    ])
    os.symlink(outside, root / "images" / "link.jpg")
    samples = open_source(root).samples()
    assert [s.image_id for s in samples] == ["a.jpg", "../../secret.jpg", str(outside), "link.jpg", "missing.jpg"]
    assert samples[0].read_bytes() == b"A"
    images, csv_path = root / "images", root / "labels.csv"
    expected = [
        f"{csv_path}: row 3 (image '../../secret.jpg'): image path escapes {images}: '../../secret.jpg'",
        f"{csv_path}: row 4 (image '{outside}'): image path escapes {images}: '{outside}'",
        f"{csv_path}: row 5 (image 'link.jpg'): image path escapes {images}: {images / 'link.jpg'}",
        f"{csv_path}: row 6 (image 'sub/../missing.jpg'): image file not found: {images / 'missing.jpg'}",
    ]
    for s, message in zip(samples[1:], expected):
        with pytest.raises(ImageReadError) as e:
            s.read_bytes()
        assert str(e.value) == message


def test_labels_csv_without_images_folder(tmp_path):
    (tmp_path / "labels.csv").write_text(HEADER + "\n" + ROW_A + "\n")
    with pytest.raises(SourceError) as e:
        open_source(tmp_path)
    assert str(e.value) == f"{tmp_path}: has labels.csv but no images/ folder (expected labels.csv and images/)"


# ----------------------------------------------------------------------------------------------
# Plain images and detection


def test_plain_folder_is_unlabelled_with_relative_ids(tmp_path):
    for name in ("b.JPG", "a.png", "sub dir/c.jpeg", ".hidden.jpg", "notes.txt", ".cache/d.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(name.encode())
    source = open_source(tmp_path)
    assert source.kind == "image_folder"
    samples = source.samples()
    assert [s.image_id for s in samples] == ["a.png", "b.JPG", "sub dir/c.jpeg"]
    for s in samples:
        assert s.split == "" and s.labels.tolist() == [-1] * len(LABEL_NAMES)
        assert s.read_bytes() == s.image_id.encode()


def test_single_image_file(tmp_path):
    f = tmp_path / "wound photo.jpeg"
    f.write_bytes(b"jpeg")
    source = open_source(f)
    assert source.kind == "image_file"
    [s] = source.samples()
    assert (s.image_id, s.split, s.read_bytes()) == ("wound photo.jpeg", "", b"jpeg")


def test_unknown_layouts_say_what_was_expected(tmp_path):
    expected = ("a SurgWound release folder ({train,val,test}_{question,report}.json), a folder with "
                "labels.csv and images/, a folder of images, or one image file")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError) as e:
        open_source(tmp_path / "empty")
    assert str(e.value) == f"{tmp_path / 'empty'}: no recognised dataset layout (expected {expected})"
    with pytest.raises(SourceError) as e:
        open_source(tmp_path / "nope")
    assert str(e.value) == f"{tmp_path / 'nope'}: no such file or directory (expected {expected})"
    (tmp_path / "train_question.json").write_text("[]")
    with pytest.raises(SourceError) as e:
        open_source(tmp_path / "train_question.json")
    assert str(e.value) == (
        f"{tmp_path / 'train_question.json'}: not an image file (expected {expected}); "
        "for the SurgWound release pass the folder that holds the six JSON files"
    )


def test_label_value_errors_are_also_source_errors(tmp_path):
    root = csv_folder(tmp_path, [HEADER, ROW_A.replace("Healed", "Healing")])
    with pytest.raises(SourceError) as e:
        open_source(root).samples()
    assert isinstance(e.value, LabelValueError) and isinstance(e.value, LabelError)
    assert (e.value.field, e.value.value) == ("healing_status", "Healing")
