"""Calibration matrices of one real layer: X, W, b and X_hat, chosen by block and kind.

    from experiments.real import layer_data
    d = layer_data(3, "intermediate", n_tokens=2048, algorithm="optq", bits=4)
    d.X      # (2048, 384)  inputs of encoder.layer.3.intermediate.dense, full-precision model
    d.W      # (384, 1536)  weights, features x neurons (PyTorch's weight transposed)
    d.b      # (1536,)      bias
    d.X_hat  # (2048, 384)  the same tokens' inputs once layers 0..2 and the four linear
             #              layers before it in block 3 are quantized with OPTQ at 4 bits
"""

from __future__ import annotations

import numbers
from typing import NamedTuple

import numpy as np

from experiments.real import activations, sequential
from experiments.real.weights import KINDS, layer_name


class LayerData(NamedTuple):
    name: str  # PyTorch module name, e.g. "encoder.layer.3.intermediate.dense"
    layer: int
    kind: str
    X: np.ndarray  # (m, N) float32: inputs under the full-precision model, m = n_tokens
    W: np.ndarray  # (N, n) float32: nn.Linear.weight transposed, so the layer is X @ W + b
    b: np.ndarray  # (n,) float32
    X_hat: np.ndarray  # (m, N) float32: inputs with all earlier linear layers quantized
    #                    (equal to X when algorithm is None)
    lengths: np.ndarray  # (B,) tokens per calibration sequence; rows of X are grouped by them


def layer_data(layer: int, kind: str, *, n_tokens: int = activations.DEFAULT_TOKENS,
               algorithm: str | None = None, bits: int = 4, **options) -> LayerData:
    """X, W, b and X_hat of one linear layer of the real model.

    Args:
      layer: block index 0..5.
      kind: "query", "key", "value", "attn_out" (attention.output.dense), "intermediate"
        (intermediate.dense) or "output" (output.dense).
      n_tokens: calibration tokens m (non-padding tokens of the calibration text).
      algorithm: how the earlier linear layers are quantized ("rtn", "optq", "qronos"), or
        None for X_hat = X. bits and **options: as `sequential.quantize_encoder`.
    """
    if isinstance(layer, bool) or not isinstance(layer, numbers.Integral) or not 0 <= layer < 6:
        raise ValueError(f"`layer` must be an integer in [0, 5]; got {layer!r}")
    if kind not in KINDS:
        raise ValueError(f"`kind` must be one of {KINDS}; got {kind!r}")
    name = layer_name(int(layer), kind)
    fp = activations.full_precision(n_tokens)
    W, b = activations.model().params["layers"][layer][kind]
    X = fp.inputs[name]
    if algorithm is None:
        if options:
            raise ValueError(f"options {sorted(options)} need an `algorithm`; got algorithm=None")
        X_hat = X
    else:
        o = sequential.Options(algorithm=algorithm, bits=bits, **options)
        X_hat = sequential.run(o, n_tokens=n_tokens, stop_at=name)
    return LayerData(name, int(layer), kind, X, np.asarray(W), np.asarray(b), X_hat,
                     fp.batch.lengths)
