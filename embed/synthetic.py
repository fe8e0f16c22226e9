"""Generated SurgWound-format datasets for the demo, the tests and the benchmarks.

:func:`make_release` writes the six JSON files of the Hugging Face release in its real format
(one JSON array per file; one multiple-choice record per annotated field with ``options``; the
image base64 repeated in every record; an unsure field simply has no record; full urgency strings;
one "Medical Report" record per image). The images are drawn so that labels leave visible traces
(:func:`draw_wound`: incision, red halo, swollen ring, exudate patch, closure marks).

Labels come from one latent severity per image, with SurgWound-like imbalance (erythema ~29 %,
edema ~15 %, exudate ~15 %, infection risk ~17 %, urgency ~12 % positive) and unsure rates, but each
split gets at least a few positives and negatives per label so that metrics are estimable.
Everything is deterministic in ``seed``. The images mean nothing clinically.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from woundscore.cache.schema import LABEL_NAMES
from woundscore.embed.samples import NOTICE_FILE  # the marker file the readers look for

#: What a generated release says about itself (written to NOTICE_FILE, repeated by every artifact).
GENERATED_NOTICE = ("generated images (embed.synthetic), not SurgWound photos: "
                    "anything made from them means nothing clinically")

#: Release field names (new names) per canonical key, in the order records are written.
FIELD_TITLES: dict[str, str] = {
    "location": "Wound Location", "healing_status": "Healing Status", "closure_method": "Closure Method",
    "exudate": "Exudate Type", "erythema": "Erythema", "edema": "Edema",
    "infection_risk": "Infection Risk Assessment", "urgency": "Urgency Level",
}
#: The annotation sheet's older names, still accepted by the reader.
OLD_FIELD_TITLES: dict[str, str] = {"healing_status": "Wound Status", "exudate": "Exudate Characteristics"}

URGENCY_TEXT: dict[str, str] = {
    "Green": "Home Care (Green): Manage with routine care",
    "Yellow": "Clinic Visit (Yellow): Requires professional evaluation within 48 hours",
    "Red": "Emergency Care (Red): Seek immediate medical attention",
}
LOCATIONS = ("Other", "Abdomen", "Ankle", "Facial region", "Manus", "Patella", "Cervical region")
CLOSURES = ("Sutures", "Invisible", "Adhesives", "Staples")
EXUDATES = ("Serous", "Sanguineous", "Purulent", "Seropurulent")

OPTIONS: dict[str, list[str]] = {
    "location": list(LOCATIONS), "healing_status": ["Healed", "Not Healed"], "closure_method": list(CLOSURES),
    "exudate": ["Non-existent", *EXUDATES], "erythema": ["Existent", "Non-existent"],
    "edema": ["Existent", "Non-existent"], "infection_risk": ["Low", "Medium", "High"],
    "urgency": list(URGENCY_TEXT.values()),
}
_WOUND = "the surgical wound in this image"
QUESTIONS: dict[str, str] = {
    "location": f"Where on the body is {_WOUND} located?",
    "healing_status": f"What is the healing status of {_WOUND}?",
    "closure_method": f"Which closure method was used for {_WOUND}?",
    "exudate": f"What type of exudate does {_WOUND} show?",
    "erythema": f"Is erythema present around {_WOUND}?",
    "edema": f"Is edema present around {_WOUND}?",
    "infection_risk": f"What is the infection risk of {_WOUND}?",
    "urgency": f"What level of urgency does {_WOUND} require?",
}
REPORT_QUESTION = "Write a medical report describing the surgical wound in this image."
SPLIT_FRACTIONS = {"train": 0.70, "val": 0.10, "test": 0.20}  # SurgWound: 480 / 69 / 137
MIN_PER_SPLIT = 2  # positives and negatives per label and split, so that every metric is estimable
NOISE = 4.0  # per-pixel noise std of a drawing

# Share of images with no record for a field (SurgWound's "Uncertain" rates).
UNSURE_RATE = {"location": 0.24, "closure_method": 0.28, "exudate": 0.09, "erythema": 0.04, "edema": 0.19}

_SKIN = np.array([(241, 194, 167), (224, 172, 138), (198, 134, 103), (161, 102, 72), (120, 78, 55), (92, 60, 42)],
                 dtype=np.float32)
_EXUDATE_RGB = {"Serous": (236, 218, 140), "Purulent": (214, 204, 70), "Seropurulent": (228, 194, 96),
                "Sanguineous": (128, 24, 28)}
# Closure marks across the incision: (half length, colour, width), in units of the image's short side.
_CLOSURE_MARK = {"Sutures": (0.05, (30, 30, 60), 0.008), "Staples": (0.035, (170, 172, 178), 0.012),
                 "Adhesives": (0.09, (240, 236, 225), 0.025)}


@dataclass
class ReleaseImage:
    """One image of a release to write: its bytes, split and raw answers (absent = unsure)."""

    name: str  # image_name, e.g. "76.jpg"
    split: str  # train / val / test
    image: bytes  # JPEG bytes
    answers: dict[str, str]  # canonical key (FIELD_TITLES) -> answer string
    report: str | None = None  # "Medical Report" answer; None writes no report record


@dataclass
class _Truth:
    """The drawn state of one image (also for fields whose annotation is then withheld)."""

    healing: str
    erythema: bool
    edema: bool
    exudate: str  # "Non-existent" or a subtype
    infection: str  # Low / Medium / High
    urgency: str  # Green / Yellow / Red
    location: str
    closure: str
    unsure: set[str] = field(default_factory=set)

    def answers(self) -> dict[str, str]:
        a = {"location": self.location, "healing_status": self.healing, "closure_method": self.closure,
             "exudate": self.exudate, "erythema": "Existent" if self.erythema else "Non-existent",
             "edema": "Existent" if self.edema else "Non-existent", "infection_risk": self.infection,
             "urgency": URGENCY_TEXT[self.urgency]}
        return {k: v for k, v in a.items() if k not in self.unsure}

    def binary(self, key: str) -> bool:
        return {"healing_status": self.healing == "Not Healed", "erythema": self.erythema, "edema": self.edema,
                "infection_risk": self.infection != "Low", "urgency": self.urgency != "Green",
                "exudate": self.exudate != "Non-existent"}[key]

    def set_binary(self, key: str, value: bool, rng: np.random.Generator) -> None:
        if key == "healing_status":
            self.healing = "Not Healed" if value else "Healed"
        elif key in ("erythema", "edema"):
            setattr(self, key, value)
        elif key == "infection_risk":
            self.infection = ("High" if rng.random() < 0.2 else "Medium") if value else "Low"
        elif key == "urgency":
            self.urgency = ("Red" if rng.random() < 0.2 else "Yellow") if value else "Green"
        elif key == "exudate":
            self.exudate = str(rng.choice(EXUDATES)) if value else "Non-existent"


def split_sizes(n_images: int) -> dict[str, int]:
    """Images per split (about 70 / 10 / 20 %, at least 2 in val and test)."""
    if n_images < 6:
        raise ValueError(f"n_images must be at least 6 (two per split), got {n_images}")
    n_val = max(2, round(n_images * SPLIT_FRACTIONS["val"]))
    n_test = max(2, round(n_images * SPLIT_FRACTIONS["test"]))
    return {"train": n_images - n_val - n_test, "val": n_val, "test": n_test}


def _draw_truths(n: int, rng: np.random.Generator) -> list[_Truth]:
    out = []
    for _ in range(n):
        z = rng.normal()
        e = rng.normal(size=6)
        erythema = 0.9 * z + 0.6 * e[1] > 0.62
        exudate_pos = 0.8 * z + 0.6 * e[3] > 1.05
        risk = 0.6 * z + 0.5 * erythema + 0.7 * exudate_pos + 0.45 * e[4]
        infection = "High" if risk > 2.0 else "Medium" if risk > 0.95 else "Low"
        p_up, up, down = {"High": (0.6, "Red", "Yellow"), "Medium": (0.5, "Yellow", "Green"),
                          "Low": (0.015, "Yellow", "Green")}[infection]
        urgency = up if rng.random() < p_up else down
        t = _Truth(healing="Not Healed" if z + 0.8 * e[0] > 0.3 else "Healed", erythema=bool(erythema),
                   edema=bool(0.7 * z + 0.7 * e[2] > 1.05),
                   exudate=str(rng.choice(EXUDATES, p=[0.38, 0.30, 0.20, 0.12])) if exudate_pos else "Non-existent",
                   infection=infection, urgency=urgency,
                   location=str(rng.choice(LOCATIONS, p=[0.34, 0.21, 0.14, 0.13, 0.06, 0.07, 0.05])),
                   closure=str(rng.choice(CLOSURES, p=[0.66, 0.22, 0.07, 0.05])))
        t.unsure = {k for k, rate in UNSURE_RATE.items() if rng.random() < rate}
        out.append(t)
    return out


def _enforce_minimum(truths: list[_Truth], k: int, rng: np.random.Generator) -> None:
    """Give every label at least ``k`` positives and ``k`` negatives among the annotated images of
    ``truths`` (one split), flipping random annotated ones (fewer when the split is too small)."""
    for key in LABEL_NAMES:
        observed = [t for t in truths if key not in t.unsure]
        kk = min(k, len(observed) // 2)
        for want in (True, False):
            have = [t for t in observed if t.binary(key) == want]
            others = [t for t in observed if t.binary(key) != want]
            need = kk - len(have)
            if need > 0:
                for i in rng.permutation(len(others))[:need]:
                    others[i].set_binary(key, want, rng)


def _segment_distance(xx: np.ndarray, yy: np.ndarray, p0: np.ndarray, p1: np.ndarray) -> np.ndarray:
    """Distance of every pixel to the segment p0-p1, (H, W) float32."""
    d = p1 - p0
    t = ((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / max(float(d @ d), 1e-6)
    t = np.clip(t, 0.0, 1.0)
    return np.hypot(xx - (p0[0] + t * d[0]), yy - (p0[1] + t * d[1]))


def _blend(img: np.ndarray, rgb: Sequence[float], weight: np.ndarray) -> None:
    w = np.clip(weight, 0.0, 1.0)[..., None]
    img *= 1.0 - w
    img += w * np.asarray(rgb, dtype=np.float32)


def draw_wound(t: _Truth, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A (H, W, 3) uint8 picture of a wound whose look follows the labels in ``t``."""
    w, h = size
    s = float(min(w, h))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Skin with soft lighting (low-frequency noise upsampled).
    base = _SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 6, 3).astype(np.float32)
    light = rng.normal(0, 1, (4, 4)).astype(np.float32)
    light = np.asarray(Image.fromarray(light, mode="F").resize((w, h), Image.BILINEAR))
    img = base[None, None, :] * (1.0 + 0.06 * light[..., None])
    img = img.astype(np.float32)

    centre = np.array([w / 2, h / 2], dtype=np.float32) + rng.normal(0, 0.05 * s, 2).astype(np.float32)
    angle = rng.uniform(0, math.pi)
    half = rng.uniform(0.25, 0.38) * s
    direction = np.array([math.cos(angle), math.sin(angle)], dtype=np.float32)
    p0, p1 = centre - half * direction, centre + half * direction
    dist = _segment_distance(xx, yy, p0, p1)

    # Infection risk / urgency: the wound area darker and redder.
    severity = {"Low": 0, "Medium": 1, "High": 2}[t.infection] + {"Green": 0, "Yellow": 1, "Red": 2}[t.urgency]
    if severity:
        area = np.exp(-((dist / (0.30 * s)) ** 2))
        _blend(img, (110, 30, 30), area * 0.12 * severity)
        img *= 1.0 - 0.035 * severity
    if t.edema:  # swollen, shiny, lighter ring
        ring = np.exp(-(((dist - 0.10 * s) / (0.05 * s)) ** 2))
        _blend(img, (255, 232, 220), 0.55 * ring)
    if t.erythema:  # red halo
        _blend(img, (205, 40, 45), 0.75 * np.exp(-((dist / (0.13 * s)) ** 2)))
    # The incision: thin and pale when healed, thick and dark when not.
    if t.healing == "Not Healed":
        _blend(img, (85, 22, 24), np.exp(-((dist / (0.022 * s)) ** 2)) * 1.2)
    else:
        _blend(img, (196, 128, 118), np.exp(-((dist / (0.009 * s)) ** 2)) * 0.8)
    if t.exudate != "Non-existent":
        at = p0 + rng.uniform(0.3, 0.7) * (p1 - p0)
        r = rng.uniform(0.06, 0.09) * s
        blob = np.exp(-(((xx - at[0]) ** 2 + (yy - at[1]) ** 2) / (r * r)))
        _blend(img, _EXUDATE_RGB[t.exudate], 1.3 * blob)
    # Closure marks across the line.
    normal = np.array([-direction[1], direction[0]], dtype=np.float32)
    if t.closure in _CLOSURE_MARK:
        half_mark, colour, width = _CLOSURE_MARK[t.closure]
        n_marks = int(rng.integers(4, 8))
        for j in range(n_marks):
            c = p0 + (j + 0.5) / n_marks * (p1 - p0)
            a, b = c - half_mark * s * normal, c + half_mark * s * normal
            _blend(img, colour, np.exp(-((_segment_distance(xx, yy, a, b) / max(width * s, 0.5)) ** 2)))
    img += rng.normal(0, NOISE, img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


def _jpeg(pixels: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _report(t: _Truth) -> str:
    parts = [
        f"The surgical wound{'' if 'location' in t.unsure else ' on the ' + t.location.lower()} is "
        f"{t.healing.lower()}",
    ]
    if "closure_method" not in t.unsure:
        parts.append(f"closure method {t.closure.lower()}")
    findings = []
    if "erythema" not in t.unsure:
        findings.append("erythema present" if t.erythema else "no erythema")
    if "edema" not in t.unsure:
        findings.append("edema present" if t.edema else "no edema")
    if "exudate" not in t.unsure:
        findings.append("no exudate" if t.exudate == "Non-existent" else f"{t.exudate.lower()} exudate")
    text = ", ".join(parts) + ". " + (", ".join(findings).capitalize() + ". " if findings else "")
    text += f"Infection risk is {t.infection.lower()}; urgency: {URGENCY_TEXT[t.urgency]}."
    return text


def _title(key: str, field_names: str, rng: np.random.Generator) -> str:
    if key in OLD_FIELD_TITLES and (field_names == "old" or (field_names == "mixed" and rng.random() < 0.5)):
        return OLD_FIELD_TITLES[key]
    return FIELD_TITLES[key]


def write_release(out_dir: str | os.PathLike, images: Iterable[ReleaseImage], *, field_names: str = "new",
                  shuffle_seed: int | None = None, indent: int | None = None, seed: int = 0) -> Path:
    """Write ``images`` as the six release files ``{train,val,test}_{question,report}.json``.

    ``field_names``: "new" (Healing Status, Exudate Type), "old" (Wound Status, Exudate
    Characteristics) or "mixed" (old names in about half of those records); ``shuffle_seed``:
    shuffle the records within each file (None: grouped by image, field order).
    """
    if field_names not in ("new", "old", "mixed"):
        raise ValueError(f"field_names must be 'new', 'old' or 'mixed', got {field_names!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    files: dict[str, list[dict]] = {f"{s}_{k}": [] for s in SPLIT_FRACTIONS for k in ("question", "report")}
    for img in images:
        if img.split not in SPLIT_FRACTIONS:
            raise ValueError(f"image {img.name!r}: split must be train, val or test, got {img.split!r}")
        b64 = base64.b64encode(img.image).decode("ascii")  # one string shared by all its records
        files[f"{img.split}_question"].extend(
            {"id": f"{img.name}_{FIELD_TITLES[key].lower().replace(' ', '_')}", "image_name": img.name,
             "field": _title(key, field_names, rng), "task_type": "multi_choice", "image": b64,
             "question": QUESTIONS[key], "options": OPTIONS[key], "answer": img.answers[key]}
            for key in FIELD_TITLES if key in img.answers)  # unsure: no record, as in the release
        if img.report is not None:
            files[f"{img.split}_report"].append(
                {"id": f"{img.name}_medical_report", "image_name": img.name, "field": "Medical Report",
                 "task_type": "report_generation", "image": b64, "question": REPORT_QUESTION, "answer": img.report})
    shuffler = np.random.default_rng(shuffle_seed) if shuffle_seed is not None else None
    for stem, records in files.items():
        if shuffler is not None:
            records = [records[i] for i in shuffler.permutation(len(records))]
        _write_array(out / f"{stem}.json", records, indent)
    return out


def _write_array(path: Path, records: list[dict], indent: int | None) -> None:
    """Write a JSON array one record at a time (the large release never exists as one string)."""
    tmp = path.with_suffix(".json.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("[")
        for i, rec in enumerate(records):
            f.write(",\n" if i else "\n")
            f.write(json.dumps(rec, ensure_ascii=False, indent=indent))
        f.write("\n]\n")
    os.replace(tmp, path)


def make_release_images(n_images: int = 100, *, seed: int = 0,
                        image_size: tuple[int, int] = (128, 128)) -> list[ReleaseImage]:
    """Draw ``n_images`` labelled wound pictures (see the module docstring), split 70/10/20."""
    rng = np.random.default_rng(seed)
    truths = _draw_truths(n_images, rng)
    sizes = split_sizes(n_images)
    splits = ["train"] * sizes["train"] + ["val"] * sizes["val"] + ["test"] * sizes["test"]
    order = rng.permutation(n_images)  # image numbers are shuffled across splits, as in SurgWound
    for split in SPLIT_FRACTIONS:
        _enforce_minimum([truths[i] for i in range(n_images) if splits[i] == split], MIN_PER_SPLIT, rng)
    return [ReleaseImage(name=f"{int(order[i]) + 1}.jpg", split=splits[i], answers=t.answers(), report=_report(t),
                         image=_jpeg(draw_wound(t, image_size, np.random.default_rng([seed, i]))))
            for i, t in enumerate(truths)]


def make_release(out_dir: str | os.PathLike, n_images: int = 100, *, seed: int = 0,
                 image_size: tuple[int, int] = (128, 128), field_names: str = "new", shuffle_records: bool = False,
                 notice: str = GENERATED_NOTICE) -> Path:
    """Write a generated release (six JSON files, real format) to ``out_dir`` and return it.

    The folder also gets ``NOTICE_FILE`` holding ``notice``, which the readers expose as
    ``Source.notice`` and every artifact made from the release repeats.

    ``n_images``: over all splits (>= 6), split about 70 / 10 / 20 %; ``image_size``: (width,
    height) of each JPEG; ``field_names``: see :func:`write_release`; ``shuffle_records``: shuffle
    the record order within each file.
    """
    images = make_release_images(n_images, seed=seed, image_size=image_size)
    out = write_release(out_dir, images, field_names=field_names, shuffle_seed=seed if shuffle_records else None,
                        seed=seed)
    (out / NOTICE_FILE).write_text(notice + "\n", encoding="utf-8")
    return out


def make_large_release(out_dir: str | os.PathLike, target_mb: float = 450.0, *, seed: int = 0) -> Path:
    """A release of about ``target_mb`` MB (the real one is 452 MB) for memory tests and benchmarks.

    Each wound is drawn at 128 px, enlarged to 768 px and covered in pixel noise so that its JPEG is
    large (~0.5 MB); as in the real release each image's base64 is repeated in
    about nine records, so the files hold ~12x the unique image bytes.
    """
    images = make_release_images(6, seed=seed)
    rng = np.random.default_rng([seed, 2])
    probe = _noisy_jpeg(images[0].image, rng)
    per_image = len(probe) * 4 / 3 * 8.2  # base64 in ~7.6 question records + 1 report, less JPEG spread
    n = max(6, math.ceil(target_mb * 1e6 / per_image))
    images = make_release_images(n, seed=seed)
    for img in images:
        img.image = _noisy_jpeg(img.image, rng)
    return write_release(out_dir, images, seed=seed)


def _noisy_jpeg(jpeg: bytes, rng: np.random.Generator) -> bytes:
    small = Image.open(io.BytesIO(jpeg)).convert("RGB")
    big = np.asarray(small.resize((768, 768), Image.BICUBIC), dtype=np.uint8)
    noise = rng.integers(0, 48, big.shape, dtype=np.uint8)
    return _jpeg(np.clip(big.astype(np.int16) + noise - 24, 0, 255).astype(np.uint8), quality=92)


def make_labels_csv_folder(out_dir: str | os.PathLike, n_images: int = 24, *, seed: int = 0) -> Path:
    """Write a ``labels.csv`` + ``images/`` folder (the seed's format) and return it.

    Unsure values are written as ``Uncertain`` or left empty; urgency as the full string.
    """
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1])
    columns = ["image", "split", "healing_status", "erythema", "edema", "infection_risk",
               "urgency_level", "exudate_type", "location", "closure_method"]
    keys = ["healing_status", "erythema", "edema", "infection_risk", "urgency", "exudate",
            "location", "closure_method"]
    rows = []
    for img in make_release_images(n_images, seed=seed, image_size=(96, 96)):
        (out / "images" / img.name).write_bytes(img.image)
        rows.append([img.name, img.split] + [img.answers.get(k, "Uncertain" if rng.random() < 0.5 else "") for k in keys])
    with open(out / "labels.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)
    (out / NOTICE_FILE).write_text(GENERATED_NOTICE + "\n", encoding="utf-8")
    return out
