"""The masked, class-weighted binary cross-entropy: the one loss of woundscore.

Written with ``keras.ops`` only, so the same function runs inside Keras (``MaskedBCE``) and on
plain torch tensors with torch autograd (the fine-tune in ``compare`` uses it as the Trainer's
``compute_loss_func``: one implementation, shared, never copied).

Per entry (label ``j`` of row ``i``, logit ``z``, target ``y``, positive weight ``w_j``)::

    l = w_j * y * softplus(-z) + (1 - y) * softplus(z)      # = -[w y log s(z) + (1-y) log(1-s(z))]

which is torch's ``binary_cross_entropy_with_logits(z, y, pos_weight=w)``. Entries with ``y == -1``
(missing / unsure) contribute nothing, to the loss or its gradient; the loss is the mean over the
observed entries only, and 0 (not NaN) for a batch with none.
"""

from __future__ import annotations

from typing import Any, Sequence

import keras  # torch backend: chosen by woundscore.classify's __init__ (_backend) before this
import numpy as np

from woundscore.cache.schema import MISSING

ops = keras.ops


def _float_like(x: Any, like: Any) -> Any:
    """``x`` as a float32 tensor on ``like``'s device: convert_to_tensor puts numpy on Keras's
    default device, and the fine-tune's logits may be on the GPU (or the reverse)."""
    t = ops.cast(ops.convert_to_tensor(x), "float32")
    dev = getattr(like, "device", None)
    return t.to(dev) if dev is not None and getattr(t, "device", dev) != dev else t


def masked_bce(y_true: Any, logits: Any, pos_weight: Any) -> Any:
    """Mean BCE-with-logits over observed entries, positives weighted per label.

    Args:
        y_true: (n, L) targets 1 / 0 / -1 (missing); any int or float dtype, numpy or tensor.
        logits: (n, L) raw scores (before the sigmoid); a torch tensor keeps its autograd graph.
        pos_weight: (L,) weight of the positive term per label (neg/pos of the training split).

    Returns:
        A scalar float32 tensor: sum of per-entry losses over observed entries / their count
        (0 when no entry is observed).
    """
    logits = ops.cast(logits, "float32")
    y, pw = _float_like(y_true, logits), _float_like(pos_weight, logits)
    observed = ops.not_equal(y, float(MISSING))
    # Missing entries are replaced by 0 before they touch the loss, and their loss by 0 through
    # `where`, so neither their value nor their logit reaches the loss or the gradient.
    y0 = ops.where(observed, y, ops.zeros_like(y))
    per_entry = pw * y0 * ops.softplus(-logits) + (1.0 - y0) * ops.softplus(logits)
    per_entry = ops.where(observed, per_entry, ops.zeros_like(per_entry))
    count = ops.sum(ops.cast(observed, "float32"))
    return ops.sum(per_entry) / ops.maximum(count, 1.0)


@keras.saving.register_keras_serializable(package="woundscore")
class MaskedBCE(keras.losses.Loss):
    """Keras loss wrapping :func:`masked_bce` on logits; saved with the model (``pos_weight`` in
    its config) and registered as ``"woundscore>MaskedBCE"`` when this module is imported (which
    ``import woundscore`` does), so ``keras.saving.load_model`` needs no ``custom_objects``.

    The reduction is done by :func:`masked_bce` itself (mean over observed entries), so Keras's
    own reduction only sees a scalar.
    """

    def __init__(self, pos_weight: Sequence[float] | np.ndarray, name: str = "masked_bce",
                 reduction: str = "sum_over_batch_size", dtype: Any = None) -> None:
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.pos_weight = [float(w) for w in np.asarray(pos_weight, dtype=np.float64).ravel()]

    def call(self, y_true: Any, y_pred: Any) -> Any:
        return masked_bce(y_true, y_pred, self.pos_weight)

    def get_config(self) -> dict:
        return {**super().get_config(), "pos_weight": list(self.pos_weight)}
