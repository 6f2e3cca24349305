"""GPTAQ (GPTQModel's ``v2_alpha``) is not a member of Qronos' strength family.

GPTAQ (Li et al., arXiv:2504.02692) adds its mismatch correction inside the sweep: at step t
the later columns move by ``alpha * w_t(t-1) * P[t, t+1:]`` with
``P = triu(dXXT @ U.T, 1) @ U``, ``dXXT = (X - X_hat)^T X_hat`` and ``H^{-1} = U^T U`` (upper
U), written here from the paper's update in this project's layout. With rounding switched off
only that term acts; if GPTAQ were ``ptq.qronos(variant="ls_first", strength=a)`` for some a,
its end point would be ``w + a (wt - w)``. It is not, for any a: the docs (Theory, "Which
Qronos") quote this test's numbers.
"""

import numpy as np
import pytest


def _layer(seed=0, m=300, N=12, n=5):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((m, N))
    X_hat = X + 0.3 * rng.standard_normal((m, N))
    W = rng.standard_normal((N, n))
    lam = 0.01 * np.mean(np.sum(X_hat**2, axis=0))
    return X, X_hat, W, lam


def _gptaq_without_rounding(X, X_hat, W, lam, alpha):
    N = W.shape[0]
    H = X_hat.T @ X_hat + lam * np.eye(N)
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # upper, H^{-1} = U^T U
    P = alpha * np.triu((X - X_hat).T @ X_hat @ U.T, 1) @ U
    Wc = W.copy()
    for t in range(N):
        Wc[t:] += np.outer(P[t, t:], Wc[t])  # err = 0: only the correction term
    return Wc


@pytest.mark.parametrize("alpha", [0.25, 0.5, 1.0])
def test_gptaq_end_point_is_no_strength(alpha):
    X, X_hat, W, lam = _layer()
    N = W.shape[0]
    wt = np.linalg.solve(X_hat.T @ X_hat + lam * np.eye(N), X_hat.T @ X @ W + lam * W)
    g = _gptaq_without_rounding(X, X_hat, W, lam, alpha)
    d = (wt - W).ravel()
    a = float(np.clip(d @ (g - W).ravel() / (d @ d), 0.0, 1.0))  # the closest member
    gap = np.abs(g - (W + a * (wt - W))).max() / np.abs(wt - W).max()
    assert gap > 0.05, (alpha, a, gap)  # measured: 0.12, 0.23, 0.47
    # the first column is never corrected (P is strictly upper triangular)
    np.testing.assert_array_equal(g[0], W[0])
