"""Calibration matrices for the experiments: synthetic families and user-supplied files.

Every loader returns a `Layer` of float64 NumPy arrays, ``X`` (m, N), ``X_hat`` (m, N) and
``W`` (N, n), following DESIGN.md's shapes (``X @ W`` is the layer output). The synthetic
families are pure functions of the config and its seed (``numpy.random.default_rng``).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, NamedTuple

import numpy as np

from ptq.options import check_finite_numpy, check_layer_shapes

log = logging.getLogger(__name__)


class Layer(NamedTuple):
    X: np.ndarray  # (m, N) float64: inputs the full-precision layer sees
    X_hat: np.ndarray  # (m, N) float64: inputs the quantized layer sees (X when no mismatch)
    W: np.ndarray  # (N, n) float64: weights, features x neurons
    source: str  # where it came from (family, or the file path)


def gaussian(rng: np.random.Generator, m: int, N: int, **_: Any) -> np.ndarray:
    """i.i.d. N(0, 1) entries: generic data, full rank min(m, N)."""
    return rng.standard_normal((m, N))


def low_rank(rng: np.random.Generator, m: int, N: int, *, rank: int, noise: float, **_: Any):
    """``A B / sqrt(rank) + noise * G`` with A (m, rank), B (rank, N), G i.i.d. N(0, 1)."""
    rank = min(rank, m, N)
    signal = rng.standard_normal((m, rank)) @ rng.standard_normal((rank, N)) / np.sqrt(rank)
    return signal + noise * rng.standard_normal((m, N))


def heavy_tailed(rng: np.random.Generator, m: int, N: int, *, tail: float, **_: Any):
    """Gaussian columns rescaled by Pareto(tail) norms: a few dominant (outlier) features."""
    scales = 1.0 + rng.pareto(tail, size=N)
    return rng.standard_normal((m, N)) * scales


def correlated(rng: np.random.Generator, m: int, N: int, *, rho: float, **_: Any):
    """Rows N(0, C), ``C_ij = rho^|i-j|``: generated as an AR(1) process along the features."""
    G = rng.standard_normal((m, N))
    X = np.empty((m, N))
    X[:, 0] = G[:, 0]
    c = np.sqrt(1.0 - rho**2)
    for j in range(1, N):
        X[:, j] = rho * X[:, j - 1] + c * G[:, j]
    return X


FAMILIES: dict[str, Callable[..., np.ndarray]] = {
    "gaussian": gaussian,
    "low_rank": low_rank,
    "heavy_tailed": heavy_tailed,
    "correlated": correlated,
}


def perturb(rng: np.random.Generator, X: np.ndarray, mismatch: float, kind: str) -> np.ndarray:
    """The mismatched inputs ``X_hat`` (the inputs once earlier layers are quantized).

    ``noise``: ``X + mismatch * rms(X) * G``; ``rounding``: X rounded to the grid of step
    ``mismatch * rms(X)`` (a crude model of quantized activations). ``mismatch = 0`` gives X.
    """
    if mismatch == 0:
        return X.copy()
    rms = float(np.sqrt(np.mean(X**2)))
    if kind == "noise":
        return X + mismatch * rms * rng.standard_normal(X.shape)
    if kind == "rounding":
        step = mismatch * rms
        return step * np.floor(X / step + 0.5)
    raise ValueError(f"`mismatch_kind` must be 'noise' or 'rounding'; got {kind!r}")


def random_weights(rng: np.random.Generator, N: int, n: int) -> np.ndarray:
    """W with i.i.d. N(0, 1/N) entries (the usual fan-in initialisation scale)."""
    return rng.standard_normal((N, n)) / np.sqrt(N)


def synthetic(family: str, *, m: int, N: int, n: int, seed: int, mismatch: float = 0.0,
              mismatch_kind: str = "noise", **params: Any) -> Layer:
    """One synthetic layer. The three draws use independent streams of ``seed``, so changing
    ``mismatch`` leaves X and W unchanged (the mismatch figures compare like with like)."""
    if family not in FAMILIES:
        raise ValueError(f"`family` must be one of {sorted(FAMILIES)}; got {family!r}")
    rx, rw, rm = (np.random.default_rng([seed, k]) for k in range(3))
    X = FAMILIES[family](rx, m, N, **params)
    W = random_weights(rw, N, n)
    return Layer(X, perturb(rm, X, mismatch, mismatch_kind), W, family)


def _load_array(path: str, key: str | None, what: str) -> np.ndarray | None:
    if not os.path.isfile(path):
        raise ValueError(f"`data.{what}` must name an existing .npz or .npy file; got {path!r}")
    if path.endswith(".npy"):
        return np.load(path, allow_pickle=False)
    if not path.endswith(".npz"):
        raise ValueError(f"`data.{what}` must end in .npz or .npy; got {path!r}")
    with np.load(path, allow_pickle=False) as z:
        return np.array(z[key]) if key in z.files else None


def from_files(path: str, *, w_path: str | None = None, seed: int = 0, n: int = 16,
               mismatch: float = 0.0, mismatch_kind: str = "noise") -> Layer:
    """A layer from ``path`` (.npz with X [, X_hat, W], or .npy with X) and optional ``w_path``.

    Missing W is drawn N(0, 1/N) with ``n`` neurons from ``seed``; missing X_hat is X
    (perturbed by ``mismatch``, if nonzero). Shapes and finiteness are checked here, so a bad
    file fails before any run starts.
    """
    X = _load_array(path, "X", "path")
    if X is None:
        raise ValueError(f"`data.path` {path!r} must hold an array named 'X'; it does not")
    X_hat = _load_array(path, "X_hat", "path") if path.endswith(".npz") else None
    W = _load_array(path, "W", "path") if path.endswith(".npz") else None
    if w_path is not None:
        W = _load_array(w_path, "W", "w_path")
        if W is None:
            raise ValueError(f"`data.w_path` {w_path!r} must hold an array named 'W'; it does not")
    X = np.asarray(X, dtype=np.float64)
    if W is None:
        if X.ndim != 2:
            raise ValueError(f"`X` in {path!r} must be 2-D (m, N); got shape {X.shape}")
        W = random_weights(np.random.default_rng([seed, 1]), X.shape[1], n)
    W = np.asarray(W, dtype=np.float64)
    if X_hat is None:
        X_hat = perturb(np.random.default_rng([seed, 2]), X, mismatch, mismatch_kind) \
            if X.ndim == 2 else X
    elif mismatch:
        raise ValueError(f"`data.mismatch` must be 0 when {path!r} supplies X_hat; got {mismatch}")
    X_hat = np.asarray(X_hat, dtype=np.float64)
    check_layer_shapes(X, W, X_hat)
    for name, A in (("X", X), ("X_hat", X_hat), ("W", W)):
        check_finite_numpy(f"{name} in {path if name != 'W' or w_path is None else w_path}", A)
    return Layer(X, X_hat, W, os.path.abspath(path))


def load(data: Any, sources: dict[str, Callable[[Any], tuple]] | None = None) -> Layer:
    """The layer a `schema.DataConfig` (or a plain mapping with its fields) describes.

    ``sources``: the families that need a model, ``family -> loader(data)`` returning
    ``(X, X_hat, W, source)`` (the Hydra app passes ``{"real": minilm.layer_source}``);
    this module knows only the synthetic families and files.
    """
    get = data.get if isinstance(data, dict) else lambda k, d=None: getattr(data, k, d)
    family = get("family")
    family = getattr(family, "value", family)
    mismatch_kind = getattr(get("mismatch_kind"), "value", get("mismatch_kind"))
    if family == "npz":
        return from_files(get("path"), w_path=get("w_path"), seed=get("seed"), n=get("n"),
                          mismatch=get("mismatch"), mismatch_kind=mismatch_kind)
    if family in (sources or {}):
        return Layer(*sources[family](data))
    if family not in FAMILIES:
        known = sorted({"npz", *FAMILIES, *(sources or {})})
        raise ValueError(f"`data.family` must be one of {known}; got {family!r}")
    params = {k: get(k) for k in ("rank", "noise", "tail", "rho")}
    layer = synthetic(family, m=get("m"), N=get("N"), n=get("n"), seed=get("seed"),
                      mismatch=get("mismatch"), mismatch_kind=mismatch_kind, **params)
    log.debug("data %s: X %s, W %s", family, layer.X.shape, layer.W.shape)
    return layer
