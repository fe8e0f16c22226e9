"""How far an embedding is from a head's training embeddings: the "does this look like a wound
photo" flag (README, "Out-of-distribution flag").

Method: Mahalanobis distance under a Ledoit-Wolf shrunk covariance of the training embeddings,
kept in a truncated eigen form (probabilistic-PCA style).

Why this and not k-nearest-neighbour cosine:

- Size. kNN must keep every training embedding (480 x 1152 float32 = 2.2 MB, and they are
  derived from the training photos); this keeps a mean (d), the top ``k <= 64`` shrunk
  principal directions (k x d float32: 64 x 1152 = 295 KB) and one residual variance.
- n = 480 < d = 1152. The sample covariance is singular (rank <= 479), so plain Mahalanobis is
  undefined; Ledoit-Wolf shrinks it towards a scaled identity by an amount estimated from the data
  (no tuning), which makes it invertible and well conditioned. Directions beyond the kept ``k``
  get the mean of their shrunk variances, so the distance still sees how far an image sits off
  the training subspace (where solid colours, screenshots and black frames land).
- It scores an image in one (k x d) product, with no neighbour search and no tie handling.

The cut-off is the ``quantile`` (default 0.99) of the VALIDATION embeddings' distances (rows the
description was not fitted on, so it is not optimistic); with SurgWound's 69 validation rows that
is about the largest of them. The validation distances are stored with it, so the cut-off can be
recomputed from the file. An image with ``distance > cutoff`` is out of distribution.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from woundscore.cache.errors import WoundscoreError

METHOD = "mahalanobis-ledoitwolf"
MAX_COMPONENTS = 64
DEFAULT_QUANTILE = 0.99
_KEYS = ("method", "mean", "components", "variances", "resid_var", "cutoff", "quantile", "val_distances",
         "shrinkage", "n_train")


class OODError(WoundscoreError, ValueError):
    """Bad input to the OOD description, or an ood.npz that is unreadable or not finite."""


@dataclass
class OODModel:
    """A fitted description: ``distance(X)`` and the stored ``cutoff``.

    Arrays: ``mean`` (d,), ``components`` (k, d) orthonormal rows, ``variances`` (k,) shrunk
    variances along them, ``resid_var`` the shrunk variance of every other direction,
    ``val_distances`` (m,) the validation rows' distances the cutoff came from.
    """

    mean: np.ndarray
    components: np.ndarray
    variances: np.ndarray
    resid_var: float
    cutoff: float
    quantile: float
    val_distances: np.ndarray
    shrinkage: float
    n_train: int
    method: str = METHOD

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def distance(self, X: np.ndarray) -> np.ndarray:
        """(n, d) embeddings -> (n,) float64 Mahalanobis distances (non-finite rows -> inf)."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.dim:
            raise OODError(f"expected (n, {self.dim}) embeddings, got shape {X.shape}")
        Xc = X - self.mean
        proj = Xc @ self.components.astype(np.float64).T  # (n, k)
        inside = np.sum(proj ** 2 / self.variances, axis=1)
        resid = np.maximum(np.sum(Xc ** 2, axis=1) - np.sum(proj ** 2, axis=1), 0.0)
        d = np.sqrt(inside + resid / self.resid_var)
        return np.where(np.isfinite(d), d, np.inf)

    def in_distribution(self, X: np.ndarray) -> np.ndarray:
        """(n,) bool: distance <= cutoff."""
        return self.distance(X) <= self.cutoff

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz (plain arrays and unicode strings: loadable with allow_pickle=False)."""
        np.savez(path, method=np.array(self.method), mean=self.mean.astype(np.float64),
                 components=self.components.astype(np.float32), variances=self.variances.astype(np.float64),
                 resid_var=np.float64(self.resid_var), cutoff=np.float64(self.cutoff),
                 quantile=np.float64(self.quantile), val_distances=self.val_distances.astype(np.float64),
                 shrinkage=np.float64(self.shrinkage), n_train=np.int64(self.n_train))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "OODModel":
        """Read :meth:`save`'s file; OODError naming the file and key if it is unreadable,
        incomplete or not finite."""
        p = Path(path)
        try:
            with np.load(p, allow_pickle=False) as z:
                missing = [k for k in _KEYS if k not in z.files]
                if missing:
                    raise OODError(f"{p}: key {missing[0]!r} is missing")
                a = {k: z[k] for k in _KEYS}
        except OODError:
            raise
        except (OSError, ValueError, EOFError) as exc:
            raise OODError(f"{p}: unreadable ({type(exc).__name__}: {exc})") from None
        for k in _KEYS[1:]:
            if not np.all(np.isfinite(a[k])):
                raise OODError(f"{p}: key {k!r} holds non-finite values")
        if str(a["method"]) != METHOD:
            raise OODError(f"{p}: key 'method' is {str(a['method'])!r}; this woundscore reads {METHOD!r}")
        if a["components"].ndim != 2 or a["components"].shape[1] != a["mean"].shape[0] \
                or a["variances"].shape != (a["components"].shape[0],):
            raise OODError(f"{p}: key 'components' has shape {a['components'].shape}, inconsistent with "
                           f"'mean' {a['mean'].shape} / 'variances' {a['variances'].shape}")
        if not (np.all(a["variances"] > 0) and float(a["resid_var"]) > 0):
            raise OODError(f"{p}: key 'variances'/'resid_var' must be > 0")
        return cls(mean=a["mean"], components=a["components"], variances=a["variances"],
                   resid_var=float(a["resid_var"]), cutoff=float(a["cutoff"]), quantile=float(a["quantile"]),
                   val_distances=a["val_distances"], shrinkage=float(a["shrinkage"]), n_train=int(a["n_train"]),
                   method=str(a["method"]))


def fit_ood(X_train: np.ndarray, X_val: np.ndarray, *, quantile: float = DEFAULT_QUANTILE,
            max_components: int = MAX_COMPONENTS) -> OODModel:
    """Fit on (n, d) training embeddings; cut-off = ``quantile`` of the (m, d) validation
    embeddings' distances (the training rows' own when there are no validation rows)."""
    from sklearn.covariance import ledoit_wolf_shrinkage

    X = np.asarray(X_train, dtype=np.float64)
    V = np.asarray(X_val, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 2 or V.ndim != 2 or V.shape[1] != X.shape[1]:
        raise OODError(f"need (n >= 2, d) training and (m, d) validation embeddings, got {X.shape} and {V.shape}")
    if not (np.all(np.isfinite(X)) and np.all(np.isfinite(V))):
        raise OODError("embeddings hold non-finite values")
    if not 0.0 < quantile <= 1.0:
        raise OODError(f"quantile must be in (0, 1], got {quantile!r}")
    n, d = X.shape
    mean = X.mean(axis=0)
    Xc = X - mean
    s = float(ledoit_wolf_shrinkage(Xc, assume_centered=True))
    _, sv, Vt = np.linalg.svd(Xc / np.sqrt(n), full_matrices=False)
    lam = sv ** 2  # sample covariance eigenvalues (rank <= n - 1)
    mu = float(lam.sum() / d)  # trace / d: the shrinkage target's variance
    if mu <= 0:
        raise OODError("training embeddings are all identical: no spread to measure distance by")
    k = int(min(max_components, lam.size, d - 1))
    shrunk = (1.0 - s) * lam + s * mu
    variances = shrunk[:k]
    # every direction past k: mean of their shrunk variances (eigenvalue 0 beyond the rank)
    resid_var = float(((1.0 - s) * lam[k:].sum() + s * mu * (d - k)) / (d - k))
    m = OODModel(mean=mean, components=Vt[:k].astype(np.float32), variances=variances, resid_var=resid_var,
                 cutoff=0.0, quantile=float(quantile), val_distances=np.zeros(0), shrinkage=s, n_train=n)
    ref = V if V.shape[0] else X
    m.val_distances = m.distance(ref)
    m.cutoff = float(np.quantile(m.val_distances, quantile))
    return m
