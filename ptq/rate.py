"""The rate of a set of integer codes: their empirical entropy (NumPy only).

A quantizer's fixed rate is the bit-width of its grid; its *entropy-coded* rate is what an
ideal entropy coder of the codes would spend, estimated here from the codes themselves. The
estimator is the plug-in entropy of the empirical distribution with the Miller-Madow
correction,

    H_hat = - sum_k p_k log2 p_k + (K - 1) / (2 s ln 2),

for ``s`` symbols taking ``K`` distinct values: the correction removes the first-order bias
``-(K - 1) / (2 s ln 2)`` of the plug-in estimate (which underestimates the entropy). With
``per="row"`` the codes of each feature (row of the (N, n) code matrix: one input feature's
weights across the n neurons) are coded with a table of their own and the rate is the mean
over rows, the conditional entropy ``H(k | t)``; ``per="layer"`` pools all ``N n`` codes into
one table. Table costs (side information) are not counted; neither is the (n,) or (N, n)
step itself. `theory.rate_distortion` and `ptq.optq_waterfill` share this definition, so the
rate a quantizer is matched at and the rate it is reported at are the same number.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

PER = ("row", "layer")


def entropy_bits(symbols) -> float:
    """Miller-Madow corrected plug-in entropy (bits per symbol) of a 1-D integer sample."""
    x = np.asarray(symbols).ravel()
    if x.size == 0:
        raise ValueError("`symbols` must be non-empty; got an empty array")
    _, counts = np.unique(x, return_counts=True)
    p = counts / x.size
    return float(-np.sum(p * np.log2(p)) + (counts.size - 1) / (2 * x.size * np.log(2)))


def code_entropy(codes, *, per: Literal["row", "layer"] = "row") -> float:
    """Entropy-coded rate, bits per weight, of the (N, n) integer ``codes`` of one layer.

    Args:
      codes: (N, n) integer codes (rows are input features, columns neurons). Pass the signed
        grid index ``codes - zero`` when zero points differ across neurons, so that equal
        values share a symbol.
      per: ``"row"``: the mean over features of each row's entropy, ``H(k | t)`` (one table
        per input feature); ``"layer"``: one pooled table.
    """
    if per not in PER:
        raise ValueError(f"`per` must be one of {PER}; got {per!r}")
    c = np.asarray(codes)
    if c.ndim != 2 or c.size == 0:
        raise ValueError(f"`codes` must be a non-empty 2-D array (N, n); got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        if not np.all(np.isfinite(c)) or not np.all(c == np.round(c)):
            raise ValueError("`codes` must be integer-valued; got non-integer entries")
        c = c.astype(np.int64)
    if per == "layer":
        return entropy_bits(c)
    return float(np.mean([entropy_bits(row) for row in c]))
