"""The real SurgWound annotation sheet (686 rows, old field names, `Uncertain`) encodes to the
counts of ../shared/data/surgwound/README.md. Skipped when ../shared is absent."""

from __future__ import annotations

from collections import Counter

import numpy as np
from click.testing import CliRunner

from woundscore.cache.schema import LABEL_NAMES
from woundscore.embed.cli import cli
from woundscore.embed.sources import source_stats
from woundscore.embed.tables import read_annotation_sheet

# From the README's table "Counts over all 686 images" (pos, neg, missing).
EXPECTED = {
    "healing_status": (280, 406, 0),  # Not Healed 280, Healed 406
    "erythema": (191, 469, 26),
    "edema": (81, 473, 132),
    "infection_risk": (90 + 23, 573, 0),  # Medium + High, Low
    "urgency": (68 + 18, 600, 0),  # Yellow + Red, Green
    "exudate": (36 + 29 + 19 + 11, 531, 60),  # Serous + Sanguineous + Purulent + Seropurulent
}


def test_sheet_encodes_to_the_readme_counts(surgwound_sheet):
    samples = read_annotation_sheet(surgwound_sheet)
    assert len(samples) == 686 and len({s.image_id for s in samples}) == 686
    Y = np.stack([s.labels for s in samples])
    for j, name in enumerate(LABEL_NAMES):
        got = (int((Y[:, j] == 1).sum()), int((Y[:, j] == 0).sum()), int((Y[:, j] == -1).sum()))
        assert got == EXPECTED[name], name
    extras = {k: Counter(s.extras[k] for s in samples) for k in samples[0].extras}
    assert extras["exudate_type"] == {"Non-existent": 531, "Serous": 36, "Sanguineous": 29, "Purulent": 19,
                                      "Seropurulent": 11, "": 60}
    assert extras["infection_risk_level"] == {"Low": 573, "Medium": 90, "High": 23}
    assert extras["urgency_level"] == {"Green": 600, "Yellow": 68, "Red": 18}
    assert extras["location"][""] == 162 and extras["location"]["Abdomen"] == 112
    assert extras["closure_method"] == {"Sutures": 350, "": 194, "Invisible": 115, "Adhesives": 19, "Staples": 8}
    assert all(s.split == "" and s.report for s in samples)


def test_stats_on_the_sheet(surgwound_sheet):
    stats = source_stats(surgwound_sheet)
    assert list(stats) == ["all"] and stats["all"]["n_images"] == 686
    ery = stats["all"]["labels"]["erythema"]
    assert ery == {"pos": 191, "neg": 469, "missing": 26, "pos_weight": round(469 / 191, 3)}
    result = CliRunner().invoke(cli, ["stats", str(surgwound_sheet)])
    assert result.exit_code == 0
    assert "  erythema           191   469       26        2.46" in result.output.splitlines()
