"""`wound-embed stats` and source_stats: counts and pos_weight computed from the source."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES, encode_annotations
from woundscore.embed.cli import cli
from woundscore.embed.sources import source_stats
from woundscore.embed.synthetic import ReleaseImage, make_release_images, write_release
from tests.fixtures_data import MINI_RELEASE_IMAGES


def expected_stats(images: list[ReleaseImage]) -> dict:
    """Counts straight from the generator's answers (independent of the reader)."""
    out = {}
    for split in ("train", "val", "test"):
        Y = np.stack([encode_annotations(i.answers)[0] for i in images if i.split == split])
        labels = {}
        for j, name in enumerate(LABEL_NAMES):
            pos, neg = int((Y[:, j] == 1).sum()), int((Y[:, j] == 0).sum())
            labels[name] = {"pos": pos, "neg": neg, "missing": len(Y) - pos - neg,
                            "pos_weight": round(neg / pos, 3) if pos else None}
        out[split] = {"n_images": len(Y), "labels": labels}
    return out


def test_stats_json_on_mini_release(mini_release):
    # The fixture was made with these arguments (tests/fixtures_data.py).
    images = make_release_images(MINI_RELEASE_IMAGES, seed=7, image_size=(96, 96))
    result = CliRunner().invoke(cli, ["stats", str(mini_release), "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output)
    assert got == expected_stats(images)
    assert list(got) == ["train", "val", "test"]
    assert got == source_stats(mini_release)


def test_stats_table(tmp_path):
    green, red = "Home Care (Green): Manage with routine care", "Emergency Care (Red): Seek immediate medical attention"
    images = [
        ReleaseImage("1.jpg", "train", b"1", {"healing_status": "Healed", "erythema": "Existent", "urgency": green}),
        ReleaseImage("2.jpg", "train", b"2", {"healing_status": "Healed", "erythema": "Non-existent", "urgency": green}),
        ReleaseImage("3.jpg", "train", b"3", {"healing_status": "Not Healed", "erythema": "Non-existent", "urgency": red}),
        ReleaseImage("4.jpg", "val", b"4", {"edema": "Existent"}),
        ReleaseImage("5.jpg", "test", b"5", {"exudate": "Serous"}),
    ]
    root = write_release(tmp_path, images)
    result = CliRunner().invoke(cli, ["stats", str(root)])
    assert result.exit_code == 0, result.output
    assert result.output == """\
train: 3 images
  label              pos   neg  missing  pos_weight
  healing_status       1     2        0        2.00
  erythema             1     2        0        2.00
  edema                0     0        3           -
  infection_risk       0     0        3           -
  urgency              1     2        0        2.00
  exudate              0     0        3           -
val: 1 images
  label              pos   neg  missing  pos_weight
  healing_status       0     0        1           -
  erythema             0     0        1           -
  edema                1     0        0        0.00
  infection_risk       0     0        1           -
  urgency              0     0        1           -
  exudate              0     0        1           -
test: 1 images
  label              pos   neg  missing  pos_weight
  healing_status       0     0        1           -
  erythema             0     0        1           -
  edema                0     0        1           -
  infection_risk       0     0        1           -
  urgency              0     0        1           -
  exudate              1     0        0        0.00
"""


def test_stats_label_problem_exits_1_with_the_message(tmp_path):
    images = [ReleaseImage(n, s, n.encode(), {"erythema": "Existent"}) for n, s in
              [("1.jpg", "train"), ("2.jpg", "val"), ("3.jpg", "test")]]
    root = write_release(tmp_path, images)
    f = root / "val_question.json"
    f.write_text(f.read_text().replace('"answer": "Existent"', '"answer": "Reddish"'))
    result = CliRunner().invoke(cli, ["stats", str(root)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {f}: record 0 (id '2.jpg_erythema', image '2.jpg'): field 'erythema' has unknown value 'Reddish'\n"
    )


def test_stats_unknown_layout_exits_1_and_missing_path_exits_2(tmp_path):
    result = CliRunner().invoke(cli, ["stats", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {tmp_path}: no recognised dataset layout (expected a SurgWound release folder "
        "({train,val,test}_{question,report}.json), a folder with labels.csv and images/, "
        "a folder of images, or one image file)\n"
    )
    result = CliRunner().invoke(cli, ["stats", str(tmp_path / "nope")])
    assert result.exit_code == 2
    assert f"Error: Invalid value for 'SOURCE': Path '{tmp_path / 'nope'}' does not exist." in result.output


def test_stats_plain_folder_and_labels_csv(tmp_path, labels_csv_dir):
    (tmp_path / "a.jpg").write_bytes(b"x")
    got = json.loads(CliRunner().invoke(cli, ["stats", str(tmp_path), "--json"]).output)
    assert got == {"unlabelled": {"n_images": 1, "labels": {
        n: {"pos": 0, "neg": 0, "missing": 1, "pos_weight": None} for n in LABEL_NAMES}}}
    got = source_stats(labels_csv_dir)
    assert sum(s["n_images"] for s in got.values()) == 16
    assert set(got) == {"train", "val", "test"}


def test_stats_help_has_example():
    result = CliRunner().invoke(cli, ["stats", "--help"])
    assert result.exit_code == 0
    assert "Example:\n      wound-embed stats SurgWound/\n" in result.output
    assert "Exit codes:" in result.output
