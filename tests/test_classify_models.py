"""KerasMLPClassifier and LogisticProbe: scikit-learn contract (get/set_params, clone), planted
signal learned, seeded reproducibility, Keras EarlyStopping restores the best epoch's weights."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from woundscore.cache.schema import LABEL_NAMES, training_pos_weight
from woundscore.classify.metrics import macro_auc, roc_auc
from woundscore.classify.models import ClassifierInputError, KerasMLPClassifier, LogisticProbe, NotFittedError
from woundscore.classify.synthetic import synthetic_embedding_set

EPOCHS = 40  # enough for the planted signal; the real default is 300 with early stopping


@pytest.fixture(scope="module")
def data():
    es = synthetic_embedding_set(240, 80, 120, dim=32, seed=3, signal=4.0)
    return es.subset("train"), es.subset("val"), es.subset("test")


@pytest.fixture(scope="module")
def mlp(data):
    tr, va, _ = data
    return KerasMLPClassifier(max_epochs=EPOCHS, patience=EPOCHS, seed=0).fit(tr.X, tr.Y, va.X, va.Y)


def test_init_only_stores_arguments() -> None:
    m = KerasMLPClassifier(max_epochs=7, seed=5)
    assert m.max_epochs == 7 and m.seed == 5
    assert not [k for k in vars(m) if k.endswith("_")]
    for cls in (KerasMLPClassifier, LogisticProbe):
        assert set(cls().get_params(deep=True)) == set(inspect.signature(cls).parameters)
    with pytest.raises(NotFittedError, match="KerasMLPClassifier is not fitted: call fit first"):
        m.predict_proba(np.zeros((1, 32), np.float32))
    with pytest.raises(NotFittedError, match="LogisticProbe is not fitted: call fit first"):
        LogisticProbe().predict_proba(np.zeros((1, 32), np.float32))


def test_mlp_learns_the_planted_signal(mlp, data) -> None:
    _, _, te = data
    P = mlp.predict_proba(te.X)
    assert P.shape == (len(te), 6) and P.dtype == np.float64 and ((P > 0) & (P < 1)).all()
    for j, name in enumerate(LABEL_NAMES):
        m = te.Y[:, j] != -1
        assert roc_auc(te.Y[m, j], P[m, j]) > 0.9, name
    assert mlp.n_features_in_ == 32
    assert 1 <= mlp.best_epoch_ <= len(mlp.history_) <= EPOCHS
    assert mlp.monitor_ == "val_macro_auc"
    best = mlp.history_[mlp.best_epoch_ - 1]["val_macro_auc"]
    assert best == max(h["val_macro_auc"] for h in mlp.history_) == mlp.best_score_


def test_best_weights_are_restored(mlp, data) -> None:
    _, va, _ = data
    # the restored model's validation macro AUC is the best epoch's (computed by the Keras model)
    assert macro_auc(va.Y, mlp.predict_proba(va.X)) == pytest.approx(mlp.best_score_, abs=1e-6)


def test_pos_weight_is_neg_over_pos_of_observed_training_rows(mlp, data) -> None:
    tr, _, _ = data
    for j in range(6):
        y = tr.Y[:, j]
        assert mlp.pos_weight_[j] == pytest.approx((y == 0).sum() / (y == 1).sum())
    assert training_pos_weight(np.array([[0] * 6, [-1] * 6])).tolist() == [1.0] * 6


def test_same_seed_same_probabilities_other_seed_differs(data) -> None:
    tr, va, te = data
    fit = lambda seed: KerasMLPClassifier(max_epochs=3, seed=seed).fit(tr.X, tr.Y, va.X, va.Y).predict_proba(te.X)
    a, b, c = fit(11), fit(11), fit(12)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_sklearn_clone_is_unfitted_with_equal_params_and_refits_identically(data) -> None:
    from sklearn.base import clone

    tr, va, te = data
    for est in (KerasMLPClassifier(hidden=(16, 8), max_epochs=3, seed=4, on_epoch=lambda rec: None),
                LogisticProbe(Cs=(0.1, 1.0), seed=2)):
        P = est.fit(tr.X, tr.Y, va.X, va.Y).predict_proba(te.X)
        twin = clone(est)
        assert twin is not est and twin.get_params(deep=True) == est.get_params(deep=True)
        assert not [k for k in vars(twin) if k.endswith("_")]
        np.testing.assert_array_equal(twin.fit(tr.X, tr.Y, va.X, va.Y).predict_proba(te.X), P)
    m = KerasMLPClassifier().set_params(max_epochs=5, hidden=(4,))
    assert m.max_epochs == 5 and m.hidden == (4,)
    with pytest.raises(ValueError, match="Invalid parameter 'epochs'"):
        m.set_params(epochs=3)


def test_history_is_keras_fit_history_and_early_stopping_stops(data) -> None:
    tr, va, _ = data
    seen: list[dict] = []
    m = KerasMLPClassifier(hidden=(16, 8), max_epochs=200, patience=3, learning_rate=1e-2, on_epoch=seen.append)
    m.fit(tr.X, tr.Y, va.X, va.Y)
    assert len(m.history_) < 200 and len(m.history_) - m.best_epoch_ == 3  # stopped 3 epochs after the best
    assert [h["epoch"] for h in m.history_] == list(range(1, len(m.history_) + 1))
    assert set(m.history_[0]) == {"epoch", "loss", "val_loss", "val_macro_auc", "seconds"}
    assert [s["best_epoch"] for s in seen][-1] == m.best_epoch_ and seen[0]["monitor"] == "val_macro_auc"
    keras_hist = m.model_.history.history  # Keras's own History callback saw the logged AUC too
    assert keras_hist["val_macro_auc"] == [h["val_macro_auc"] for h in m.history_]
    assert keras_hist["loss"] == pytest.approx([h["loss"] for h in m.history_])


def test_val_loss_is_monitored_when_no_validation_label_has_both_classes(data) -> None:
    tr, va, _ = data
    Yv = np.where(va.Y == -1, -1, 0).astype(np.int8)
    m = KerasMLPClassifier(hidden=(16, 8), max_epochs=4, patience=4).fit(tr.X, tr.Y, va.X, Yv)
    assert m.monitor_ == "val_loss" and all(h["val_macro_auc"] is None for h in m.history_)
    assert m.best_score_ == min(h["val_loss"] for h in m.history_) == m.history_[m.best_epoch_ - 1]["val_loss"]


def test_architecture_is_googles_data_efficient_head(mlp) -> None:
    cfg = [(type(l).__name__, l.get_config()) for l in mlp.model_.layers]
    assert [c[0] for c in cfg] == ["Dense", "Dropout", "Dense", "Dropout", "Dense"]
    assert [cfg[i][1]["units"] for i in (0, 2, 4)] == [512, 256, 6]
    assert [cfg[i][1]["rate"] for i in (1, 3)] == [0.05, 0.10]
    assert cfg[0][1]["activation"] == "relu" and cfg[4][1]["activation"] == "linear"
    for i in (0, 2):
        assert cfg[i][1]["kernel_regularizer"]["config"] == {"l2": 1e-5}
        assert cfg[i][1]["bias_regularizer"]["config"] == {"l2": 1e-5}
    opt = mlp.model_.optimizer
    assert type(opt).__name__ == "Adam" and opt.learning_rate.value.item() == pytest.approx(1e-4)
    # Keras's Adam, one step per batch of 32 (240 rows: 8 batches)
    assert int(opt.iterations.value.item()) == len(mlp.history_) * 8


def test_without_validation_all_epochs_run(data) -> None:
    tr, _, _ = data
    m = KerasMLPClassifier(max_epochs=2).fit(tr.X, tr.Y)
    assert m.monitor_ == "none" and len(m.history_) == 2 and m.best_epoch_ == 2


def test_probe_learns_the_planted_signal_and_round_trips_as_json(data) -> None:
    import json

    tr, va, te = data
    probe = LogisticProbe().fit(tr.X, tr.Y, va.X, va.Y)
    P = probe.predict_proba(te.X)
    for j in range(6):
        m = te.Y[:, j] != -1
        assert roc_auc(te.Y[m, j], P[m, j]) > 0.9
    assert probe.coef_.shape == (6, 32) and set(probe.C_) <= set(probe.Cs)
    back = LogisticProbe.from_dict(json.loads(json.dumps(probe.to_dict())))
    np.testing.assert_array_equal(back.predict_proba(te.X), P)


def test_probe_label_with_one_training_class_is_constant(data) -> None:
    tr, va, te = data
    Y = tr.Y.copy()
    Y[:, 2] = np.where(Y[:, 2] == -1, -1, 0)
    probe = LogisticProbe().fit(tr.X, Y, va.X, va.Y)
    assert np.ptp(probe.predict_proba(te.X)[:, 2]) == 0
    assert probe.notes_["edema"].startswith("training rows have 0 positive and ")


def test_bad_inputs_name_the_argument_row_and_value(data) -> None:
    tr, va, _ = data
    Y = tr.Y.copy()
    Y[4, 3] = 2
    with pytest.raises(ClassifierInputError, match=r"^Y row 4, label 'infection_risk': value 2 is not 1, 0 or -1$"):
        KerasMLPClassifier(max_epochs=1).fit(tr.X, Y)
    X = tr.X.copy()
    X[7, 1] = np.nan
    with pytest.raises(ClassifierInputError, match=r"^X has a non-finite value at row 7, column 1$"):
        LogisticProbe().fit(X, tr.Y)
    with pytest.raises(ClassifierInputError, match=r"^X_val has 31 features, the model was fitted on 32$"):
        KerasMLPClassifier(max_epochs=1).fit(tr.X, tr.Y, va.X[:, :31], va.Y)
    with pytest.raises(ClassifierInputError, match=r"^pass both X_val and Y_val, or neither$"):
        KerasMLPClassifier(max_epochs=1).fit(tr.X, tr.Y, va.X)
