"""The model folder: everything needed to score embeddings later, and nothing executable.

Layout of ``MODEL_DIR``::

    model.keras        the MLP (Keras 3 native format, logits out; README, "How it is built")
      + history.csv    its training history: epoch, loss, val_loss, val_macro_auc, seconds
      or probe.json    the logistic probe's numbers (coef, intercept, scaler mean/scale) as JSON
      or (kind "finetune") whatever woundscore.classify.finetuned.FineTunedHead.save_to writes
    thresholds.json    per-label thresholds (0.5, Youden, sensitivity rule) and which one applies,
                       chosen on the calibrated validation scores
    calibration.json   per-label calibration (classify.calibration; absent in older folders = identity)
    ood.npz            the training embeddings' description for the out-of-distribution flag
                       (classify.ood; absent in older folders = no flag)
    schema.json        cache.schema.SCHEMA.to_json(): how the labels were encoded
    provenance.json    the training cache's encoder id/revision/dim/preprocessing, split sizes,
                       pos_weights, hyperparameters, validation metrics, versions, seed, notice

No pickle anywhere. A model only scores embeddings made the way its training embeddings were
made: :func:`check_compatible` compares encoder id, revision, embedding size and preprocessing
(and the label schema, where the other side has one) and raises :class:`EncoderMismatchError`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from woundscore.cache import identity_differences
from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, SCHEMA
from woundscore.cache.util import canonical, replace_dir

FORMAT = "woundscore.model"
FORMAT_VERSION = 1
KERAS_FILE = "model.keras"
PROBE_FILE = "probe.json"
THRESHOLDS_FILE = "thresholds.json"
SCHEMA_FILE = "schema.json"
PROVENANCE_FILE = "provenance.json"
CALIBRATION_FILE = "calibration.json"
OOD_FILE = "ood.npz"
HISTORY_FILE = "history.csv"
HISTORY_COLUMNS = ("epoch", "loss", "val_loss", "val_macro_auc", "seconds")

#: Provenance keys that must be equal for embeddings to be scored by a model.
ENCODER_KEYS: tuple[str, ...] = ("encoder_id", "encoder_revision", "embedding_dim", "preprocessing")


class ArtifactError(WoundscoreError):
    """A model folder that is missing, incomplete, unreadable, or would overwrite another."""


class EncoderNotGivenError(ArtifactError):
    """The model's encoder was a local folder, so it cannot be found again by its id alone."""


class EncoderMismatchError(ArtifactError):
    """Embeddings from another encoder, revision, embedding size or preprocessing than the model's.

    ``differences`` maps each differing key to ``(model has, embeddings have)``.
    """

    def __init__(self, model_dir: str, differences: dict[str, tuple[Any, Any]], *, offered: str = "the input") -> None:
        self.model_dir, self.differences, self.offered = model_dir, differences, offered
        lines = [f"{model_dir}: refusing to score embeddings made differently from the model's training data:"]
        for key, (have, new) in differences.items():
            lines.append(f"  {key}: model has {have!r}, {offered} has {new!r}")
        super().__init__("\n".join(lines))


def encoder_identity(provenance: Mapping[str, Any]) -> dict[str, Any]:
    """The identity part of a cache's / encoder's / model's provenance, normalised."""
    return {
        "encoder_id": provenance.get("encoder_id") or None,
        "encoder_revision": provenance.get("encoder_revision") or None,
        "embedding_dim": int(provenance.get("embedding_dim") or 0),
        "preprocessing": canonical(provenance.get("preprocessing") or {}),
    }


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n", encoding="utf-8")


def history_csv(history: list[Mapping[str, Any]]) -> str:
    """A fitted MLP's ``history_`` as CSV text (HISTORY_COLUMNS; empty where not measured)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HISTORY_COLUMNS)
    w.writerows([["" if rec.get(k) is None else rec[k] for k in HISTORY_COLUMNS] for rec in history])
    return buf.getvalue()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ArtifactError(f"{path.parent}: not a woundscore model folder ({path.name} is missing)") from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path}: unreadable ({exc})") from None


def check_writable(out_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Refuse (ArtifactError) a path that is a file, or a non-empty folder without ``overwrite``.

    Called before training too, so that a run that could not be saved does not start.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ArtifactError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ArtifactError(f"{out}: folder exists and is not empty (use --overwrite to replace it)")
    return out


def save_model_dir(out_dir: str | os.PathLike, estimator: Any, thresholds: Mapping[str, Any],
                   provenance: Mapping[str, Any], *, calibration: Any = None, ood: Any = None,
                   overwrite: bool = False) -> Path:
    """Write a model folder atomically: built beside ``out_dir``, then renamed into place.

    ``estimator`` is a fitted KerasMLPClassifier (saved as model.keras), LogisticProbe (probe.json)
    or any estimator with ``save_to(folder)`` (kind from its provenance's "kind", e.g. "finetune").
    ``calibration`` (classify.calibration.Calibration) and ``ood`` (classify.ood.OODModel) are
    written as calibration.json and ood.npz when given.
    An existing non-empty ``out_dir`` is refused unless ``overwrite``; it is only replaced once the
    new folder is complete, so a failure leaves the old model as it was.
    """
    # models (Keras, scikit-learn) only where a model is saved or loaded: `import woundscore`
    # reaches this module through the scorer and should not pay for scikit-learn
    from woundscore.classify.models import KerasMLPClassifier, LogisticProbe

    out = check_writable(out_dir, overwrite=overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        if isinstance(estimator, KerasMLPClassifier):
            with warnings.catch_warnings():  # numpy 2 nags about Keras's __array__; harmless
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"keras\.")
                estimator.model_.save(tmp / KERAS_FILE)
            if getattr(estimator, "history_", None):
                (tmp / HISTORY_FILE).write_text(history_csv(estimator.history_), encoding="utf-8")
            kind = "mlp"
        elif isinstance(estimator, LogisticProbe):
            _write_json(tmp / PROBE_FILE, estimator.to_dict())
            kind = "logreg"
        elif hasattr(estimator, "save_to"):
            estimator.save_to(tmp)
            kind = str(provenance.get("kind") or "finetune")
        else:
            raise ArtifactError(f"cannot save a {type(estimator).__name__}")
        prov = dict(provenance)
        prov.update({"format": FORMAT, "format_version": FORMAT_VERSION, "model_type": kind, "kind": kind,
                     "labels": list(LABEL_NAMES)})
        _write_json(tmp / THRESHOLDS_FILE, dict(thresholds))
        if calibration is not None:
            _write_json(tmp / CALIBRATION_FILE, calibration.to_json())
        if ood is not None:
            ood.save(tmp / OOD_FILE)
        (tmp / SCHEMA_FILE).write_text(SCHEMA.to_json() + "\n", encoding="utf-8")
        _write_json(tmp / PROVENANCE_FILE, canonical(prov))
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


@dataclass
class LoadedModel:
    """A model folder in memory: the estimator, its thresholds, provenance, calibration and OOD
    description (``ood`` None for folders written before it existed)."""

    path: Path
    kind: str  # "mlp", "logreg" or "finetune"
    estimator: Any
    thresholds: dict[str, Any]
    provenance: dict[str, Any]
    schema_json: str = field(repr=False, default="")
    calibration: Any = None  # classify.calibration.Calibration (identity when the folder has none)
    ood: Any = None  # classify.ood.OODModel | None

    def __post_init__(self) -> None:
        if self.calibration is None:
            from woundscore.classify.calibration import Calibration

            self.calibration = Calibration.identity()

    @property
    def encoder(self) -> dict[str, Any]:
        """Identity of the embeddings the model was trained on (ENCODER_KEYS)."""
        return encoder_identity(self.provenance.get("encoder", {}))

    def check_compatible(self, provenance: Mapping[str, Any] | None, *, offered: str = "the input") -> None:
        """Raise EncoderMismatchError unless ``provenance`` (a cache's or an encoder's) matches.

        When it carries a ``label_schema`` (a cache does), that must match the model's too.
        """
        if provenance is None:
            return
        diff = identity_differences(self.encoder, encoder_identity(provenance), keys=ENCODER_KEYS)
        theirs = provenance.get("label_schema")
        if theirs and canonical(theirs) != canonical(self.schema_json):
            diff["label_schema"] = ("the label rules of its schema.json", "other label rules")
        if diff:
            raise EncoderMismatchError(str(self.path), diff, offered=offered)

    def predict_raw(self, X: np.ndarray, provenance: Mapping[str, Any] | None = None) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) head probabilities BEFORE calibration, after the
        compatibility check. Without ``provenance`` only the embedding size can be checked; pass
        the cache's or encoder's provenance whenever it is known."""
        self.check_compatible(provenance)
        X = np.asarray(X)
        dim = self.encoder["embedding_dim"]
        if X.ndim != 2 or (dim and X.shape[1] != dim):
            got = X.shape[1] if X.ndim == 2 else f"shape {X.shape}"
            raise EncoderMismatchError(str(self.path), {"embedding_dim": (dim, got)})
        return np.asarray(self.estimator.predict_proba(X), dtype=np.float64)

    def predict_proba(self, X: np.ndarray, provenance: Mapping[str, Any] | None = None) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) CALIBRATED probabilities (:meth:`predict_raw`, then
        ``calibration.apply``; identity for folders without calibration.json)."""
        return self.calibration.apply(self.predict_raw(X, provenance))


def _check_thresholds(path: Path, thresholds: Any) -> None:
    """ArtifactError naming the file and key unless every label has a finite value in [0, 1]."""
    labels = thresholds.get("labels") if isinstance(thresholds, dict) else None
    if not isinstance(labels, dict):
        raise ArtifactError(f"{path}: key 'labels' is missing or not an object")
    missing = [n for n in LABEL_NAMES if n not in labels]
    if missing:
        raise ArtifactError(f"{path}: no threshold for {', '.join(missing)}")
    for n in LABEL_NAMES:
        v = labels[n].get("value") if isinstance(labels[n], dict) else None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0.0 <= v <= 1.0):  # NaN fails too
            raise ArtifactError(f"{path}: labels.{n}.value is {v!r}; a threshold must be a finite number in [0, 1]")


def _load_estimator(p: Path, kind: Any, prov: dict[str, Any]) -> Any:
    """The folder's estimator by its kind (Keras safe_mode, JSON, or the fine-tune's own loader)."""
    if kind == "mlp":
        import keras  # the loss is registered: woundscore/__init__ imported classify.loss

        from woundscore.classify.models import KerasMLPClassifier

        f = p / KERAS_FILE
        if not f.is_file():
            raise ArtifactError(f"{p}: not a woundscore model folder ({KERAS_FILE} is missing)")
        try:
            model = keras.saving.load_model(f, safe_mode=True)
        except Exception as exc:  # keras raises ValueError/TypeError/OSError/zipfile errors
            raise ArtifactError(f"{f}: cannot load ({type(exc).__name__}: {exc})") from None
        with warnings.catch_warnings():  # numpy 2 nags about Keras's __array__; harmless
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            bad = [w.path for w in model.weights if not np.all(np.isfinite(w.numpy()))]
        if bad:
            raise ArtifactError(f"{f}: weight {bad[0]!r} holds non-finite values")
        return KerasMLPClassifier.from_keras(model, **prov.get("hyperparameters", {}))
    if kind == "logreg":
        from woundscore.classify.models import ClassifierInputError, LogisticProbe

        try:
            return LogisticProbe.from_dict(_read_json(p / PROBE_FILE), origin=str(p / PROBE_FILE))
        except ClassifierInputError as exc:  # already names the file
            raise ArtifactError(str(exc)) from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{p / PROBE_FILE}: {exc}") from None
    if kind == "finetune":
        from woundscore.classify.finetuned import FineTunedHead  # written by the fine-tune work

        return FineTunedHead.load(p)
    raise ArtifactError(f"{p / PROVENANCE_FILE}: unknown model_type {kind!r}")


def _load_post_hoc(p: Path) -> tuple[Any, Any]:
    """(Calibration, OODModel | None) of a folder; identity / None where the file is absent."""
    from woundscore.classify.calibration import Calibration, CalibrationError
    from woundscore.classify.ood import OODError, OODModel

    cal = Calibration.identity()
    if (p / CALIBRATION_FILE).exists():
        try:
            cal = Calibration.from_json(_read_json(p / CALIBRATION_FILE), origin=str(p / CALIBRATION_FILE))
        except CalibrationError as exc:
            raise ArtifactError(str(exc)) from None
    ood = None
    if (p / OOD_FILE).exists():
        try:
            ood = OODModel.load(p / OOD_FILE)
        except OODError as exc:
            raise ArtifactError(str(exc)) from None
    return cal, ood


def load_model_dir(path: str | os.PathLike) -> LoadedModel:
    """Read a model folder written by :func:`save_model_dir` (Keras safe_mode, no pickle) and check
    it: thresholds finite in [0, 1], calibration and weights finite (ArtifactError naming the
    file and key otherwise)."""
    p = Path(path)
    if not p.is_dir():
        raise ArtifactError(f"{p}: no such model folder")
    prov = _read_json(p / PROVENANCE_FILE)
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        raise ArtifactError(f"{p / PROVENANCE_FILE}: not a woundscore model provenance file")
    if int(prov.get("format_version", 0)) != FORMAT_VERSION:
        raise ArtifactError(f"{p / PROVENANCE_FILE}: format_version {prov.get('format_version')!r} "
                            f"is not supported (this woundscore reads {FORMAT_VERSION})")
    try:
        schema_json = (p / SCHEMA_FILE).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ArtifactError(f"{p / SCHEMA_FILE}: unreadable ({exc})") from None
    if canonical(schema_json) != canonical(SCHEMA.to_json()):
        raise ArtifactError(f"{p / SCHEMA_FILE}: the model's labels were encoded with other rules than "
                            "this woundscore's cache/schema.py; retrain it")
    thresholds = _read_json(p / THRESHOLDS_FILE)
    _check_thresholds(p / THRESHOLDS_FILE, thresholds)
    kind = prov.get("kind") or prov.get("model_type")
    estimator = _load_estimator(p, kind, prov)
    cal, ood = _load_post_hoc(p)
    return LoadedModel(path=p, kind=kind, estimator=estimator, thresholds=thresholds, provenance=prov,
                       schema_json=schema_json, calibration=cal, ood=ood)
