"""The `theory` bounds of each real layer: an ``on_layer`` hook for `quantize_encoder`.

    from experiments.real import quantize_encoder, theory_bounds
    res = quantize_encoder("qronos", 4, on_layer=theory_bounds)
    res.records[7]["bounds"]["Q1"]["violations"], res.records[7]["bounds"]["Q1"]["ratio_max"]

It reuses the experiments layer's definitions of clipping (`experiments.run.clipped`) and of
which bound applies and how it is checked (`experiments.bounds.applicable` / `evaluate`), so
synthetic and real runs are judged alike; the measurements are `experiments.run.measure`'s,
taken once by the sequential run (``ctx.measured``).
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
    from experiments import run

    o = ctx.options
    X = np.asarray(ctx.X, np.float64)
    X_hat = np.asarray(ctx.X_hat, np.float64)
    W = np.asarray(ctx.W, np.float64)
    step = np.broadcast_to(np.asarray(ctx.grid.step, np.float64), (W.shape[1],))
    res = None if o.algorithm == "rtn" else ctx.result
    measured = ctx.measured  # run.measure of this layer, taken by the sequential run
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
