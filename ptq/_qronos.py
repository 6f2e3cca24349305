"""Qronos: quantization that corrects for the inputs of a partially quantized model."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ptq import definiteness, gather, gram, inputs, options, select
from ptq._optq import _ordered_factor, run_ordered
from ptq.grid import Grid, GroupGrid
from ptq.kernel import HIGHEST, factor
from ptq.options import Order, Rounding, check_layer_shapes
from ptq.result import Result

Variant = options.Variant
VARIANTS = options.VARIANTS


def qronos(
    X,
    X_hat,
    W,
    grid: Grid | GroupGrid,
    *,
    lam: float | None = None,
    percdamp: float | None = None,
    order: Order = "natural",
    order_seed: int = 0,
    rounding: Rounding = "nearest",
    key: jax.Array | None = None,
    variant: Variant = "paper",
    strength: float | str = 1.0,
    sequences=None,
    block_size: int = 128,
) -> Result:
    r"""Quantize ``W`` so that ``X_hat @ Q`` matches the full-precision target ``X @ W``.

    ``X`` are the inputs the full-precision model sees, ``X_hat`` those of the partially
    quantized model. With ``Xa = [X; sqrt(lam) I]``, ``Xha = [X_hat; sqrt(lam) I]``,
    ``ya = Xa w``, ``Hh = X_hat^T X_hat + lam I`` and ``G = X_hat^T X + lam I``
    (THEORY.md section 2):

    * the least-squares fit ``wt = argmin_v ||ya - Xha v|| = Hh^{-1} G w``;
    * ``variant="paper"`` (Zhang et al.; also what Brevitas 0.13.4 runs, whose ``z_1`` leaves
      lam out, see `experiments.bench.peers.brevitas_qronos`): step 1 rounds the correction
      ``z_1 = <Xha_1, ya - Xha_{>1} w_{>1}> / ||Xha_1||^2 = w_1 + ((G - Hh) w)_1 / Hh_11``,
      ``q_1 = Q(z_1)``; the residual is then re-fitted on the remaining columns, which is
      OPTQ with ``Hh`` started from ``wt`` whose first error is ``e_1 = wt_1 - q_1``;
    * ``variant="ls_first"``: ``q = OPTQ_Hh(wt)``, i.e.
      ``q_1 = Q(wt_1)``: Remark 5.2 of arXiv:2508.04853, which Brevitas' sources after 0.13.4
      cite for their Qronos update (not benchmarked here; 0.13.4 runs "paper", measured code
      for code). The two differ only in the value rounded at step 1. The default stays
      "paper", the published algorithm every committed figure ran (docs, Theory);
    * ``variant="ls_first", strength=a`` in [0, 1]: ``q = OPTQ_Hh(w_a)`` with
      ``w_a = w' + a (wt - w')`` (``w'``: ``w`` with the dead features of ``X_hat`` zeroed).
      ``a = 0`` is ``ptq.optq(X_hat, W, grid)`` (same lam and order), ``a = 1`` the full
      least-squares start; ``a = 0.5`` is QEP's default (arXiv:2504.09629, qwix's
      ``qep_core.weight_correct``: ``w + a Hh^{-1} X_hat^T (X - X_hat) w = w + a (wt - w)``).
      ``strength="auto"`` and/or ``lam="auto"`` choose them per layer from the calibration
      data by predicted held-out error, holding out whole calibration sequences
      (`ptq.select.select`; needs ``sequences``). The chosen values are ``result.strength``
      and ``result.lam``, the evidence ``result.selection``.

    Identity (I5, tested): ``||X w - X_hat q||^2 + lam ||w - q||^2
    = E_LS^2 + sum_t (c_t + e_t)^2 rh_t^2`` with ``E_LS = min_v ||ya - Xha v||``,
    ``rh_t = result.r[t]`` and ``c = (1 - a) diag(1/rh) R^T (wt - w')`` (processing order;
    ``c = 0`` at full strength; theory/README.md, I6).

    Args:
      X, X_hat: (m, N) full-precision and mismatched inputs (same samples, same shape).
      W: (N, n) weights. variant: "paper" or "ls_first". The rest is as in `ptq.optq` (the
        grid may be per weight, (N, n) in original order, as there); lam,
        percdamp and the norm orders refer to ``X_hat`` (the matrix that is factorised).
      strength: a number in [0, 1] (only 1 with ``variant="paper"``) or "auto".
      lam: as `ptq.optq`, or "auto" (chosen among ``ptq.select.PERCDAMPS``).
      sequences: which calibration sequence each row comes from, for "auto": an int (the
        rows are that many equal consecutive sequences) or an (m,) integer array of ids.

    Returns:
      `ptq.Result` with ``W_start = w_a`` (``wt``, the least-squares fit, at full strength;
      original order), ``strength`` the strength used and, for "auto", ``selection``.

    References: S. Zhang, H. Zhang, I. Colbert, R. Saab, Qronos, arXiv:2505.11695; H. Zhang,
    S. Zhang, I. Colbert, R. Saab, Provable PTQ, arXiv:2508.04853.
    Differs from Brevitas' ``qronos.py``, which warns and leaves the layer unquantized when
    the factorisation fails: here that raises.
    """
    m, N, n = check_layer_shapes(X, W, X_hat)
    inputs.check_common(grid, n, rounding, key, block_size, N=N)
    options.check_variant(variant)
    auto_strength, auto_lam = strength == "auto", isinstance(lam, str) and lam == "auto"
    if not auto_strength:
        strength = options.check_strength(strength, variant)
    elif variant != "ls_first":
        raise ValueError(f'`strength="auto"` needs `variant="ls_first"`; got variant={variant!r}')
    if auto_lam and variant != "ls_first":
        raise ValueError(f'`lam="auto"` needs `variant="ls_first"`; got variant={variant!r}')
    X, X_hat, W = inputs.as_arrays(("X", X), ("X_hat", X_hat), ("W", W))
    selection = None
    if auto_strength or auto_lam:
        selection = select.select(
            X, X_hat, W, grid, sequences=sequences, strength=strength, lam=lam,
            percdamp=percdamp, order=order, order_seed=order_seed)
        strength, lam, percdamp = selection.strength, selection.lam, None
    elif sequences is not None:
        raise ValueError('`sequences` is used only with strength="auto" or lam="auto"; got '
                         f"strength={strength!r}, lam={lam!r}")
    sq = gram.column_sq_norms(X_hat)
    perm, lam = inputs.resolve_order_and_lam(sq, order, order_seed, lam, percdamp)
    definiteness.check_rank(sq, lam=lam, m=m, name="X_hat")
    W_given = W
    if strength < 1 and not np.all(np.asarray(sq) > 0):
        W = jnp.where((sq == 0)[:, None], 0.0, W)  # dead features of X_hat, as OPTQ
    grid = inputs.realise_static(grid, per_channel_on=W_given, static_on=W)
    p = gather.gather_index(perm)
    W_p = gather.take_rows(W, p)
    if strength == 0:  # OPTQ on X_hat, computed as ptq.optq computes it
        R = _ordered_factor(gram.gram_sym(X_hat), lam, p)
        W_start, z1 = W_p, None
    else:
        XhXh, XhX = gram.gram_sym(X_hat), gram.gram(X_hat, X)
        if p is not None:  # into processing order, each gather its own program
            XhXh, XhX = gather.gather_sym(XhXh, p), gather.gather_sym(XhX, p)
        R, W_ls, z1 = _least_squares(XhXh, XhX, W_given if p is None else
                                     gather.take_rows(W_given, p), lam)
        W_start = W_ls if strength == 1 else _blend(W_p, W_ls, strength)
    result = run_ordered(
        R, W_start, grid, perm=perm, lam=lam, m=m, name="X_hat", rounding=rounding, key=key,
        block_size=block_size, z_first=z1 if variant == "paper" else None,
    )
    return result._replace(strength=float(strength), selection=selection)


@jax.jit
def _blend(W_p, W_ls, a):
    """``w_a = w' + a (wt - w')`` (processing order)."""
    return W_p + a * (W_ls - W_p)


@jax.jit
def _least_squares(XhXh, XhX, W, lam):
    """From ``X_hat^T X_hat``, ``X_hat^T X`` and ``W`` in processing order: the factor ``R`` of
    ``Hh``, ``wt = Hh^{-1} G w`` and ``z_1``."""
    N = XhXh.shape[0]
    Hh = gram.regularise(XhXh, lam)
    G = XhX + lam * jnp.eye(N, dtype=Hh.dtype)
    GW = jnp.dot(G, W, precision=HIGHEST)
    # Hh^{-1} = R^{-T} R^{-1}: two triangular solves with the factor the kernel uses.
    R = factor(Hh)
    solve = partial(jax.scipy.linalg.solve_triangular, R, lower=False)
    W_ls = solve(solve(GW, trans=0), trans=1)
    # z_1 = w_1 + ((G - Hh) w)_1 / Hh_11, row 0 being the first processed feature.
    z1 = W[0] + (GW[0] - jnp.dot(Hh[0], W, precision=HIGHEST)) / Hh[0, 0]
    return R, W_ls, z1
