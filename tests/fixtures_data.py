"""Data fixtures (owned by the sources work). Built here from embed.synthetic; nothing downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from woundscore.embed.synthetic import make_labels_csv_folder, make_release

#: Size of the session fixtures (small: they are shared by many tests).
MINI_RELEASE_IMAGES = 30
MINI_CSV_IMAGES = 16


@pytest.fixture(scope="session")
def mini_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SurgWound-format release folder: six JSON files, 30 images (train 21 / val 3 / test 6),
    96x96 JPEGs, unsure fields omitted, old and new field names mixed, report records.
    Treat it as read-only (it is shared by the whole session)."""
    return make_release(
        tmp_path_factory.mktemp("mini_release"),
        MINI_RELEASE_IMAGES,
        seed=7,
        image_size=(96, 96),
        field_names="mixed",
    )


@pytest.fixture(scope="session")
def labels_csv_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with labels.csv and images/ (16 images, 96x96 JPEGs, `Uncertain` / empty cells).
    Treat it as read-only."""
    return make_labels_csv_folder(tmp_path_factory.mktemp("labels_csv"), MINI_CSV_IMAGES, seed=3)


@pytest.fixture(scope="session")
def surgwound_sheet() -> Path:
    """The real annotation sheet ``<repo>/../shared/data/surgwound/records_processed.csv``;
    skips when the shared folder is absent (e.g. a fresh clone in CI)."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "surgwound" / "records_processed.csv"
    if not path.is_file():
        pytest.skip(f"real SurgWound annotation sheet not present at {path}")
    return path
