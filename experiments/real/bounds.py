"""The `theory` bounds of each real layer: an ``on_layer`` hook for `quantize_encoder`.

    from experiments.real import quantize_encoder, theory_bounds
    res = quantize_encoder("qronos", 4, on_layer=theory_bounds)
    res.records[7]["bounds"]["Q1"]["violations"], res.records[7]["bounds"]["Q1"]["ratio_max"]

It reuses the experiments layer's definitions of clipping (`experiments.run.clipped`) and of
which bound applies and how it is checked (`experiments.bounds.applicable` / `evaluate`), so
synthetic and real runs are judged alike. The measurements are those of
`experiments.run.measure` (same keys, same formulas) except the floors: ``e_ls`` is computed
from the normal equations with ``lam > 0`` (one Cholesky factorisation) and ``e_ls0``
(``lam = 0``, an SVD least-squares solve, ~9 s per 2048 x 1536 layer on 2 cores) is left out.
X, X_hat and W enter in float64.
"""

from __future__ import annotations

import jax
import numpy as np

from experiments.real.sequential import LayerContext

P_DEFAULT = 0.05  # failure probability of the high-probability bounds (S2, S3, Q3)


def theory_bounds(ctx: LayerContext, *, p: float = P_DEFAULT) -> dict:
    """Every applicable bound of THEORY.md section 4 for one quantized real layer.

    Returns ``{"measured": {name: (n,) array}, "clipped": bool, "bounds": {B1: {...}, ...}}``
    with, per bound, the per-neuron values, violations and tightness ratios (measured /
    bound), as `experiments.bounds.evaluate`. RTN has no bound (empty ``bounds``).
    """
    from experiments import bounds as eb
    from experiments import data, run

    o = ctx.options
    X = np.asarray(ctx.X, np.float64)
    X_hat = np.asarray(ctx.X_hat, np.float64)
    W = np.asarray(ctx.W, np.float64)
    Q = np.asarray(ctx.result.Q, np.float64)
    step = np.broadcast_to(np.asarray(ctx.grid.step, np.float64), (W.shape[1],))
    res = None if o.algorithm == "rtn" else ctx.result
    layer = data.Layer(X, X_hat, W, ctx.name)
    measured = measure(layer, Q, res, step)
    precision = "float64" if jax.config.read("jax_enable_x64") else "float32"
    rtol = eb.RTOL[precision]
    is_paper = o.algorithm == "qronos" and o.variant == "paper"
    clip = run.clipped(res, step, o.rounding, is_paper, rtol)
    names = eb.applicable(o.algorithm, o.rounding, mismatched=not np.array_equal(X, X_hat))
    checked = {}
    if names:
        checked = eb.evaluate(
            names, X_f=X_hat, X=X, X_hat=X_hat, W=W, step=step, lam=res.lam,
            order=np.asarray(res.order), variant=o.variant, p=p, measured=measured,
            clipped=clip, precision=precision,
        )
    return {"measured": measured, "clipped": clip, "bounds": checked}


def measure(layer, Q: np.ndarray, result, step: np.ndarray) -> dict[str, np.ndarray]:
    """`experiments.run.measure` without its SVD floors; ``e_ls`` from the normal equations.

    ``E_LS = min_v sqrt(||X w - X_hat v||^2 + lam ||w - v||^2)`` is attained at
    ``wt = Hh^{-1} G w`` with ``Hh = X_hat^T X_hat + lam I``, ``G = X_hat^T X + lam I``
    (THEORY.md section 2); ``Hh`` is positive definite for ``lam > 0``.
    """
    import scipy.linalg

    X, X_hat, W = layer.X, layer.X_hat, layer.W
    same = np.array_equal(X, X_hat)
    D = X @ W - X_hat @ Q
    S = X_hat @ (W - Q)
    lam = float(result.lam) if result is not None else 0.0
    w_max = (np.asarray(result.w_max, dtype=np.float64) if result is not None
             else np.abs(W).max(axis=0))
    dq = np.sum((W - Q) ** 2, axis=0)
    out = {
        "err2": np.linalg.norm(D, axis=0),
        "errinf": np.abs(D).max(axis=0),
        "err2_self": np.linalg.norm(S, axis=0),
        "errinf_self": np.abs(S).max(axis=0),
        "err2_aug": np.sqrt(np.sum(S**2, axis=0) + lam * dq),
        "err2_pair_aug": np.sqrt(np.sum(D**2, axis=0) + lam * dq),
        "w_max": w_max,
        "w_max_over_step": w_max / step,
        "k_used": np.abs(np.rint(Q / step)).max(axis=0),
        "w_inf": np.abs(W).max(axis=0),
    }
    if not same and lam > 0:
        N = X.shape[1]
        Hh = X_hat.T @ X_hat + lam * np.eye(N)
        G = X_hat.T @ X + lam * np.eye(N)
        wt = scipy.linalg.cho_solve(scipy.linalg.cho_factor(Hh), G @ W)
        out["e_ls"] = np.sqrt(np.sum((X @ W - X_hat @ wt) ** 2, axis=0)
                              + lam * np.sum((W - wt) ** 2, axis=0))
    return out
