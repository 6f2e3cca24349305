"""The MiniLM study (all-MiniLM-L6-v2, a 6-block BERT encoder): whole-encoder sequential
quantization, held-out cosine, and the layer data of the ``real`` data family.

    python -m experiments.studies.minilm  # default size, records in runs/default/real
    python -m experiments.studies.minilm --size smoke    # about a minute: 4 bits only
    python -m experiments.studies.minilm --size full     # every algorithm's bounds at bits 2-8

* `quantize_encoder`: the 36 linear layers quantized in forward order (per block: query, key,
  value, attention.output.dense, intermediate.dense, output.dense) by the model-agnostic
  driver `experiments.driver` with the `experiments.models.minilm` adapter (see there for
  what X and X_hat are, what each algorithm sees and what is measured per layer); end to end,
  the cosine similarity of the quantized and full-precision sentence embeddings on held-out
  text (never the calibration text). The full-precision inputs are cached per process.
* `layer_data` / `layer_source`: X, W, b and X_hat of one layer, the ``real`` family of the Hydra
  app's data (``data=real data.layer=3.intermediate``)::

      d = layer_data(3, "intermediate", n_tokens=2048, algorithm="optq", bits=4)
      d.X      # (2048, 384)  inputs of encoder.layer.3.intermediate.dense, full precision
      d.X_hat  # (2048, 384)  the same tokens' inputs once every earlier linear layer is
               #              quantized with OPTQ at 4 bits

* `STUDY`: the passes, records and resumption of `experiments.study` (record folder
  ``real``; sizes in ``conf/study/real.yaml``); figures `experiments.figures.real`.
"""

from __future__ import annotations

import functools
import numbers
import sys
import time
from typing import Any, Callable, Literal, NamedTuple

import numpy as np

from experiments import driver
from experiments.driver import LayerContext, Options, check_options
from experiments.figures import real as figures
from experiments.models.minilm import MiniLM, activations
from experiments.models.minilm.weights import KINDS, LAYER_NAMES, layer_name
from experiments.study import Outcome, Size, Study, load_sizes

Algorithm = Literal["rtn", "optq", "qronos"]


class EncoderResult(NamedTuple):
    records: list  # one dict per linear layer, forward order
    cosine: np.ndarray  # (S,) cosine of quantized vs full-precision held-out embeddings
    params: dict  # the quantized model's parameters (JAX float32)
    seconds: float  # wall time of the layer-by-layer quantization (activations included)

    @property
    def cosine_mean(self) -> float:
        return float(np.mean(self.cosine))


@functools.lru_cache(maxsize=1)
def _adapter() -> MiniLM:
    return MiniLM()


@functools.lru_cache(maxsize=2)
def _cache(n_tokens: int) -> driver.FullPrecisionCache:
    """The full-precision inputs of every layer at ``n_tokens`` (from `activations`, one
    forward pass) and, filled as runs need them, the float64 targets ``X @ W``."""
    cache = driver.FullPrecisionCache()
    cache.inputs.update(activations.full_precision(n_tokens).inputs)  # every linear layer's
    cache.complete = True
    return cache


def run(options: Options, *, n_tokens: int = activations.DEFAULT_TOKENS,
        stop_at: str | None = None, on_layer: Callable[[LayerContext], dict | None] | None = None):
    """Quantize layer by layer (`experiments.driver.quantize_model` on MiniLM).

    Returns ``(records, params)`` with params in `weights.Model.params`' layout
    (``{"embeddings", "layers"}``), or, with ``stop_at`` a layer name, the (m, N) inputs
    X_hat of that layer once every earlier linear layer is quantized.
    """
    o = check_options(options)
    if stop_at is not None and stop_at not in LAYER_NAMES:
        raise ValueError(f"`stop_at` must be a linear layer name such as {LAYER_NAMES[0]!r}; "
                         f"got {stop_at!r}")
    batch = activations.full_precision(n_tokens).batch
    out = driver.quantize_model(_adapter(), o, batch, on_layer=on_layer, stop_at=stop_at,
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
    o = driver.make_options(algorithm, bits, **options)
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
        None for X_hat = X. bits and **options: as `quantize_encoder`.
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
        o = Options(algorithm=algorithm, bits=bits, **options)
        X_hat = run(o, n_tokens=n_tokens, stop_at=name)
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


def layer_source(data) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
    """The ``real`` data family of `experiments.data.load`: one layer's float64 ``(X, X_hat,
    W, source)``, which `experiments.data` wraps in its `Layer`.

    Reads from the data config: ``layer`` ("3.intermediate" or the PyTorch name; default
    "0.query"), ``model`` (must be "all-MiniLM-L6-v2" or unset) and ``extra``:
    ``tokens`` (m, default 2048), ``upstream`` (algorithm quantizing the earlier layers:
    "rtn" | "optq" | "qronos", or None for X_hat = X), ``upstream_bits`` (default 4) and
    ``upstream_<option>`` for any other `Options` field (grid, mse, percdamp, ...).
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
           or k[len("upstream_"):] not in Options._fields]
    if bad:
        raise ValueError(f"unknown `data.extra` keys {bad}; expected tokens, upstream, "
                         f"upstream_bits, upstream_<{'|'.join(Options._fields[2:])}>")
    options = {k[len("upstream_"):]: v for k, v in extra.items()}
    d = layer_data(layer, kind, n_tokens=tokens, algorithm=upstream, bits=bits, **options)
    f64 = lambda a: np.asarray(a, dtype=np.float64)  # noqa: E731
    source = f"real:{MODEL_NAME}:{d.name}:tokens={tokens}:upstream={upstream}@{bits}"
    return f64(d.X), f64(d.X_hat), f64(d.W), source


SIZES = load_sizes("real", Size)  # conf/study/real.yaml


def execute(cfg: dict[str, Any], options: dict[str, Any], on_layer) -> Outcome:
    """One whole-encoder run and its held-out cosine."""
    res = quantize_encoder(n_tokens=cfg["tokens"], n_heldout=cfg["heldout"], on_layer=on_layer,
                           **options)
    quality = {"cosine_mean": res.cosine_mean, "cosine_min": float(res.cosine.min()),
               "heldout_n": int(res.cosine.size)}
    return Outcome(quality, res.records, res.seconds)


STUDY = Study("real", SIZES, execute, figures.build_all, "real", "cosine_mean")
main = STUDY.main

__all__ = ["EncoderResult", "LayerData", "SIZES", "STUDY", "execute", "heldout_cosine",
           "layer_data", "layer_source", "main", "parse_layer", "quantize_encoder", "run"]

if __name__ == "__main__":
    sys.exit(main())
