"""The two classifiers on frozen embeddings, with a scikit-learn face.

``__init__`` stores its arguments only; ``fit(X, Y, X_val=None, Y_val=None)`` returns self; fitted
attributes end in ``_``; ``predict_proba(X)`` returns (n, 6) float64 probabilities.

- :class:`KerasMLPClassifier`: Google's data-efficient head on foundation-model embeddings: Dense(512,
  relu, L2 1e-5 on kernel and bias) -> Dropout(0.05) -> Dense(256, relu, L2 1e-5) ->
  Dropout(0.10) -> Dense(6) logits, Adam 1e-4, batch 32, masked pos_weight BCE, early stopping on
  the validation macro ROC AUC with the best weights restored. A real Keras model (saved as
  ``.keras``), trained by a tight torch loop (see ``KerasMLPClassifier.fit``).
- :class:`LogisticProbe`: one L2-regularised logistic regression per label on that label's
  observed rows (scikit-learn, standardised inputs, class weight = pos_weight), weights exported
  as plain numbers (``to_dict`` / ``from_dict``): no pickle.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import numpy as np

from woundscore.cache.errors import WoundscoreError
from woundscore.cache.schema import LABEL_NAMES, MISSING, pos_weight as schema_pos_weight


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


def training_pos_weight(Y: np.ndarray) -> np.ndarray:
    """(6,) neg/pos over observed training rows (cache.schema.pos_weight); 1.0 where a label has
    no positive (the positive term is empty then, so its weight does not matter)."""
    pw = schema_pos_weight(Y)
    return np.where(np.isfinite(pw), pw, 1.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z, dtype=np.float64)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


# ----------------------------------------------------------------------------------------- MLP


def build_mlp(
    n_features: int,
    *,
    hidden: Sequence[int] = (512, 256),
    dropout: Sequence[float] = (0.05, 0.10),
    l2: float = 1e-5,
    n_labels: int = len(LABEL_NAMES),
) -> Any:
    """The Keras model (uncompiled): (n, n_features) embeddings -> (n, n_labels) logits."""
    from woundscore.classify._keras import import_keras

    keras = import_keras()
    layers: list[Any] = [keras.Input(shape=(n_features,), name="embedding")]
    for i, (units, rate) in enumerate(zip(hidden, dropout)):
        reg = keras.regularizers.L2(l2) if l2 else None
        layers.append(keras.layers.Dense(units, activation="relu", kernel_regularizer=reg,
                                         bias_regularizer=reg, name=f"dense_{i}"))
        layers.append(keras.layers.Dropout(rate, name=f"dropout_{i}"))
    layers.append(keras.layers.Dense(n_labels, name="logits"))
    return keras.Sequential(layers, name="woundscore_mlp")


def _torch_program(model: Any) -> tuple[list[tuple], list[Any], list[tuple[float, Any]]]:
    """The model's layers as plain torch steps over the Keras variables' own torch tensors.

    Returns (steps, trainable parameters, [(l2 factor, tensor)] for the regularisation penalty).
    Same ops as Keras's Dense/Dropout on the torch backend (matmul, add, relu, dropout); a test
    checks the result equals ``model(x)``. Unknown layers are called through Keras.
    """
    from woundscore.classify._keras import import_keras

    keras = import_keras()
    steps: list[tuple] = []
    penalties: list[tuple[float, Any]] = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.Dense):
            act = layer.activation
            act_name = ("relu" if act is keras.activations.relu else
                        "linear" if act is keras.activations.linear else getattr(act, "__name__", repr(act)))
            bias = layer.bias.value if layer.use_bias else None
            steps.append(("dense", layer.kernel.value, bias, act_name))
            for reg, var in ((layer.kernel_regularizer, layer.kernel), (layer.bias_regularizer, layer.bias)):
                if reg is not None and var is not None:
                    cfg = reg.get_config()
                    if set(cfg) != {"l2"}:
                        steps[-1] = ("keras", layer)
                        break
                    penalties.append((float(cfg["l2"]), var.value))
        elif isinstance(layer, keras.layers.Dropout):
            steps.append(("dropout", float(layer.rate)))
        else:
            steps.append(("keras", layer))
    params = [v.value for v in model.trainable_variables]
    return steps, params, penalties


def _run_program(steps: list[tuple], x: Any, training: bool) -> Any:
    import torch
    import torch.nn.functional as F

    for step in steps:
        kind = step[0]
        if kind == "dense":
            _, W, b, act = step
            x = torch.matmul(x, W)
            if b is not None:
                x = x + b
            if act == "relu":
                x = torch.relu(x)
            elif act != "linear":
                raise ClassifierInputError(f"unsupported activation {act!r} in the fast training loop")
        elif kind == "dropout":
            if training and step[1] > 0:
                x = F.dropout(x, step[1], training=True)
        else:
            x = step[1](x, training=training)
    return x


class _KerasAdam:
    """Keras's Adam (keras.optimizers.Adam.update_step) on torch tensors, plus L2 penalties.

    Not ``torch.optim.Adam``: constructing any torch.optim optimizer imports torch._dynamo
    (~2.4 s on a laptop). The update runs in torch's fused CPU Adam kernel (one pass over the
    weights; ~3x faster than foreach ops, measured) with Keras's epsilon: Keras divides by
    ``sqrt(v) + eps`` after folding the bias corrections into the step size, which is torch's
    formula with ``eps / sqrt(1 - beta_2**t)`` (a test checks equality with Keras's Adam).

    ``penalties`` are (l2, weight) pairs of Keras L2 regularisers (loss += l2 * sum(w**2)); their
    gradient 2 * l2 * w is added here (inside the fused kernel) instead of through autograd.
    """

    def __init__(self, params: list[Any], lr: float, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7, penalties: Sequence[tuple[float, Any]] = ()) -> None:
        import torch

        self.params, self.lr, self.b1, self.b2, self.eps = params, lr, beta_1, beta_2, epsilon
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.iterations = 0
        self._steps = [torch.zeros((), dtype=torch.float32) for _ in params]
        self._fused = hasattr(torch, "_fused_adam_") and all(p.device.type == "cpu" for p in params)
        # parameters grouped by their L2 gradient factor 2 * l2 (0 for unregularised ones)
        factor = {id(w): 2.0 * float(f) for f, w in penalties}
        groups: dict[float, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(factor.get(id(p), 0.0), []).append(i)
        self._groups = sorted(groups.items())

    def step(self) -> None:
        import torch

        self.iterations += 1
        t = self.iterations
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
            if self._fused:
                torch._foreach_add_(self._steps, 1.0)
                eps = self.eps / math.sqrt(1 - self.b2**t)
                # The kernel's (non-decoupled) weight_decay adds wd * w to the gradient: with
                # wd = 2 * l2 that is the L2 regulariser's gradient, fused into the same pass.
                for wd, idx in self._groups:
                    torch._fused_adam_([self.params[i] for i in idx], [grads[i] for i in idx],
                                       [self.m[i] for i in idx], [self.v[i] for i in idx], [],
                                       [self._steps[i] for i in idx], lr=self.lr, beta1=self.b1,
                                       beta2=self.b2, weight_decay=wd, eps=eps, amsgrad=False, maximize=False)
                return
            for wd, idx in self._groups:  # d/dw of l2 * sum(w^2) = 2 * l2 * w
                if wd:
                    torch._foreach_add_([grads[i] for i in idx], [self.params[i] for i in idx], alpha=wd)
            alpha = self.lr * math.sqrt(1 - self.b2**t) / (1 - self.b1**t)
            torch._foreach_lerp_(self.m, grads, 1 - self.b1)  # m += (g - m)(1 - b1)
            torch._foreach_lerp_(self.v, torch._foreach_mul(grads, grads), 1 - self.b2)
            denom = torch._foreach_sqrt(self.v)
            torch._foreach_add_(denom, self.eps)
            torch._foreach_addcdiv_(self.params, self.m, denom, value=-alpha)  # w -= alpha m / (sqrt(v) + eps)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def to_keras(self, keras: Any, model: Any) -> Any:
        """A built keras.optimizers.Adam holding this state (saved in model.keras, so a later
        ``model.fit`` continues where this loop stopped)."""
        opt = keras.optimizers.Adam(self.lr, beta_1=self.b1, beta_2=self.b2, epsilon=self.eps)
        opt.build(model.trainable_variables)
        opt.iterations.assign(self.iterations)
        for slot, ours in ((getattr(opt, "_momentums", None), self.m), (getattr(opt, "_velocities", None), self.v)):
            if slot is not None and len(slot) == len(ours):
                for var, val in zip(slot, ours):
                    var.assign(val)
        return opt


class KerasMLPClassifier:
    """Keras MLP on embeddings, masked pos_weight BCE, early stopping on validation macro AUC.

    Args:
        hidden, dropout, l2: architecture (defaults: Google's data-efficient classifier head).
        learning_rate, batch_size: Adam step size and mini-batch rows.
        max_epochs: upper bound of passes over the training rows.
        patience: stop after this many epochs without a better validation macro AUC.
        seed: seeds Keras, torch and numpy (weights, dropout, shuffling): same seed, same data,
            same machine -> same probabilities.
        n_threads: torch intra-op threads while fitting (restored after; None: leave torch's
            setting). Default 1: the model's matmuls are too small to gain from a second thread,
            and OpenMP threads that spin-wait turn a busy 2-core laptop into a 10x slowdown.
        on_epoch: called with each epoch's history record (progress printing).

    Fitted attributes: ``model_`` (keras.Model, logits out, compiled with ``MaskedBCE``),
    ``pos_weight_`` (6,), ``history_`` (list of per-epoch dicts: epoch, loss (mean masked BCE of
    the epoch's batches, L2 penalty not included), val_loss, val_macro_auc, seconds), ``best_epoch_`` (1-based), ``best_score_``, ``n_features_in_``,
    ``monitor_`` ("val_macro_auc", "val_loss" when no validation label has both classes, or
    "none" without validation data: then all ``max_epochs`` run), ``fit_seconds_``.
    """

    def __init__(
        self,
        hidden: Sequence[int] = (512, 256),
        dropout: Sequence[float] = (0.05, 0.10),
        l2: float = 1e-5,
        learning_rate: float = 1e-4,
        batch_size: int = 32,
        max_epochs: int = 300,
        patience: int = 25,
        seed: int = 0,
        n_threads: int | None = 1,
        on_epoch: Callable[[dict], None] | None = None,
    ) -> None:
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

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("hidden", "dropout", "l2", "learning_rate", "batch_size",
                                              "max_epochs", "patience", "seed", "n_threads")}

    def fit(self, X: Any, Y: Any, X_val: Any = None, Y_val: Any = None) -> "KerasMLPClassifier":
        """Train on (n, d) embeddings ``X`` and (n, 6) labels ``Y`` (1 / 0 / -1).

        Early stopping watches (X_val, Y_val); the best epoch's weights are restored (the saved
        optimizer state is the last epoch's). The loop is plain torch over the Keras model's own
        variables (one matmul/add/relu/dropout per layer, Keras's Adam rule with the L2
        regularisers' gradient in torch's fused Adam kernel), because Keras's per-step machinery
        costs more than this small model's maths (``bench/bench_train.py --compare-fit``); tests
        check the forward pass against ``model(x)`` and the update against ``keras.optimizers.Adam``.
        Seeding goes through ``keras.utils.set_random_seed`` (Python, numpy and torch global RNGs).
        """
        t_start = time.perf_counter()
        X, Y = _check_xy(X, Y)
        if X_val is not None or Y_val is not None:
            if X_val is None or Y_val is None:
                raise ClassifierInputError("pass both X_val and Y_val, or neither")
            X_val, Y_val = _check_xy(X_val, Y_val, name="X_val", n_features=X.shape[1])
        if X.shape[0] == 0:
            raise ClassifierInputError("X has no rows")
        if int(self.batch_size) < 1 or int(self.max_epochs) < 1:
            raise ClassifierInputError(f"batch_size and max_epochs must be >= 1, got {self.batch_size}, {self.max_epochs}")

        from woundscore.classify._keras import import_keras
        from woundscore.classify.loss import MaskedBCE, masked_bce
        from woundscore.classify.metrics import macro_auc

        keras = import_keras()
        import torch

        old_threads = torch.get_num_threads()
        if self.n_threads:
            torch.set_num_threads(int(self.n_threads))
        try:
            keras.utils.set_random_seed(int(self.seed))
            pw = training_pos_weight(Y)
            model = build_mlp(X.shape[1], hidden=self.hidden, dropout=self.dropout, l2=self.l2)
            steps, params, penalties = _torch_program(model)
            opt = _KerasAdam(params, float(self.learning_rate), penalties=penalties)
            pw_t = torch.as_tensor(pw, dtype=torch.float32)
            Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y.astype(np.float32))
            if X_val is not None:
                Xv, Yv = torch.from_numpy(X_val), torch.from_numpy(Y_val.astype(np.float32))
                monitor = "val_macro_auc" if macro_auc(Y_val, np.zeros(Y_val.shape)) is not None else "val_loss"
            else:
                monitor = "none"
            rng = np.random.default_rng(int(self.seed))
            n, bs = X.shape[0], int(self.batch_size)
            history: list[dict] = []
            best_score, best_epoch, best_state, waited = -math.inf, 0, None, 0
            for epoch in range(1, int(self.max_epochs) + 1):
                t0 = time.perf_counter()
                perm = torch.from_numpy(rng.permutation(n))
                total, batches = 0.0, 0
                for start in range(0, n, bs):
                    idx = perm[start : start + bs]
                    logits = _run_program(steps, Xt[idx], True)
                    loss = masked_bce(Yt[idx], logits, pw_t)  # (+ L2 penalties, added by opt.step)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach())
                    batches += 1
                rec: dict[str, Any] = {"epoch": epoch, "loss": total / batches}
                if X_val is not None:
                    with torch.no_grad():
                        vlogits = _run_program(steps, Xv, False)
                        rec["val_loss"] = float(masked_bce(Yv, vlogits, pw_t))
                        rec["val_macro_auc"] = macro_auc(Y_val, torch.sigmoid(vlogits).numpy())
                    score = rec["val_macro_auc"] if monitor == "val_macro_auc" else -rec["val_loss"]
                    if score > best_score:
                        best_score, best_epoch, waited = score, epoch, 0
                        best_state = [p.detach().clone() for p in params]
                    else:
                        waited += 1
                rec["seconds"] = time.perf_counter() - t0
                history.append(rec)
                if self.on_epoch is not None:
                    self.on_epoch(dict(rec, best_epoch=best_epoch, monitor=monitor))
                if monitor != "none" and waited >= int(self.patience):
                    break
            if best_state is not None:
                with torch.no_grad():
                    for p, b in zip(params, best_state):
                        p.copy_(b)
            else:
                best_epoch, best_score = len(history), math.nan
            # Compiled so the .keras file records how it was trained (and can be trained on).
            model.compile(optimizer=opt.to_keras(keras, model), loss=MaskedBCE(pw))
        finally:
            torch.set_num_threads(old_threads)
        self.model_ = model
        self.pos_weight_ = pw
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.best_score_ = best_score
        self.monitor_ = monitor
        self.n_features_in_ = int(X.shape[1])
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """(n, d) -> (n, 6) float64 logits, computed by the Keras model (inference mode)."""
        if not hasattr(self, "model_"):
            raise NotFittedError("KerasMLPClassifier is not fitted: call fit first")
        X, _ = _check_xy(X, None, n_features=self.n_features_in_)
        return keras_logits(self.model_, X)

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) float64 probabilities (sigmoid of the logits)."""
        return _sigmoid(self.decision_function(X))

    @classmethod
    def from_keras(cls, model: Any, **params: Any) -> "KerasMLPClassifier":
        """A fitted classifier around a loaded Keras model (artifacts.load_model_dir)."""
        self = cls(**params)
        self.model_ = model
        self.n_features_in_ = int(model.inputs[0].shape[-1])
        return self


def keras_logits(model: Any, X: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """Run a Keras model (torch backend) on (n, d) float32 rows in inference mode -> float64."""
    import torch

    out = []
    with torch.no_grad():
        for start in range(0, X.shape[0], chunk):
            xt = torch.from_numpy(np.ascontiguousarray(X[start : start + chunk], dtype=np.float32))
            out.append(model(xt, training=False).detach().cpu().numpy())
    if not out:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype=np.float64)
    return np.concatenate(out).astype(np.float64)


# ----------------------------------------------------------------------------------------- probe


class LogisticProbe:
    """One L2 logistic regression per label on standardised embeddings (scikit-learn lbfgs).

    Args:
        Cs: inverse regularisation strengths tried per label; with validation data the one with
            the best validation AUC is kept (ties: the stronger regularisation), else ``C``.
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

    def get_params(self) -> dict[str, Any]:
        return {"Cs": list(self.Cs), "C": self.C, "max_iter": self.max_iter, "seed": self.seed}

    def fit(self, X: Any, Y: Any, X_val: Any = None, Y_val: Any = None) -> "LogisticProbe":
        """Fit on (n, d) ``X``, (n, 6) ``Y`` (each label on its observed rows).

        BLAS runs on one thread here: the problems are small, and spinning BLAS threads on a
        busy 2-core machine made the fits 4-6x slower (measured).
        """
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return self._fit(X, Y, X_val, Y_val)

    def _fit(self, X: Any, Y: Any, X_val: Any, Y_val: Any) -> "LogisticProbe":
        import warnings

        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        from woundscore.classify.metrics import roc_auc

        X, Y = _check_xy(X, Y)
        if (X_val is None) != (Y_val is None):
            raise ClassifierInputError("pass both X_val and Y_val, or neither")
        if X_val is not None:
            X_val, Y_val = _check_xy(X_val, Y_val, name="X_val", n_features=X.shape[1])
        scaler = StandardScaler().fit(X.astype(np.float64))
        Z = scaler.transform(X.astype(np.float64))
        Zv = scaler.transform(X_val.astype(np.float64)) if X_val is not None else None
        pw = training_pos_weight(Y)
        d = X.shape[1]
        coef = np.zeros((len(LABEL_NAMES), d))
        intercept = np.zeros(len(LABEL_NAMES))
        Cs = np.zeros(len(LABEL_NAMES))
        notes: dict[str, str] = {}
        for j, name in enumerate(LABEL_NAMES):
            m = Y[:, j] != MISSING
            y = Y[m, j]
            n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
            if n_pos == 0 or n_neg == 0:
                prev = min(max((n_pos + 0.5) / (n_pos + n_neg + 1.0), 1e-6), 1 - 1e-6)
                intercept[j] = math.log(prev / (1 - prev))
                Cs[j] = math.nan
                notes[name] = f"training rows have {n_pos} positive and {n_neg} negative: constant prediction {prev:.3f}"
                continue
            candidates = [float(c) for c in self.Cs] if Zv is not None else [float(self.C)]
            mv = None if Zv is None else Y_val[:, j] != MISSING
            if mv is not None and len(np.unique(Y_val[mv, j])) < 2:
                candidates = [float(self.C)]
            best = None
            for c in candidates:
                clf = LogisticRegression(C=c, class_weight={0: 1.0, 1: float(pw[j])}, max_iter=int(self.max_iter),
                                         random_state=int(self.seed))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    clf.fit(Z[m], y)
                score = 0.0
                if len(candidates) > 1:
                    score = roc_auc(Y_val[mv, j], clf.decision_function(Zv[mv])) or 0.0
                if best is None or score > best[0]:
                    best = (score, c, clf)
            _, c, clf = best
            coef[j], intercept[j], Cs[j] = clf.coef_[0], clf.intercept_[0], c
        self.mean_ = scaler.mean_.astype(np.float64)
        self.scale_ = scaler.scale_.astype(np.float64)
        self.coef_, self.intercept_, self.C_ = coef, intercept, Cs
        self.pos_weight_ = pw
        self.n_features_in_ = d
        self.notes_ = notes
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise NotFittedError("LogisticProbe is not fitted: call fit first")
        X, _ = _check_xy(X, None, n_features=self.n_features_in_)
        Z = (X.astype(np.float64) - self.mean_) / self.scale_
        return Z @ self.coef_.T + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        """(n, d) embeddings -> (n, 6) float64 probabilities."""
        return _sigmoid(self.decision_function(X))

    # JSON weights: plain lists of floats (Python's repr round-trips float64 exactly).
    def to_dict(self) -> dict[str, Any]:
        if not hasattr(self, "coef_"):
            raise NotFittedError("LogisticProbe is not fitted: call fit first")
        return {
            "format": "woundscore.logistic_probe",
            "format_version": 1,
            "labels": list(LABEL_NAMES),
            "params": self.get_params(),
            "n_features_in": self.n_features_in_,
            "mean": self.mean_.tolist(),
            "scale": self.scale_.tolist(),
            "coef": self.coef_.tolist(),
            "intercept": self.intercept_.tolist(),
            "C": [None if math.isnan(c) else c for c in self.C_],
            "pos_weight": self.pos_weight_.tolist(),
            "notes": self.notes_,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, origin: str = "probe.json") -> "LogisticProbe":
        if d.get("format") != "woundscore.logistic_probe" or d.get("format_version") != 1:
            raise ClassifierInputError(f"{origin}: not a woundscore logistic probe (format {d.get('format')!r}, "
                                       f"version {d.get('format_version')!r})")
        if list(d.get("labels", [])) != list(LABEL_NAMES):
            raise ClassifierInputError(f"{origin}: labels {d.get('labels')!r} differ from {list(LABEL_NAMES)}")
        params = dict(d.get("params", {}))
        self = cls(**params)
        nf = int(d["n_features_in"])
        self.n_features_in_ = nf
        self.mean_ = np.asarray(d["mean"], dtype=np.float64)
        self.scale_ = np.asarray(d["scale"], dtype=np.float64)
        self.coef_ = np.asarray(d["coef"], dtype=np.float64)
        self.intercept_ = np.asarray(d["intercept"], dtype=np.float64)
        self.C_ = np.asarray([math.nan if c is None else c for c in d["C"]], dtype=np.float64)
        self.pos_weight_ = np.asarray(d["pos_weight"], dtype=np.float64)
        self.notes_ = dict(d.get("notes", {}))
        L = len(LABEL_NAMES)
        for key, arr, shape in (("mean", self.mean_, (nf,)), ("scale", self.scale_, (nf,)),
                                ("coef", self.coef_, (L, nf)), ("intercept", self.intercept_, (L,))):
            if arr.shape != shape:
                raise ClassifierInputError(f"{origin}: field {key!r} has shape {arr.shape}, expected {shape}")
        return self


__all__ = [
    "ClassifierInputError",
    "LogisticProbe",
    "KerasMLPClassifier",
    "NotFittedError",
    "build_mlp",
    "keras_logits",
    "training_pos_weight",
]
