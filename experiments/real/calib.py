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


MODEL_NAME = "all-MiniLM-L6-v2"


def parse_layer(layer: str) -> tuple[int, str]:
    """``"3.intermediate"`` or ``"encoder.layer.3.intermediate.dense"`` -> ``(3,
    "intermediate")``."""
    s = str(layer)
    for i in range(6):
        for kind in KINDS:
            if s in (f"{i}.{kind}", layer_name(i, kind)):
                return i, kind
    raise ValueError(
        f"`data.layer` must be '<block 0-5>.<kind>' with kind in {KINDS} (e.g. '3.intermediate') "
        f"or a PyTorch name such as {layer_name(3, 'intermediate')!r}; got {layer!r}"
    )


def load(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The ``real`` data family of `experiments.data.load`: one layer's float64 ``(X, X_hat,
    W, source)``, which `experiments.data` wraps in its `Layer` (so this package never imports
    `experiments.data`).

    Reads from the data config: ``layer`` ("3.intermediate" or the PyTorch name; default
    "0.query"), ``model`` (must be "all-MiniLM-L6-v2" or unset) and ``extra``:
    ``tokens`` (m, default 2048), ``upstream`` (algorithm quantizing the earlier layers:
    "rtn" | "optq" | "qronos", or None for X_hat = X), ``upstream_bits`` (default 4) and
    ``upstream_<option>`` for any other `sequential.Options` field (grid, mse, percdamp, ...).
    """
    get = data.get if isinstance(data, dict) else lambda k, d=None: getattr(data, k, d)
    model = get("model")
    if model not in (None, MODEL_NAME):
        raise ValueError(f"`data.model` must be {MODEL_NAME!r} (or unset); got {model!r}")
    layer, kind = parse_layer(get("layer") or "0.query")
    extra = dict(get("extra") or {})
    tokens = int(extra.pop("tokens", activations.DEFAULT_TOKENS))
    upstream = extra.pop("upstream", None)
    bits = int(extra.pop("upstream_bits", 4))
    bad = [k for k in extra if not k.startswith("upstream_")
           or k[len("upstream_"):] not in sequential.Options._fields]
    if bad:
        raise ValueError(f"unknown `data.extra` keys {bad}; expected tokens, upstream, "
                         f"upstream_bits, upstream_<{'|'.join(sequential.Options._fields[2:])}>")
    options = {k[len("upstream_"):]: v for k, v in extra.items()}
    d = layer_data(layer, kind, n_tokens=tokens, algorithm=upstream, bits=bits, **options)
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    source = f"real:{MODEL_NAME}:{d.name}:tokens={tokens}:upstream={upstream}@{bits}"
    return f64(d.X), f64(d.X_hat), f64(d.W), source
