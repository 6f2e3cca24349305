"""The peers: the canonical PyTorch GPTQ (written here from the paper), qwix's GPTQ and
Brevitas' Qronos.

All are optional (`pip install -e ".[bench]"`); `torch_missing()` / `qwix_missing()` /
`brevitas_missing()` give the reason a peer is skipped, or None when it can run.

Canonical GPTQ (Frantar et al., arXiv:2210.17323, Algorithm 1, as in the authors' ``gptq.py``):
``W`` is (rows, columns) = (n, N) (``nn.Linear.weight``); ``H = X^T X``; dead columns
(``H_jj = 0``) get ``H_jj = 1`` and ``W[:, j] = 0``; ``H += percdamp * mean(diag(H)) I``;
``Hinv = chol(cholesky_inverse(chol(H)), upper)``; then for lazy blocks of B columns a Python
loop over columns: ``q = Q(w)``, ``err = (w - q) / Hinv_ii``,
``W1[:, i:] -= err Hinv1[i, i:]``, and after the block ``W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]``.
The quantizer is GPTQ's per-row min-max asymmetric one:
``scale = (xmax - xmin) / maxq``, ``zero = round(-xmin / scale)``,
``Q(x) = scale * (clamp(round(x / scale) + zero, 0, maxq) - zero)`` with ``xmin <= 0 <= xmax``.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from functools import partial
from typing import Any, NamedTuple

import numpy as np


def _missing(package: str) -> str | None:
    """Why ``package`` (an optional extra) cannot be used, or None."""
    if importlib.util.find_spec(package) is None:
        return f"{package} is not installed (optional: pip install -e '.[bench]')"
    return None


def torch_missing() -> str | None:
    return _missing("torch")


def qwix_missing() -> str | None:
    return _missing("qwix")


def brevitas_missing() -> str | None:
    return _missing("brevitas")


# ----------------------------------------------------------------------------- torch GPTQ
class TorchGPTQ(NamedTuple):
    Q: Any  # (n, N) torch tensor: dequantized weights
    Losses: Any  # (n, N): the per-entry losses of the reference code


def torch_minmax_params(W, bits: int):
    """GPTQ's ``Quantizer.find_params`` (per channel, asymmetric): ``scale``, ``zero`` (n, 1)."""
    import torch

    maxq = 2**bits - 1
    zero_ = torch.zeros(W.shape[0], dtype=W.dtype)
    xmin = torch.minimum(W.min(1).values, zero_)
    xmax = torch.maximum(W.max(1).values, zero_)
    both = (xmin == 0) & (xmax == 0)
    xmin[both], xmax[both] = -1, 1
    scale = (xmax - xmin) / maxq
    zero = torch.round(-xmin / scale)
    return scale.unsqueeze(1), zero.unsqueeze(1)


def _quantize(x, scale, zero, maxq):
    import torch

    q = torch.clamp(torch.round(x / scale) + zero, 0, maxq)
    return scale * (q - zero)


def torch_factor(H, percdamp: float):
    """Dampen ``H`` (in place) and return GPTQ's ``Hinv``: the three factorisations."""
    import torch

    N = H.shape[0]
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(N)
    H[diag, diag] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True)


def torch_gptq(W, H, scale, zero, *, bits: int = 4, blocksize: int = 128, percdamp: float = 0.01):
    """Canonical GPTQ ``fasterquant`` (natural order, one group) from ``H``; inputs not modified.

    Args:
      W: (n, N) torch float tensor, rows = output neurons.
      H: (N, N) ``X^T X``. scale, zero: (n, 1) the min-max grid (`torch_minmax_params`).
    """
    import torch

    W = W.clone()
    H = H.clone()
    maxq = 2**bits - 1
    N = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    Hinv = torch_factor(H, percdamp)
    Q = torch.zeros_like(W)
    Losses = torch.zeros_like(W)
    for i1 in range(0, N, blocksize):
        i2 = min(i1 + blocksize, N)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Losses1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            q = _quantize(w.unsqueeze(1), scale, zero, maxq).flatten()
            Q1[:, i] = q
            Losses1[:, i] = (w - q) ** 2 / d**2
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        Q[:, i1:i2] = Q1
        Losses[:, i1:i2] = Losses1 / 2
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return TorchGPTQ(Q, Losses)


def torch_gram(X):
    """``H = X^T X`` in torch (X (m, N)); the reference accumulates the same sum by batches."""
    return X.T.matmul(X)


def to_torch(A: np.ndarray):
    import torch

    return torch.from_numpy(np.array(A, order="C", copy=True))  # writable, owned by torch


# ----------------------------------------------------------------------------- qwix
def qwix_runner(bits: int = 4):
    """``f(W_rows, X)`` running qwix's GPTQ eagerly, H included (``compute_hessian``).

    qwix 0.1.8's asymmetric per-row mode fails, so its symmetric default (absmax per row,
    ``channelwise_axes=(0,)``) is used: the same algorithm and the same amount of work on a
    different grid. ``W_rows`` is (n, N), ``X`` (m, N).
    """
    import jax.numpy as jnp
    from qwix._src.core import qarray
    from qwix.contrib import gptq_core

    qtype = {4: jnp.int4, 8: jnp.int8}.get(bits)
    if qtype is None:
        raise ValueError(f"`bits` must be 4 or 8 for qwix; got {bits}")
    how = qarray.HowToQuantize(qtype=qtype, channelwise_axes=(0,))

    def run(W_rows, X):
        H = gptq_core.compute_hessian(X.T)
        q, losses = gptq_core.quantize_weight(W_rows, H, how, blocksize=128, percdamp=0.01)
        return q.qvalue, losses

    return run


# ----------------------------------------------------------------------------- Brevitas Qronos
class BrevitasQronos(NamedTuple):
    """What `brevitas_qronos` returns (torch tensors in the layer's dtype, rows = neurons)."""

    Q: Any  # (n, N): the quantized weights, ``layer.quant_weight()`` after Qronos
    codes: Any  # (n, N) uint8: its integer codes, ``Q = scale * (codes - zero_point)``
    scale: Any  # (n, 1): the grid step of each neuron
    zero_point: Any  # (n, 1): the integer zero point of each neuron
    alpha: float  # the damping Brevitas was given, relative to its lambda_max(H) estimate
    gram_s: float  # seconds in the two hooked forward passes (H and G accumulated)
    update_s: float  # seconds in ``Qronos.single_layer_update`` (the algorithm from H, G)


def _brevitas_imports():
    """Brevitas' modules. Importing them warns that an optional CUDA kernel is absent and
    that ``brevitas.fx`` (which ``brevitas.graph`` imports itself) is deprecated: not ours."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="fast_hadamard_transform")
        warnings.filterwarnings("ignore", message="brevitas.fx is deprecated")
        import brevitas.nn as qnn
        from brevitas.core.zero_point import ParameterFromStatsFromParameterZeroPoint
        from brevitas.graph.gpfq import gpfq_mode
        from brevitas.graph.qronos import Qronos
        from brevitas.graph.utils import power_iteration
        from brevitas.inject.enum import ScalingImplType
        from brevitas.quant import ShiftedUint8WeightPerChannelFloat
    return (qnn, ParameterFromStatsFromParameterZeroPoint, gpfq_mode, Qronos, power_iteration,
            ScalingImplType, ShiftedUint8WeightPerChannelFloat)


def brevitas_alpha(X_hat, percdamp: float = 0.01) -> float:
    """Brevitas' ``alpha`` that makes its damping equal GPTQ's ``percdamp * mean(diag(H))``.

    Brevitas' Qronos damps ``H = X_hat^T X_hat / m`` (and its ``G``) by
    ``alpha * power_iteration(H, 30)``, a seeded 30-step estimate of ``lambda_max(H)``
    (default ``alpha = 1e-6``); ptq damps ``X_hat^T X_hat`` by ``percdamp`` times the mean of
    its diagonal. Computing H and the same estimate here (as Brevitas does, in X_hat's dtype)
    gives the alpha for which the two agree (the scale 1/m cancels), up to rounding.
    """
    import torch

    power_iteration = _brevitas_imports()[4]
    Xs = X_hat / math.sqrt(X_hat.shape[0])
    H = Xs.T.matmul(Xs)
    return float(percdamp * torch.mean(torch.diag(H)) / power_iteration(H, 30))


def _feed_model(layer, X, X_hat):
    """The module Brevitas' `gpfq_mode` drives: ``layer`` (a `QuantLinear`) fed ``X_hat``
    while its weight quantization is on and ``X`` while it is off (see `brevitas_qronos`)."""
    import torch

    class Feed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self):
            # gpfq_mode's first pass runs with quantization on (the quantized model, whose
            # input is X_hat), its second with it off (the float model, whose input is X).
            quantized = self.layer.weight_quant.is_quant_enabled
            return self.layer(X_hat if quantized else X)

    return Feed()


def brevitas_qronos(X, X_hat, W_rows, *, bits: int = 4, percdamp: float = 0.01,
                    block_size: int = 128, alpha: float | None = None) -> BrevitasQronos:
    r"""Brevitas' Qronos (``brevitas.graph.qronos.Qronos`` through ``gpfq_mode``) on one layer.

    The same work as ``ptq.qronos(X, X_hat, W, grid, percdamp=percdamp, variant="paper")``
    with ``W = W_rows.T`` and ``grid = ptq.Grid.fit(W, bits, kind="asymmetric",
    per="neuron")``, natural order:

    * the layer is a ``brevitas.nn.QuantLinear(N, n, bias=False)`` holding ``W_rows``, its
      weight quantizer Brevitas' ``ShiftedUint8WeightPerChannelFloat`` at ``bits`` bits: per
      output channel, ``scale = (max(w, 0) - min(w, 0)) / (2^bits - 1)``,
      ``zero_point = round(-min(w, 0) / scale)``, ``Q(w) = scale (clamp(round(w / scale) +
      zero_point, 0, 2^bits - 1) - zero_point)``: GPTQ's ``find_params``. Its scale and zero
      point are made ``PARAMETER_FROM_STATS`` and set by one ``quant_weight()`` call before
      Qronos, so they are fitted to the original W and then fixed (Brevitas' default
      ``STATS`` would refit them to the partly updated weights at every column); Brevitas
      refuses to run on an uninitialised one;
    * calibration: ``gpfq_mode(model, algorithm_impl=partial(Qronos, alpha=alpha,
      num_blocks=ceil(N / block_size)))`` and one forward pass. gpfq_mode calls the model
      twice, weight quantization on then off, and Qronos' forward pre-hook accumulates
      ``H = X_hat^T X_hat / m`` from the first call's input and ``G = X^T X_hat / m`` from
      the second's; the model (`_feed_model`) feeds X_hat to the first and X to the second, which
      is what a partially quantized network upstream of the layer would do. Then
      ``gpfq.update()`` runs ``Qronos.single_layer_update``;
    * damping: ``alpha`` from `brevitas_alpha` (``lam = percdamp * mean(diag(X_hat^T
      X_hat))``, as ptq), added to H and to G as in ptq's ``Hh`` and ``G``.

    Brevitas 0.13.4 implements the **paper** variant of `ptq.qronos`: its step 1 rounds
    ``z_1 = (x_hat_1^T X w - x_hat_1^T X_hat_{>1} w_{>1}) / ||x_hat_1||^2`` (w_1 corrected
    for the mismatch, not the least-squares ``wt_1``), then re-fits
    ``w_{>1} = Hh_{>1}^{-1} (G_{>1} w - Hh_{>1,1} q_1)`` (one Sherman-Morrison downdate of
    ``Hh^{-1}``) and runs GPTQ's lazy-block loop with ``chol(Hh_{>1}^{-1})``. Differs from
    ptq's ``z_1 = w_1 + ((G - Hh) w)_1 / Hh_11`` only in leaving lam out of ``z_1``, an
    O(lam / ||x_hat_1||^2) relative change to the correction;
    `experiments.bench.agreement.brevitas_agreement` measures both variants against it.

    Args:
      X, X_hat: (m, N) torch float tensors (float32 or float64: the layer and Brevitas'
        buffers take this dtype). W_rows: (n, N) the weights, ``nn.Linear.weight`` layout.
      bits: grid bits. percdamp: relative damping (ignored when alpha is given).
      block_size: Brevitas' lazy-block width, through ``num_blocks = ceil(N / block_size)``.
      alpha: Brevitas' damping relative to its lambda_max estimate; None: `brevitas_alpha`.

    Returns:
      `BrevitasQronos`.

    Raises:
      RuntimeError: Brevitas warned that a factorisation failed (it then leaves the layer
        unquantized and returns normally; here that is an error).
    """
    import torch

    (qnn, ZeroPointFromStats, gpfq_mode, Qronos, _, ScalingImplType,
     ShiftedUint8WeightPerChannelFloat) = _brevitas_imports()

    class WeightQuant(ShiftedUint8WeightPerChannelFloat):
        bit_width = bits
        scaling_impl_type = ScalingImplType.PARAMETER_FROM_STATS
        zero_point_impl = ZeroPointFromStats

    n, N = W_rows.shape
    if alpha is None:
        alpha = brevitas_alpha(X_hat, percdamp)
    layer = qnn.QuantLinear(N, n, bias=False, weight_quant=WeightQuant, dtype=X.dtype)
    with torch.no_grad():
        layer.weight.copy_(W_rows)
        layer.quant_weight()  # fits scale and zero point to W and fixes them
        algorithm = partial(Qronos, alpha=alpha, num_blocks=math.ceil(N / block_size))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with gpfq_mode(_feed_model(layer, X, X_hat), algorithm_impl=algorithm,
                           dtype=X.dtype) as gpfq:
                t0 = time.perf_counter()
                gpfq.model()  # both hooked passes: H from X_hat, G from X
                t1 = time.perf_counter()
                gpfq.update()  # Qronos.single_layer_update
                t2 = time.perf_counter()
        failed = [w for w in caught if "Failed to compute" in str(w.message)]
        if failed:
            raise RuntimeError(f"Brevitas' Qronos did not quantize: {failed[0].message}")
        qt = layer.quant_weight()
    return BrevitasQronos(qt.value, qt.int(), qt.scale, qt.zero_point, float(alpha),
                          t1 - t0, t2 - t1)
