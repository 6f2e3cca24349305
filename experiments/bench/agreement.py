"""The agreement checks: ptq does the same work as the peers it is timed against.

`agreement`: ``ptq.optq`` against the canonical PyTorch GPTQ; `brevitas_agreement`:
``ptq.qronos`` (both variants) against Brevitas' Qronos. Same data (`options.make_data`),
grid, damping and order, in float32 and float64; one row of code and error differences per
check.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import ptq
from experiments.bench import peers
from experiments.bench.options import Options, make_data


def _data(N: int, seed: int, dtype: str):
    """`make_data` at size N in ``dtype`` ("float32" or "float64"): X, X_hat, W."""
    np_dtype = np.float64 if dtype == "float64" else np.float32
    return tuple(A.astype(np_dtype) for A in make_data(N, seed))


def _grid_diffs(scale, zero_point, step, zero) -> dict:
    """A peer's per-neuron grid (torch (n, 1) ``scale`` and ``zero_point``) against ptq's
    (``step``, ``zero``, float64 (n,)): the largest relative scale and zero-point differences."""
    scale = scale.numpy()[:, 0].astype(np.float64)
    zero_point = zero_point.numpy()[:, 0].astype(np.float64)
    return {"grid_scale_max_rel_diff": float(np.max(np.abs(scale - step) / step)),
            "grid_zero_max_diff": float(np.max(np.abs(zero_point - zero)))}


def agreement(N: int, opt: Options, dtype: str) -> dict:
    """ptq.optq vs the torch GPTQ on the same asymmetric per-row grid and order, at size N.

    Codes can differ where float rounding moves a value across a rounding boundary, and a
    flipped code changes every later step of its neuron, so the check reports the fraction of
    equal codes, the grid's own scale/zero difference, and the relative difference of the
    layer errors ``||X (W - Q)||_F``.
    """
    X, _, W = _data(N, opt.seed, dtype)
    with jax.enable_x64(dtype == "float64"):
        grid = ptq.Grid.fit(jnp.asarray(W), opt.bits, kind="asymmetric", per="neuron")
        res = ptq.optq(X, W, grid, percdamp=0.01, block_size=min(opt.block_size, N))
        Q_ptq = np.asarray(res.Q, dtype=np.float64)
        codes_ptq = np.asarray(res.codes)
        step, zero = np.asarray(grid.step, np.float64), np.asarray(grid.zero, np.float64)
    Xt, Wt = peers.to_torch(X), peers.to_torch(np.ascontiguousarray(W.T))
    scale, tzero = peers.torch_minmax_params(Wt, opt.bits)
    Q_t = peers.torch_gptq(Wt, peers.torch_gram(Xt), scale, tzero, bits=opt.bits).Q
    Q_torch = Q_t.numpy().astype(np.float64).T
    codes_torch = np.rint(Q_torch / step + zero)

    def err(Q):
        return np.linalg.norm(X.astype(np.float64) @ (W.astype(np.float64) - Q))

    return {
        "N": N,
        "dtype": dtype,
        **_grid_diffs(scale, tzero, step, zero),
        "codes_equal_frac": float(np.mean(codes_ptq == codes_torch)),
        "max_code_diff": float(np.max(np.abs(codes_ptq - codes_torch))),
        "err_ptq": float(err(Q_ptq)),
        "err_torch": float(err(Q_torch)),
        "err_rel_diff": float(abs(err(Q_ptq) - err(Q_torch)) / err(Q_torch)),
    }


def brevitas_agreement(N: int, opt: Options, dtype: str) -> list[dict]:
    """ptq.qronos (both variants) vs Brevitas' Qronos on the same data, grid, damping, order.

    One row per ptq variant: the fraction of identical integer codes (all, at the first
    processed feature, and neurons whose every code agrees), the grids' differences, and the
    relative output errors ``||X W - X_hat Q||_F / ||X W||_F`` of both. Brevitas runs in
    ``dtype`` (its layer and buffers), ptq in the same dtype (x64 for float64). The variant
    Brevitas implements agrees up to float rounding; the other differs at step 1 (codes of
    the first feature) and, through the re-fit, in the rest of those neurons.
    """
    X, X_hat, W = _data(N, opt.seed, dtype)
    B = min(opt.block_size, N)
    b = peers.brevitas_qronos(peers.to_torch(X), peers.to_torch(X_hat),
                              peers.to_torch(np.ascontiguousarray(W.T)), bits=opt.bits,
                              percdamp=0.01, block_size=B)
    Q_b = b.Q.numpy().astype(np.float64).T
    codes_b = b.codes.numpy().astype(np.int64).T
    X64, Xh64, W64 = (A.astype(np.float64) for A in (X, X_hat, W))
    target = X64 @ W64

    def err(Q):
        return np.linalg.norm(target - Xh64 @ Q) / np.linalg.norm(target)

    rows = []
    with jax.enable_x64(dtype == "float64"):
        grid = ptq.Grid.fit(jnp.asarray(W), opt.bits, kind="asymmetric", per="neuron")
        step, zero = np.asarray(grid.step, np.float64), np.asarray(grid.zero, np.float64)
        for variant in ("paper", "ls_first"):
            res = ptq.qronos(X, X_hat, W, grid, percdamp=0.01, variant=variant, block_size=B)
            Q_p, codes_p = np.asarray(res.Q, np.float64), np.asarray(res.codes, np.int64)
            same = codes_p == codes_b
            e_p, e_b = err(Q_p), err(Q_b)
            rows.append({
                "N": N, "dtype": dtype, "ptq_variant": variant,
                **_grid_diffs(b.scale, b.zero_point, step, zero),
                "codes_equal_frac": float(np.mean(same)),
                "first_codes_equal_frac": float(np.mean(same[0])),  # natural order: row 0
                "neurons_equal_frac": float(np.mean(same.all(axis=0))),
                "err_ptq": float(e_p), "err_brevitas": float(e_b),
                "err_rel_diff": float(abs(e_p - e_b) / e_b),
            })
    return rows
