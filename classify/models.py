"""The two classifiers on frozen embeddings, as scikit-learn estimators (README, "How it is built").

``fit(X, Y, X_val=None, Y_val=None)`` returns self; ``predict_proba(X)`` gives (n, 6) float64
probabilities and ``decision_function(X)`` the (n, 6) logits.

- :class:`KerasMLPClassifier`: Google's data-efficient head on foundation-model embeddings.
- :class:`LogisticProbe`: one L2 logistic regression per label on that label's observed rows,
  weights exported as plain numbers (``to_dict`` / ``from_dict``): no pickle.

Keras and scikit-learn are imported at the top: this module is only loaded to train or to load
a model (``import woundscore`` has loaded Keras already, to register the loss).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any, Callable, Sequence

import keras  # torch backend: chosen by woundscore.classify's __init__ (_backend) before this
import numpy as np
from scipy.special import expit  # overflow-free sigmoid
from sklearn.base import BaseEstimator

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, MISSING, training_pos_weight
from woundscore.classify.loss import MaskedBCE
from woundscore.classify.metrics import macro_auc, roc_auc


class NotFittedError(WoundscoreError, RuntimeError):
    """predict_proba before fit."""


class ClassifierInputError(WoundscoreError, ValueError):
    """X or Y with the wrong shape, dtype or values; the message names the argument and value."""


def _check_xy(X: Any, Y: Any | None, *, name: str = "X", n_features: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    X = np.asarray(X)
    if X.ndim != 2:
        raise ClassifierInputError(f"{name} must be (n, d), got shape {X.shape}")
    if n_features is not None and X.shape[1] != n_features:
        raise ClassifierInputError(f"{name} has {X.shape[1]} features, the model was fitted on {n_features}")
    X = X.astype(np.float32, copy=False)
    if not np.isfinite(X).all():
        bad = np.argwhere(~np.isfinite(X))[0]
        raise ClassifierInputError(f"{name} has a non-finite value at row {bad[0]}, column {bad[1]}")
    if Y is None:
        return X, None
    yname = "Y" if name == "X" else name.replace("X", "Y")
    Y = np.asarray(Y)
    if Y.shape != (X.shape[0], len(LABEL_NAMES)):
        raise ClassifierInputError(f"{yname} must be ({X.shape[0]}, {len(LABEL_NAMES)}), got {Y.shape}")
    bad = ~np.isin(Y, (0, 1, MISSING))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise ClassifierInputError(f"{yname} row {i}, label {LABEL_NAMES[j]!r}: value {Y[i, j].item()!r} is not 1, 0 or -1")
    return X, Y.astype(np.int8)


def _check_fit_args(X: Any, Y: Any, X_val: Any, Y_val: Any) -> tuple[np.ndarray, ...]:
    X, Y = _check_xy(X, Y)
    if (X_val is None) != (Y_val is None):
        raise ClassifierInputError("pass both X_val and Y_val, or neither")
    if X_val is not None:
        X_val, Y_val = _check_xy(X_val, Y_val, name="X_val", n_features=X.shape[1])
    if X.shape[0] == 0:
        raise ClassifierInputError("X has no rows")
    return X, Y, X_val, Y_val


def build_mlp(n_features: int, *, hidden: Sequence[int] = (512, 256), dropout: Sequence[float] = (0.05, 0.10),
              l2: float = 1e-5, n_labels: int = len(LABEL_NAMES), name: str = "woundscore_mlp") -> keras.Model:
    """The Keras model (uncompiled): (n, n_features) embeddings -> (n, n_labels) LOGITS (no sigmoid)."""
    layers: list[Any] = [keras.Input(shape=(n_features,), name="embedding")]
    for i, (units, rate) in enumerate(zip(hidden, dropout)):
        reg = keras.regularizers.L2(l2) if l2 else None
        layers.append(keras.layers.Dense(units, activation="relu", kernel_regularizer=reg,
                                         bias_regularizer=reg, name=f"dense_{i}"))
        layers.append(keras.layers.Dropout(rate, name=f"dropout_{i}"))
    layers.append(keras.layers.Dense(n_labels, name="logits"))
    return keras.Sequential(layers, name=name)


def _best(history: list[dict], monitor: str) -> tuple[int, float]:
    """(1-based epoch, value) of the best record so far: EarlyStopping's choice (the first of
    equal values: it needs a strict improvement)."""
    if monitor == "none":
        return len(history), math.nan
    values = [h[monitor] for h in history]
    k = int(np.argmax(values) if monitor == "val_macro_auc" else np.argmin(values))
    return k + 1, float(values[k])


class EpochRecorder(keras.callbacks.Callback):
    """Per epoch: logs ``val_macro_auc`` (masked macro ROC AUC of the validation logits; None when
    not estimable) for EarlyStopping, keeps the history record, and calls ``on_epoch``.

    Must come before EarlyStopping in ``callbacks``: Keras hands all callbacks one ``logs`` dict.
    """

    def __init__(self, X_val: np.ndarray | None, Y_val: np.ndarray | None, monitor: str,
                 on_epoch: Callable[[dict], None] | None = None) -> None:
        super().__init__()
        self.X_val, self.Y_val, self.monitor, self.on_epoch = X_val, Y_val, monitor, on_epoch
        self.history: list[dict] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs if logs is not None else {}
        rec: dict[str, Any] = {"epoch": epoch + 1, "loss": float(logs["loss"])}
        if self.X_val is not None:
            auc = macro_auc(self.Y_val, self.model.predict_on_batch(self.X_val))  # AUC: logits suffice
            if auc is not None:
                logs["val_macro_auc"] = auc
            rec.update(val_loss=float(logs["val_loss"]), val_macro_auc=auc)
        rec["seconds"] = time.perf_counter() - self._t0
        self.history.append(rec)
        if self.on_epoch is not None:
            self.on_epoch(dict(rec, best_epoch=_best(self.history, self.monitor)[0], monitor=self.monitor))


class KerasMLPClassifier(BaseEstimator):
    """Keras MLP on embeddings: Dense(512, relu) -> Dropout(0.05) -> Dense(256, relu) ->
    Dropout(0.10) -> Dense(6), L2 on the hidden kernels and biases, masked pos_weight BCE.

    The Keras model outputs LOGITS (README, "How it is built"); :meth:`predict_proba` applies the sigmoid.

    Args:
        hidden, dropout, l2: architecture (defaults: Google's data-efficient classifier head).
        learning_rate, batch_size: ``keras.optimizers.Adam`` step size and mini-batch rows.
        max_epochs: upper bound of passes over the training rows.
        patience: ``EarlyStopping`` patience (epochs without a better validation macro AUC).
        seed: ``keras.utils.set_random_seed`` (weights, dropout, shuffling): same seed, same
            data, same machine -> same probabilities.
        n_threads: torch intra-op threads while fitting (restored after; None: leave torch's
            setting). Default 1: the matmuls are too small to gain from a second thread, and
            spinning OpenMP threads turn a busy 2-core laptop into a 10x slowdown.
        on_epoch: called with each epoch's history record plus ``best_epoch`` and ``monitor``.
        n_members: 1 = one MLP. k > 1 = a seed ensemble (classify.ensemble): k members, each with
            its own initial weights, dropout and row order, trained in one Keras fit, each
            early-stopped on its own validation macro AUC; ``model_`` outputs the mean of their
            logits (one plain Keras model, saved as one model.keras).

    Fitted attributes: ``model_`` (keras.Model, compiled with Adam and ``MaskedBCE``),
    ``pos_weight_`` (6,), ``history_`` (per-epoch dicts: epoch, loss and val_loss (Keras's: masked
    BCE + L2 penalty), val_macro_auc, seconds), ``best_epoch_`` (1-based; its weights are
    restored), ``best_score_`` (the monitored value there), ``monitor_`` ("val_macro_auc";
    "val_loss" when no validation label has both classes; "none" without validation data: then
    all ``max_epochs`` run), ``n_features_in_``, ``fit_seconds_``.
    """

    def __init__(self, hidden: Sequence[int] = (512, 256), dropout: Sequence[float] = (0.05, 0.10), l2: float = 1e-5,
                 learning_rate: float = 1e-4, batch_size: int = 32, max_epochs: int = 300, patience: int = 25,
                 seed: int = 0, n_threads: int | None = 1, on_epoch: Callable[[dict], None] | None = None,
                 n_members: int = 1) -> None:
        self.hidden = hidden
        self.dropout = dropout
        self.l2 = l2
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.patience = patience
        self.seed = seed
        self.n_threads = n_threads
        self.on_epoch = on_epoch
        self.n_members = n_members

    def fit(self, X: Any, Y: Any, X_val: Any = None, Y_val: Any = None) -> "KerasMLPClassifier":
        """Train on (n, d) embeddings ``X`` and (n, 6) labels ``Y`` (1 / 0 / -1) with
        ``model.fit``; (X_val, Y_val) drive EarlyStopping (best weights restored)."""
        import torch  # Keras's backend; only for the thread setting

        t_start = time.perf_counter()
        X, Y, X_val, Y_val = _check_fit_args(X, Y, X_val, Y_val)
        if int(self.batch_size) < 1 or int(self.max_epochs) < 1 or int(self.n_members) < 1:
            raise ClassifierInputError(f"batch_size, max_epochs and n_members must be >= 1, got {self.batch_size}, "
                                       f"{self.max_epochs}, {self.n_members}")
        if int(self.n_members) > 1:
            return self._fit_ensemble(X, Y, X_val, Y_val, t_start)
        monitor = "none" if X_val is None else "val_loss"
        if X_val is not None and macro_auc(Y_val, np.zeros(Y_val.shape)) is not None:
            monitor = "val_macro_auc"  # some validation label has both classes
        recorder = EpochRecorder(X_val, Y_val, monitor, self.on_epoch)
        callbacks: list[Any] = [recorder]
        if monitor != "none":
            callbacks.append(keras.callbacks.EarlyStopping(monitor=monitor, mode="max" if monitor == "val_macro_auc" else "min",
                                                           patience=int(self.patience), restore_best_weights=True))
        old_threads = torch.get_num_threads()
        if self.n_threads:
            torch.set_num_threads(int(self.n_threads))
        try:
            keras.utils.set_random_seed(int(self.seed))
            pw = training_pos_weight(Y)
            model = build_mlp(X.shape[1], hidden=self.hidden, dropout=self.dropout, l2=self.l2)
            model.compile(optimizer=keras.optimizers.Adam(float(self.learning_rate)), loss=MaskedBCE(pw))
            with warnings.catch_warnings():  # numpy 2 nags about Keras's __array__ (get_weights); harmless
                warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"keras\.")
                model.fit(X, Y.astype(np.float32), batch_size=int(self.batch_size), epochs=int(self.max_epochs),
                          validation_data=None if X_val is None else (X_val, Y_val.astype(np.float32)),
                          callbacks=callbacks, shuffle=True, verbose=0)
        finally:
            torch.set_num_threads(old_threads)
        self.model_, self.pos_weight_, self.monitor_ = model, pw, monitor
        self.history_ = recorder.history
        self.best_epoch_, self.best_score_ = _best(self.history_, monitor)
        self.n_features_in_ = int(X.shape[1])
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def _fit_ensemble(self, X: np.ndarray, Y: np.ndarray, X_val: np.ndarray | None, Y_val: np.ndarray | None,
                      t_start: float) -> "KerasMLPClassifier":
        """n_members > 1: classify.ensemble.fit_members on one row order per member."""
        from woundscore.classify.ensemble import averaging_model, fit_members

        k = int(self.n_members)
        rng = np.random.default_rng([int(self.seed), k])
        orders = [rng.permutation(len(X)) for _ in range(k)]  # each member meets the rows in its own batches
        fit = fit_members([X[o] for o in orders], [Y[o] for o in orders], X_val, Y_val, seed=int(self.seed),
                          hidden=self.hidden, dropout=self.dropout, l2=self.l2, learning_rate=self.learning_rate,
                          batch_size=self.batch_size, max_epochs=self.max_epochs, patience=self.patience,
                          n_threads=self.n_threads, on_epoch=self.on_epoch)
        self.model_ = averaging_model(fit.members, X.shape[1])
        self.pos_weight_, self.monitor_, self.history_ = training_pos_weight(Y), fit.monitor, fit.history
        self.member_best_epochs_, self.member_best_scores_ = fit.best_epoch, fit.best_score
        self.best_epoch_ = int(max(fit.best_epoch))  # the last epoch any member kept
        self.n_features_in_ = int(X.shape[1])
        P_val = None if X_val is None else self.decision_function(X_val)
        self.best_score_ = (macro_auc(Y_val, P_val) if P_val is not None and fit.monitor == "val_macro_auc"
                            else math.nan) or math.nan
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def member_proba(self, X: Any) -> np.ndarray:
        """(n, d) -> (m, n, 6) float64: each member's probabilities (m = 1 for a single MLP)."""
        from woundscore.classify.ensemble import member_models

        if not hasattr(self, "model_"):
            raise NotFittedError("KerasMLPClassifier is not fitted: call fit first")
        X, _ = _check_xy(X, None, n_features=self.n_features_in_)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"keras\.")
            return np.stack([expit(m.predict(X, batch_size=1024, verbose=0).astype(np.float64))
                             for m in member_models(self.model_)])

    def decision_function(self, X: Any) -> np.ndarray:
        """(n, d) -> (n, 6) float64 logits: the Keras model's ``predict`` (inference mode)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("KerasMLPClassifier is not fitted: call fit first")
        X, _ = _check_xy(X, None, n_features=self.n_features_in_)
        if X.shape[0] == 0:
            return np.zeros((0, len(LABEL_NAMES)))
        return self.model_.predict(X, batch_size=1024, verbose=0).astype(np.float64)

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) float64 probabilities (sigmoid of the logits)."""
        return expit(self.decision_function(X))

    @classmethod
    def from_keras(cls, model: keras.Model, **params: Any) -> "KerasMLPClassifier":
        """A fitted classifier around a loaded Keras model (artifacts.load_model_dir)."""
        self = cls(**params)
        self.model_ = model
        self.n_features_in_ = int(model.inputs[0].shape[-1])
        return self


class LogisticProbe(BaseEstimator):
    """One L2 logistic regression per label on standardised embeddings (scikit-learn lbfgs).

    Args:
        Cs: inverse regularisation strengths tried per label; with validation data the one with
            the best validation AUC is kept (ties: the first listed), else ``C``.
        C: used when there is no validation data, or a label's validation rows have one class.
        max_iter: lbfgs iterations.
        seed: passed to scikit-learn (lbfgs is deterministic; kept for the common face).

    Fitted attributes: ``mean_``, ``scale_`` (d,) standardisation; ``coef_`` (6, d),
    ``intercept_`` (6,) on standardised inputs; ``C_`` (6,) chosen strengths; ``pos_weight_``;
    ``n_features_in_``; ``notes_`` (label -> note, e.g. a label with one class in training gets
    a constant prediction at its training prevalence).
    """

    def __init__(self, Cs: Sequence[float] = (0.001, 0.01, 0.1, 1.0), C: float = 0.01,
                 max_iter: int = 2000, seed: int = 0) -> None:
        self.Cs = Cs
        self.C = C
        self.max_iter = max_iter
        self.seed = seed

    def fit(self, X: Any, Y: Any, X_val: Any = None, Y_val: Any = None) -> "LogisticProbe":
        """Fit on (n, d) ``X``, (n, 6) ``Y`` (each label on its observed rows).

        BLAS runs on one thread here: the problems are small, and spinning BLAS threads on a
        busy 2-core machine made the fits 4-6x slower (measured).
        """
        from sklearn.preprocessing import StandardScaler
        from threadpoolctl import threadpool_limits

        X, Y, X_val, Y_val = _check_fit_args(X, Y, X_val, Y_val)
        d, L = X.shape[1], len(LABEL_NAMES)
        pw = training_pos_weight(Y)
        coef, intercept, Cs, notes = np.zeros((L, d)), np.zeros(L), np.zeros(L), {}
        with threadpool_limits(limits=1):
            scaler = StandardScaler().fit(X.astype(np.float64))
            Z = scaler.transform(X.astype(np.float64))
            Zv = scaler.transform(X_val.astype(np.float64)) if X_val is not None else None
            for j, name in enumerate(LABEL_NAMES):
                m = Y[:, j] != MISSING
                mv = None if Zv is None else Y_val[:, j] != MISSING
                val = None if Zv is None else (Zv[mv], Y_val[mv, j])
                coef[j], intercept[j], Cs[j], note = self._fit_label(Z[m], Y[m, j], val, float(pw[j]))
                if note:
                    notes[name] = note
        self.mean_ = scaler.mean_.astype(np.float64)
        self.scale_ = scaler.scale_.astype(np.float64)
        self.coef_, self.intercept_, self.C_ = coef, intercept, Cs
        self.pos_weight_, self.n_features_in_, self.notes_ = pw, d, notes
        return self

    def _fit_label(self, Z: np.ndarray, y: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None,
                   pos_weight: float) -> tuple[np.ndarray, float, float, str]:
        """One label: (coef (d,), intercept, C, note) from its observed rows ``Z`` (m, d), ``y`` (m,)."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression

        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos == 0 or n_neg == 0:
            prev = min(max((n_pos + 0.5) / (n_pos + n_neg + 1.0), 1e-6), 1 - 1e-6)
            note = f"training rows have {n_pos} positive and {n_neg} negative: constant prediction {prev:.3f}"
            return np.zeros(Z.shape[1]), math.log(prev / (1 - prev)), math.nan, note
        searched = val is not None and len(np.unique(val[1])) == 2
        best = None
        for c in [float(c) for c in self.Cs] if searched else [float(self.C)]:
            clf = LogisticRegression(C=c, class_weight={0: 1.0, 1: pos_weight}, max_iter=int(self.max_iter),
                                     random_state=int(self.seed))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(Z, y)
            score = (roc_auc(val[1], clf.decision_function(val[0])) or 0.0) if searched else 0.0
            if best is None or score > best[0]:
                best = (score, c, clf)
        _, c, clf = best
        return clf.coef_[0], float(clf.intercept_[0]), c, ""

    def decision_function(self, X: Any) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) float64 logits."""
        if not hasattr(self, "coef_"):
            raise NotFittedError("LogisticProbe is not fitted: call fit first")
        X, _ = _check_xy(X, None, n_features=self.n_features_in_)
        Z = (X.astype(np.float64) - self.mean_) / self.scale_
        return Z @ self.coef_.T + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) float64 probabilities."""
        return expit(self.decision_function(X))

    # JSON weights: plain lists of floats (Python's repr round-trips float64 exactly).
    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "coef_"):
            raise NotFittedError("LogisticProbe is not fitted: call fit first")
        return {"format": "woundscore.logistic_probe", "format_version": 1, "labels": list(LABEL_NAMES),
                "params": {**self.get_params(), "Cs": list(self.Cs)}, "n_features_in": self.n_features_in_,
                "mean": self.mean_.tolist(), "scale": self.scale_.tolist(), "coef": self.coef_.tolist(),
                "intercept": self.intercept_.tolist(), "C": [None if math.isnan(c) else c for c in self.C_],
                "pos_weight": self.pos_weight_.tolist(), "notes": self.notes_}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, origin: str = "probe.json") -> "LogisticProbe":
        if d.get("format") != "woundscore.logistic_probe" or d.get("format_version") != 1:
            raise ClassifierInputError(f"{origin}: not a woundscore logistic probe (format {d.get('format')!r}, "
                                       f"version {d.get('format_version')!r})")
        if list(d.get("labels", [])) != list(LABEL_NAMES):
            raise ClassifierInputError(f"{origin}: labels {d.get('labels')!r} differ from {list(LABEL_NAMES)}")
        self = cls(**dict(d.get("params", {})))
        nf = self.n_features_in_ = int(d["n_features_in"])
        self.mean_, self.scale_, self.coef_, self.intercept_, self.pos_weight_ = (
            np.asarray(d[k], dtype=np.float64) for k in ("mean", "scale", "coef", "intercept", "pos_weight"))
        self.C_ = np.asarray([math.nan if c is None else c for c in d["C"]], dtype=np.float64)
        self.notes_ = dict(d.get("notes", {}))
        L = len(LABEL_NAMES)
        for key, arr, shape in (("mean", self.mean_, (nf,)), ("scale", self.scale_, (nf,)),
                                ("coef", self.coef_, (L, nf)), ("intercept", self.intercept_, (L,))):
            if arr.shape != shape:
                raise ClassifierInputError(f"{origin}: field {key!r} has shape {arr.shape}, expected {shape}")
            if not np.isfinite(arr).all():  # a NaN here would score NaN for every image
                raise ClassifierInputError(f"{origin}: field {key!r} holds non-finite values")
        if (self.scale_ == 0).any():
            raise ClassifierInputError(f"{origin}: field 'scale' holds zeros (it divides the embeddings)")
        return self
