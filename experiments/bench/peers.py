"""The peers: the canonical PyTorch GPTQ (written here from the paper) and qwix's GPTQ.

Both are optional (`pip install -e ".[bench]"`); `torch_missing()` / `qwix_missing()` give the
reason a peer is skipped, or None when it can run.

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
from typing import Any, NamedTuple

import numpy as np


def torch_missing() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "torch is not installed (optional: pip install -e '.[bench]')"
    return None


def qwix_missing() -> str | None:
    if importlib.util.find_spec("qwix") is None:
        return "qwix is not installed (optional: pip install -e '.[bench]')"
    return None


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
