"""Sequential post-training quantization of the whole MiniLM encoder, layer by layer.

The 36 linear layers are quantized in forward order (per block: query, key, value,
attention.output.dense, intermediate.dense, output.dense) by the one model-agnostic driver,
`experiments.quantize_model`, with the `experiments.models.minilm` adapter: see there for
what X and X_hat are, what each algorithm sees and what is measured per layer. The
full-precision inputs and targets are cached per process (`activations.full_precision`), so
repeated runs on the same tokens compute them once.

End to end: the cosine similarity of the quantized and full-precision sentence embeddings on
held-out text (never the calibration text).
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Literal, NamedTuple

import numpy as np

from experiments import quantize_model as qm
from experiments.quantize_model import ALGORITHMS, LayerContext, Options, check_options
from experiments.real import activations
from experiments.real.weights import KINDS, layer_name

Algorithm = Literal["rtn", "optq", "qronos"]
LAYER_NAMES = tuple(layer_name(i, k) for i in range(6) for k in KINDS)


class EncoderResult(NamedTuple):
    records: list  # one dict per linear layer, forward order
    cosine: np.ndarray  # (S,) cosine of quantized vs full-precision held-out embeddings
    params: dict  # the quantized model's parameters (JAX float32)
    seconds: float  # wall time of the layer-by-layer quantization (activations included)

    @property
    def cosine_mean(self) -> float:
        return float(np.mean(self.cosine))


@functools.lru_cache(maxsize=1)
def _adapter():
    from experiments.models.minilm import MiniLM

    return MiniLM()


@functools.lru_cache(maxsize=2)
def _cache(n_tokens: int) -> qm.FullPrecisionCache:
    """The full-precision inputs of every layer at ``n_tokens`` (from `activations`, one
    forward pass) and, filled as runs need them, the float64 targets ``X @ W``."""
    cache = qm.FullPrecisionCache()
    cache.inputs.update(activations.full_precision(n_tokens).inputs)  # every linear layer's
    cache.complete = True
    return cache


def run(options: Options, *, n_tokens: int = activations.DEFAULT_TOKENS,
        stop_at: str | None = None, on_layer: Callable[[LayerContext], dict | None] | None = None):
    """Quantize layer by layer (`experiments.quantize_model.quantize_model` on MiniLM).

    Returns ``(records, params)`` with params in `weights.Model.params`' layout
    (``{"embeddings", "layers"}``), or, with ``stop_at`` a layer name, the (m, N) inputs
    X_hat of that layer once every earlier linear layer is quantized.
    """
    o = check_options(options)
    if stop_at is not None and stop_at not in LAYER_NAMES:
        raise ValueError(f"`stop_at` must be a linear layer name such as {LAYER_NAMES[0]!r}; "
                         f"got {stop_at!r}")
    batch = activations.full_precision(n_tokens).batch
    out = qm.quantize_model(_adapter(), o, batch, on_layer=on_layer, stop_at=stop_at,
                            cache=_cache(n_tokens))
    if stop_at is not None:
        return out
    records, params = out
    return records, {"embeddings": params["embeddings"], "layers": params["blocks"]}


def quantize_encoder(algorithm: Algorithm = "optq", bits: int = 4, *,
                     n_tokens: int = activations.DEFAULT_TOKENS,
                     n_heldout: int | None = activations.DEFAULT_HELDOUT,
                     on_layer: Callable[[LayerContext], dict | None] | None = None,
                     **options) -> EncoderResult:
    """Quantize all 36 linear layers in forward order; evaluate on held-out text.

    Args:
      algorithm: "rtn", "optq" (sees X_hat only) or "qronos" (sees X and X_hat).
      bits: grid bits (2..8 in the experiments).
      n_tokens: calibration tokens m (rows of every X).
      n_heldout: held-out sequences for the end-to-end cosine (None: all 177).
      on_layer: called with a `LayerContext` after each layer; the dict it returns is merged
        into that layer's record (the hook for the `theory` bounds).
      **options: the other fields of `Options` (grid, mse, finite, lam, percdamp, order,
        rounding, variant, seed, block_size).

    Returns:
      `EncoderResult`: per-layer records (dicts: name, layer, kind, options, m, N, n, lam,
      seconds, step (n,), err2 (n,), errinf (n,), self2 (n,), rel_err, input_mismatch, and
      e_ls (n,) for qronos), per-sentence held-out cosines, quantized params, wall time.
    """
    o = qm.make_options(algorithm, bits, **options)
    t0 = time.perf_counter()
    records, params = run(o, n_tokens=n_tokens, on_layer=on_layer)
    seconds = time.perf_counter() - t0
    return EncoderResult(records, heldout_cosine(params, n_heldout), params, seconds)


def heldout_cosine(params, n_heldout: int | None = activations.DEFAULT_HELDOUT) -> np.ndarray:
    """Per-sentence cosine of ``params``' embeddings with the full-precision ones (held-out)."""
    loaded = activations.model()
    ref = activations.heldout_embeddings(n_heldout)
    emb = activations.encode_sequences(params, activations.heldout_sequences(n_heldout),
                                       loaded.config)
    num = np.sum(ref.astype(np.float64) * emb, axis=1)
    return num / (np.linalg.norm(ref.astype(np.float64), axis=1) * np.linalg.norm(emb, axis=1))
