"""The seed ensemble (KerasMLPClassifier(n_members=k), classify.ensemble): members with their own
early stopping, one averaging model.keras that loads without custom_objects and predicts the
same, member_proba for the report's seed spread, and members that train independently."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy.special import expit, logit

from woundscore.classify.ensemble import fit_members, member_models
from woundscore.classify.metrics import macro_auc
from woundscore.classify.models import ClassifierInputError, KerasMLPClassifier
from woundscore.classify.synthetic import synthetic_embedding_set


@pytest.fixture(scope="module")
def data():
    es = synthetic_embedding_set(160, 60, 80, dim=16, seed=7, signal=3.0)
    return es.subset("train"), es.subset("val"), es.subset("test")


@pytest.fixture(scope="module")
def ens(data):
    tr, va, _ = data
    return KerasMLPClassifier(n_members=3, max_epochs=25, patience=4, seed=1).fit(tr.X, tr.Y, va.X, va.Y)


def test_ensemble_is_the_mean_of_its_members_logits(ens, data) -> None:
    _, _, te = data
    M = ens.member_proba(te.X)
    assert M.shape == (3, len(te), 6) and M.dtype == np.float64
    np.testing.assert_allclose(ens.predict_proba(te.X), expit(logit(M).mean(0)), atol=1e-6)
    assert len({round(float(x), 6) for x in M[:, 0, 0]}) == 3  # members differ (own init, dropout, order)
    assert macro_auc(te.Y, ens.predict_proba(te.X)) > 0.85


def test_each_member_stops_on_its_own_best_epoch_with_its_weights_restored(ens, data) -> None:
    _, va, _ = data
    hist = ens.history_
    for r, (best, score) in enumerate(zip(ens.member_best_epochs_, ens.member_best_scores_)):
        # Keras EarlyStopping's rule replayed on the member's own scores: strict improvement,
        # stop after `patience` (4) epochs without one; later epochs must not count
        want, top, wait = 0, -np.inf, 0
        for epoch, h in enumerate(hist, start=1):
            if h["member_scores"][r] > top:
                want, top, wait = epoch, h["member_scores"][r], 0
            else:
                wait += 1
                if wait >= 4:
                    break
        assert (best, score) == (want, pytest.approx(top))
        # restored: the member's own val macro AUC is its best epoch's
        assert macro_auc(va.Y, ens.member_proba(va.X)[r]) == pytest.approx(score, abs=1e-6)
    assert ens.best_epoch_ == max(ens.member_best_epochs_) and ens.monitor_ == "val_macro_auc"
    assert ens.best_score_ == pytest.approx(macro_auc(va.Y, ens.predict_proba(va.X)))


def test_saved_as_one_model_keras_that_loads_without_custom_objects(ens, data, tmp_path) -> None:
    _, _, te = data
    path = tmp_path / "model.keras"
    ens.model_.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)  # built-in layers only
    again = KerasMLPClassifier.from_keras(loaded, n_members=3)
    np.testing.assert_array_equal(again.predict_proba(te.X), ens.predict_proba(te.X))
    np.testing.assert_array_equal(again.member_proba(te.X), ens.member_proba(te.X))
    assert len(member_models(loaded)) == 3


def test_train_on_set_saves_and_loads_an_ensemble_folder(data, tmp_path) -> None:
    from woundscore.classify.artifacts import load_model_dir
    from woundscore.classify.train import train_on_set

    es = synthetic_embedding_set(80, 40, 20, dim=8, seed=2, signal=3.0)
    res = train_on_set(es, tmp_path / "m", model="mlp", n_members=2, max_epochs=6, patience=2)
    loaded = load_model_dir(tmp_path / "m")
    assert loaded.kind == "mlp" and loaded.provenance["hyperparameters"]["n_members"] == 2
    X = es.subset("test").X
    np.testing.assert_allclose(loaded.estimator.predict_proba(X), res.estimator.predict_proba(X), atol=1e-7)
    assert loaded.estimator.member_proba(X).shape == (2, len(X), 6)


def test_single_mlp_member_proba_is_its_own_proba(data) -> None:
    tr, va, te = data
    m = KerasMLPClassifier(max_epochs=3, patience=3).fit(tr.X, tr.Y, va.X, va.Y)
    np.testing.assert_array_equal(m.member_proba(te.X), m.predict_proba(te.X)[None])
    with pytest.raises(ClassifierInputError, match="n_members must be >= 1"):
        KerasMLPClassifier(n_members=0).fit(tr.X, tr.Y)


def test_members_train_independently_other_members_labels_do_not_change_a_member(data) -> None:
    tr, _, _ = data
    shuffled = np.random.default_rng(0).permutation(tr.Y)
    runs = [fit_members([tr.X, tr.X], [tr.Y, Y1], None, None, seed=3, max_epochs=3) for Y1 in (tr.Y, shuffled)]
    w = [[m.get_weights() for m in run.members] for run in runs]
    assert all(np.array_equal(a, b) for a, b in zip(w[0][0], w[1][0]))  # member 0: the same to the bit
    assert not all(np.array_equal(a, b) for a, b in zip(w[0][1], w[1][1]))  # member 1 saw other labels
    assert runs[0].monitor == "none" and runs[0].best_epoch == [3, 3] and len(runs[0].history) == 3


def test_a_member_whose_patience_ran_out_is_frozen_while_others_train_on() -> None:
    from types import SimpleNamespace

    from woundscore.classify.ensemble import _PerMemberStopping

    script = iter([[0.6, 0.6], [0.7, 0.61], [0.65, 0.62], [0.66, 0.63], [0.9, 0.64], [0.95, 0.5], [0.99, 0.5]])

    class Scripted(_PerMemberStopping):
        def _scores(self):
            return next(script), None

    cb = Scripted(2, None, None, np.ones((2, 6)), "val_macro_auc", 2, None)
    cb.set_model(SimpleNamespace(stop_training=False, get_weights=lambda: [np.zeros((2, 3))]))
    for epoch in range(7):
        cb.on_epoch_begin(epoch)
        cb.on_epoch_end(epoch, {"loss": 1.0})
        if cb.model.stop_training:
            break
    # member 0 peaked at epoch 2 and ran out of patience at epoch 4: epoch 5's 0.9 must not count
    assert cb.best_epoch == [2, 5] and cb.best == [0.7, 0.64]
    assert epoch == 6 and cb.model.stop_training  # member 1 ran out at epoch 7
