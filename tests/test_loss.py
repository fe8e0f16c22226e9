"""The masked, class-weighted BCE: hand computation, -1 slots are inert, torch autograd, Keras."""

from __future__ import annotations

import math

import numpy as np
import pytest

from woundscore.classify.loss import MaskedBCE, keras, masked_bce

torch = pytest.importorskip("torch")

Y = np.array([[1, 0, -1], [0, -1, 1], [-1, 1, 0]], dtype=np.int8)
Z = np.array([[0.3, -1.2, 5.0], [2.0, 0.1, -0.7], [1.5, -2.5, 0.4]], dtype=np.float32)
PW = np.array([2.0, 0.5, 3.0])


def hand_loss(y: np.ndarray, z: np.ndarray, pw: np.ndarray) -> float:
    """-[w y log s(z) + (1 - y) log(1 - s(z))], mean over entries with y != -1 (plain Python)."""
    total, count = 0.0, 0
    for i in range(y.shape[0]):
        for j in range(y.shape[1]):
            if y[i, j] == -1:
                continue
            s = 1.0 / (1.0 + math.exp(-float(z[i, j])))
            total += -(pw[j] * y[i, j] * math.log(s) + (1 - y[i, j]) * math.log(1 - s))
            count += 1
    return total / count if count else 0.0


def test_equals_hand_computation() -> None:
    got = float(masked_bce(Y, torch.tensor(Z), PW))
    assert got == pytest.approx(hand_loss(Y, Z, PW), rel=1e-6)


def test_equals_torch_bce_with_pos_weight_on_observed_entries() -> None:
    z = torch.tensor(Z)
    obs = torch.tensor(Y != -1)
    ref = torch.nn.functional.binary_cross_entropy_with_logits(
        z, torch.tensor(np.where(Y == 1, 1.0, 0.0), dtype=torch.float32),
        pos_weight=torch.tensor(PW, dtype=torch.float32), reduction="none")
    assert float(masked_bce(Y, z, PW)) == pytest.approx(float(ref[obs].mean()), rel=1e-6)


def _loss_and_grad(z: np.ndarray) -> tuple[float, np.ndarray]:
    zt = torch.tensor(z, requires_grad=True)
    loss = masked_bce(torch.tensor(Y), zt, PW)
    loss.backward()
    return float(loss.detach()), zt.grad.numpy().copy()


@pytest.mark.parametrize("new_logit", [-40.0, 0.0, 7.5, 60.0])
def test_missing_slot_changes_neither_loss_nor_gradient(new_logit: float) -> None:
    loss0, grad0 = _loss_and_grad(Z)
    z = Z.copy()
    z[Y == -1] = new_logit
    loss1, grad1 = _loss_and_grad(z)
    assert loss1 == loss0
    np.testing.assert_array_equal(grad1, grad0)
    assert (grad0[Y == -1] == 0).all() and (grad0[Y != -1] != 0).all()


def test_all_missing_batch_is_zero_with_finite_zero_gradient() -> None:
    zt = torch.tensor(Z, requires_grad=True)
    loss = masked_bce(np.full(Y.shape, -1, np.int8), zt, PW)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.isfinite(zt.grad).all() and (zt.grad == 0).all()


def test_gradient_matches_analytic_derivative() -> None:
    # d/dz of the mean: (w y (s - 1) + (1 - y) s) / count for observed entries
    _, grad = _loss_and_grad(Z)
    s = 1 / (1 + np.exp(-Z.astype(np.float64)))
    y = np.where(Y == 1, 1.0, 0.0)
    want = np.where(Y != -1, (PW * y * (s - 1) + (1 - y) * s) / (Y != -1).sum(), 0.0)
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-7)


def test_half_precision_logits_keep_autograd_and_match_float32() -> None:
    zt = torch.tensor(Z, dtype=torch.bfloat16, requires_grad=True)
    loss = masked_bce(torch.tensor(Y), zt, torch.tensor(PW))
    loss.backward()
    assert loss.dtype == torch.float32 and zt.grad is not None and zt.grad.dtype == torch.bfloat16
    assert float(loss.detach()) == pytest.approx(hand_loss(Y, zt.detach().float().numpy(), PW), rel=1e-5)


def test_keras_loss_round_trips_its_config_through_the_registry() -> None:
    loss = MaskedBCE([2.0, 0.5, 3.0])
    cfg = keras.saving.serialize_keras_object(loss)
    assert cfg["registered_name"] == "woundscore>MaskedBCE"
    back = keras.saving.deserialize_keras_object(cfg, safe_mode=True)
    assert isinstance(back, MaskedBCE) and back.pos_weight == [2.0, 0.5, 3.0]
    assert float(back(Y, torch.tensor(Z))) == pytest.approx(hand_loss(Y, Z, PW), rel=1e-6)
