"""KID on a small val set, with the error of its estimate.

KID (Binkowski et al. 2018) is the unbiased MMD^2 between two sets of features under the
cubic kernel (x.y / d + 1)^3. On the few dozen val images that evaluation during
training scores, its noise is as large as the differences between checkpoints, so a
choice between checkpoints needs the estimate's standard error, which the jackknife
gives from the one val set at hand: each image left out in turn. Two checkpoints'
translations of the same val images share part of their noise (the same layouts, the
same reals), so their difference can be known better than either KID alone
(``kid_difference``): by half or more where the two sets move together, as in the
tests' synthetic features, but not much better on the toy runs' checkpoints
(docs/quality.md, "The checkpoint that KID registers").

All (n, d) float arrays; numpy only (no torch, no torchmetrics).
"""

from __future__ import annotations

import numpy as np


def _kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """KID's kernel, the cubic polynomial (x.y / d + 1)^3: (n, d), (m, d) -> (n, m)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _offdiag_mean(k: np.ndarray) -> float:
    n = len(k)
    return float((k.sum() - np.trace(k)) / (n * (n - 1)))


def _leave_one_out(k_ff: np.ndarray, k_fr: np.ndarray) -> np.ndarray:
    """The fake-side terms of KID, ``mean_offdiag(K_ff) - 2 mean(K_fr)``, with each fake
    image left out in turn: (n,). (The real-real term does not change.)"""
    n = len(k_ff)
    off = k_ff.sum() - np.trace(k_ff)
    rows = k_ff.sum(1) - np.diag(k_ff)
    return (off - 2 * rows) / ((n - 1) * (n - 2)) - 2 * (k_fr.sum() - k_fr.sum(1)) / ((n - 1) * k_fr.shape[1])


def _jackknife_var(values: np.ndarray) -> float:
    n = len(values)
    return float((n - 1) / n * ((values - values.mean()) ** 2).sum())


def kid_with_se(real: np.ndarray, fake: np.ndarray) -> tuple[float, float]:
    """KID of (n, d) real and (m, d) fake features, the unbiased MMD^2 on all of them
    (what torchmetrics' KID computes when one subset holds every image), and its
    standard error by the two-sample jackknife (each real image, then each fake image,
    left out in turn; the two variances add)."""
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    k_rr, k_ff, k_fr = _kernel(real, real), _kernel(fake, fake), _kernel(fake, real)
    var = _jackknife_var(_leave_one_out(k_ff, k_fr)) + _jackknife_var(_leave_one_out(k_rr, k_fr.T))
    return _offdiag_mean(k_rr) + _offdiag_mean(k_ff) - 2 * float(k_fr.mean()), var ** 0.5


def kid_difference(real: np.ndarray, fake: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """KID(real, fake) - KID(real, other) and its standard error, where ``fake`` and
    ``other`` are two checkpoints' translations of the same val images (row i of each
    from val image i): the jackknife leaves out val image i from both at once, so what
    the two sets share (the val images, the reals) cancels in the error as in the value."""
    real, fake, other = real.astype(np.float64), fake.astype(np.float64), other.astype(np.float64)
    by_val = _leave_one_out(_kernel(fake, fake), _kernel(fake, real)) - _leave_one_out(_kernel(other, other),
                                                                                        _kernel(other, real))
    # Each real left out: only the cross terms move.
    n_r = len(real)
    cross = _kernel(real, fake).mean(1) - _kernel(real, other).mean(1)  # (n_r,)
    by_real = -2 * (cross.sum() - cross) / (n_r - 1)
    value = (_offdiag_mean(_kernel(fake, fake)) - 2 * float(_kernel(fake, real).mean())
             - _offdiag_mean(_kernel(other, other)) + 2 * float(_kernel(other, real).mean()))
    return value, (_jackknife_var(by_val) + _jackknife_var(by_real)) ** 0.5
