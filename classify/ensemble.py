"""Several MLP heads trained in ONE Keras ``fit``: a seed ensemble, or the learning curve's repeats.

Each member is :func:`woundscore.classify.models.build_mlp` (Google's head) with its own weights,
dropout masks, row order, training rows and ``pos_weight``. They train side by side as slices of
stacked weights (:class:`StackedDense`: one kernel (k, d_in, units) per layer); the training loss
is the SUM of the members' masked BCE losses, so every member's gradient is exactly the one it
would get alone (its slice enters only its own loss term; Adam works per element). Each member early-stops on its own
validation macro AUC with Keras ``EarlyStopping``'s rule (strict improvement, ``patience``
epochs) and gets its best epoch's weights back; a member whose patience has run out is frozen
in the record (later epochs cannot change its result). What is shared is Keras's per-step and
per-variable machinery, which dominates the cost on small data (bench/RESULTS.md: ~10 ms per step).

:func:`averaging_model` wires the members into one plain Keras model (``Input -> members ->
Average``) whose output is the mean of the members' LOGITS: saved as one ``model.keras`` it
loads with ``keras.saving.load_model`` and no ``custom_objects`` (only built-in layers).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import keras
import numpy as np

from woundscore.cache.schema import MISSING, training_pos_weight
from woundscore.classify.loss import masked_bce
from woundscore.classify.metrics import macro_auc

MEMBER_PREFIX = "member_"


class SumOfMemberBCE(keras.losses.Loss):
    """Sum over members of :func:`masked_bce`: y_true, logits (n, k, 6); pos_weight (k, 6).
    Training-time only (never saved)."""

    def __init__(self, pos_weight: np.ndarray) -> None:
        super().__init__(name="sum_of_member_bce")
        self.pos_weight = np.asarray(pos_weight, dtype=np.float32)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return sum(masked_bce(y_true[:, r], y_pred[:, r], self.pos_weight[r]) for r in range(len(self.pos_weight)))


def _np_bce(Y: np.ndarray, Z: np.ndarray, pw: np.ndarray) -> float:
    """masked_bce in numpy (val loss for the fallback monitor): Y, Z (n, 6), pw (6,)."""
    obs = Y != MISSING
    y = np.where(obs, Y, 0)
    per = pw * y * np.logaddexp(0, -Z) + (1 - y) * np.logaddexp(0, Z)
    return float(per[obs].sum() / max(obs.sum(), 1))


@dataclass
class MemberFit:
    """What :func:`fit_members` did. ``members``: k fitted Keras models (n, d) -> (n, 6) logits."""

    members: list
    pos_weight: np.ndarray  # (k, 6)
    monitor: str  # "val_macro_auc", "val_loss" or "none"
    best_epoch: list[int]  # per member, 1-based
    best_score: list[float]  # per member, the monitored value there (nan for "none")
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0


class StackedDense(keras.layers.Layer):
    """k Dense layers side by side: (n, k, d_in) -> (n, k, units), member r's kernel (d_in, units)
    and bias (units,) at index r. Glorot-uniform per member (Dense's default), L2 on both.
    One variable pair for all members: Keras's per-variable optimizer loop and per-op overhead
    stay those of one MLP (training only; members are saved as plain Dense layers)."""

    def __init__(self, k: int, units: int, l2: float = 0.0, activation: str | None = None, **kw: Any) -> None:
        super().__init__(**kw)
        self.k, self.units, self.l2, self.activation = k, units, l2, keras.activations.get(activation)

    def build(self, input_shape: tuple) -> None:
        d = int(input_shape[-1])
        limit = float(np.sqrt(6.0 / (d + self.units)))
        reg = keras.regularizers.L2(self.l2) if self.l2 else None
        self.kernel = self.add_weight(shape=(self.k, d, self.units), regularizer=reg, name="kernel",
                                      initializer=keras.initializers.RandomUniform(-limit, limit))
        self.bias = self.add_weight(shape=(self.k, self.units), initializer="zeros", regularizer=reg, name="bias")

    def call(self, x: Any) -> Any:
        return self.activation(keras.ops.einsum("nkd,kdu->nku", x, self.kernel) + self.bias)


def _stacked_mlp(k: int, d: int, hidden: Sequence[int], dropout: Sequence[float], l2: float) -> keras.Model:
    """build_mlp's architecture for k members at once: (n, k, d) -> (n, k, 6) logits."""
    layers: list[Any] = [keras.Input(shape=(k, d))]
    for units, rate in zip(hidden, dropout):
        layers += [StackedDense(k, units, l2, "relu"), keras.layers.Dropout(rate)]  # masks differ per member
    return keras.Sequential(layers + [StackedDense(k, 6)], name="members_trainer")


def _member_weights(weights: list[np.ndarray], r: int) -> list[np.ndarray]:
    """Member r's weights in build_mlp's order (kernel, bias per Dense) from the stacked ones."""
    return [w[r] for w in weights]


class _PerMemberStopping(keras.callbacks.Callback):
    """EarlyStopping's rule per member, with its best weights kept; stops when all are done."""

    def __init__(self, k: int, X_val: np.ndarray | None, Y_val: np.ndarray | None, pw: np.ndarray,
                 monitor: str, patience: int, on_epoch: Callable[[dict], None] | None) -> None:
        super().__init__()
        self.k, self.X_val, self.Y_val, self.pw = k, X_val, Y_val, pw
        self.monitor, self.patience, self.on_epoch = monitor, patience, on_epoch
        self.best = [-np.inf] * k
        self.best_epoch, self.wait, self.done = [0] * k, [0] * k, [False] * k
        self.best_weights: list = [None] * k
        self.history: list[dict] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def _scores(self) -> tuple[list[float], float | None]:
        """Per member: the monitored value, higher is better; and the mean-logit ensemble's val AUC."""
        if self.monitor == "none":
            return [0.0] * self.k, None
        Xs = np.broadcast_to(self.X_val[:, None, :], (len(self.X_val), self.k, self.X_val.shape[1]))
        Z = np.asarray(self.model.predict_on_batch(np.ascontiguousarray(Xs)), np.float64).transpose(1, 0, 2)
        if self.monitor == "val_macro_auc":
            return [macro_auc(self.Y_val, z) or -np.inf for z in Z], macro_auc(self.Y_val, Z.mean(0))
        return [-_np_bce(self.Y_val, z, pw) for z, pw in zip(Z, self.pw)], None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        with warnings.catch_warnings():  # numpy 2 nags about Keras's __array__ (get_weights); harmless
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"keras\.")
            self._epoch_end(epoch, logs)

    def _epoch_end(self, epoch: int, logs: dict | None) -> None:
        scores, ens = self._scores()
        weights = None
        for r, s in enumerate(scores):
            if self.done[r]:
                continue
            if s > self.best[r] or self.monitor == "none":
                weights = self.model.get_weights() if weights is None else weights
                self.best[r], self.best_epoch[r], self.wait[r] = s, epoch + 1, 0
                self.best_weights[r] = _member_weights(weights, r)
            else:
                self.wait[r] += 1
                self.done[r] = self.wait[r] >= self.patience
        rec = {"epoch": epoch + 1, "loss": float((logs or {}).get("loss", np.nan)),
               "member_scores": [float(s) for s in scores], "members_done": int(sum(self.done)),
               "val_macro_auc": ens, "seconds": time.perf_counter() - self._t0}
        self.history.append(rec)
        if self.on_epoch is not None:
            self.on_epoch(dict(rec, monitor=self.monitor))
        if all(self.done):
            self.model.stop_training = True


def fit_members(Xs: Sequence[np.ndarray], Ys: Sequence[np.ndarray], X_val: np.ndarray | None,
                Y_val: np.ndarray | None, *, seed: int = 0, hidden: Sequence[int] = (512, 256),
                dropout: Sequence[float] = (0.05, 0.10), l2: float = 1e-5, learning_rate: float = 1e-4,
                batch_size: int = 32, max_epochs: int = 300, patience: int = 25, n_threads: int | None = 1,
                on_epoch: Callable[[dict], None] | None = None) -> MemberFit:
    """Train k = len(Xs) MLP members in one ``model.fit``.

    Args:
        Xs: k arrays (n, d) float32, the SAME n (row i of every member is one training step's row);
            Ys: k arrays (n, 6) int8 1 / 0 / -1. Member r trains on (Xs[r], Ys[r]).
        X_val, Y_val: (m, d), (m, 6) shared validation rows (early stopping), or None.
        seed: ``keras.utils.set_random_seed`` before the members are built (each draws its own
            initial weights and dropout masks from it). Other arguments: as KerasMLPClassifier.
    Returns:
        MemberFit whose ``members`` are plain build_mlp models holding each member's best weights.
    """
    import torch

    from woundscore.classify.models import build_mlp

    t0 = time.perf_counter()
    k, d = len(Xs), Xs[0].shape[1]
    pw = np.stack([training_pos_weight(Y) for Y in Ys])
    monitor = "none" if X_val is None else "val_loss"
    if X_val is not None and macro_auc(Y_val, np.zeros(Y_val.shape)) is not None:
        monitor = "val_macro_auc"
    old_threads = torch.get_num_threads()
    if n_threads:
        torch.set_num_threads(int(n_threads))
    try:
        keras.utils.set_random_seed(int(seed))
        trainer = _stacked_mlp(k, d, hidden, dropout, l2)
        trainer.compile(optimizer=keras.optimizers.Adam(float(learning_rate)), loss=SumOfMemberBCE(pw))
        stopper = _PerMemberStopping(k, X_val, Y_val, pw, monitor, int(patience), on_epoch)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"keras\.")
            trainer.fit(np.stack(Xs, axis=1), np.stack(Ys, axis=1).astype(np.float32), batch_size=int(batch_size),
                        epochs=int(max_epochs), callbacks=[stopper], shuffle=True, verbose=0)
            members = []
            for r in range(k):
                m = build_mlp(d, hidden=hidden, dropout=dropout, l2=l2, name=f"{MEMBER_PREFIX}{r}")
                m.set_weights(stopper.best_weights[r] or _member_weights(trainer.get_weights(), r))
                members.append(m)
    finally:
        torch.set_num_threads(old_threads)
    scores = [float(-s if monitor == "val_loss" else s) if monitor != "none" else float("nan") for s in stopper.best]
    return MemberFit(members=members, pos_weight=pw, monitor=monitor, best_epoch=list(stopper.best_epoch),
                     best_score=scores, history=stopper.history, seconds=time.perf_counter() - t0)


def averaging_model(members: Sequence[Any], n_features: int) -> keras.Model:
    """One Keras model (n, d) -> (n, 6): the mean of the members' logits (built-in layers only)."""
    x = keras.Input(shape=(n_features,), name="embedding")
    outs = [m(x) for m in members]
    y = keras.layers.Average(name="mean_logit")(outs) if len(outs) > 1 else outs[0]
    return keras.Model(x, y, name="woundscore_mlp_ensemble")


def member_models(model: keras.Model) -> list:
    """The member sub-models of an :func:`averaging_model` (loaded or not), in order; [model] otherwise."""
    found = [layer for layer in model.layers if layer.name.startswith(MEMBER_PREFIX)]
    return sorted(found, key=lambda m: int(m.name[len(MEMBER_PREFIX):])) or [model]
