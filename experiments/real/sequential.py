"""Sequential post-training quantization of the whole encoder, layer by layer.

The 36 linear layers are quantized in forward order (per block: query, key, value,
attention.output.dense, intermediate.dense, output.dense). Layer ``i`` is quantized from its
own calibration inputs:

* ``X``: its inputs under the full-precision model (computed once, `activations`);
* ``X_hat``: its inputs under the partially quantized model, i.e. with layers ``< i`` already
  replaced by their quantized weights (recomputed stage by stage as quantization proceeds).

What each algorithm sees (as practitioners run them):

* ``"rtn"``: only ``W`` (round to nearest, no data);
* ``"optq"``: only ``X_hat``, ``Q = OPTQ(X_hat, W)`` (GPTQ's sequential mode);
* ``"qronos"``: both, ``Q = Qronos(X, X_hat, W)``, targeting ``X W`` from ``X_hat``.

Biases stay in full precision. Grids are fitted per neuron to ``W`` (`ptq.Grid.fit`), by
default GPTQ's asymmetric min-max grid; ``finite=False`` keeps the step on the infinite
alphabet (nothing clips, so the no-clipping bounds of THEORY.md section 4 all apply).

Measured per layer (float64, per neuron j = column of W): ``err2_j = ||X w_j - X_hat q_j||_2``
and ``errinf_j = ||X w_j - X_hat q_j||_inf`` (the error against the full-precision target),
``self2_j = ||X_hat (w_j - q_j)||_2`` (the error OPTQ controls, B1 with ``X_hat``), and for
Qronos the floor ``E_LS,j = sqrt(||X w_j - X_hat wt_j||^2 + lam ||w_j - wt_j||^2)``
(``wt = result.W_start``, THEORY.md I5/Q1), all through `experiments.run.measure`, the
measurement of synthetic runs. Bounds are the caller's: pass ``on_layer``.

End to end: the cosine similarity of the quantized and full-precision sentence embeddings on
held-out text (never the calibration text).
"""

from __future__ import annotations

import functools
import logging
import time
from functools import partial
from typing import Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import ptq
from experiments.real import activations, bert
from experiments.real.weights import KINDS, layer_name

Algorithm = Literal["rtn", "optq", "qronos"]
ALGORITHMS = ("rtn", "optq", "qronos")
LAYER_NAMES = tuple(layer_name(i, k) for i in range(6) for k in KINDS)

log = logging.getLogger(__name__)


class Options(NamedTuple):
    """How every layer is quantized (plain values, so it can be logged and recorded)."""

    algorithm: str = "optq"
    bits: int = 4
    grid: str = "asymmetric"  # ptq.Grid.fit kind: "asymmetric" (GPTQ min-max) | "symmetric"
    mse: bool = False  # GPTQ's clipping search in Grid.fit
    finite: bool = True  # False: the fitted step on the infinite alphabet step*Z (no clipping,
    #                      so every no-clipping bound applies; as conf/grid/unbounded.yaml)
    lam: float | None = None
    percdamp: float | None = None  # neither: ptq's default percdamp = 0.01
    order: str = "natural"
    rounding: str = "nearest"  # "stochastic": stochastic OPTQ / Qronos
    variant: str = "paper"  # Qronos only: "paper" | "ls_first"
    seed: int = 0  # stochastic rounding: key = fold_in(key(seed), layer index)
    block_size: int = 128


class LayerContext(NamedTuple):
    """Everything about one quantized layer, handed to ``on_layer`` (e.g. to compute bounds)."""

    name: str
    layer: int
    kind: str
    options: Options
    X: np.ndarray  # (m, N) float32: inputs under the full-precision model
    X_hat: np.ndarray  # (m, N) float32: inputs under the partially quantized model
    W: np.ndarray  # (N, n) float32 full-precision weights (PyTorch weight transposed)
    b: np.ndarray  # (n,) bias (kept in full precision)
    grid: ptq.Grid
    result: object  # ptq.Result (optq, qronos) or ptq.RTNResult (rtn)
    measured: dict  # per-neuron float64 measurements (`experiments.run.measure`)


class EncoderResult(NamedTuple):
    records: list  # one dict per linear layer, forward order
    cosine: np.ndarray  # (S,) cosine of quantized vs full-precision held-out embeddings
    params: dict  # the quantized model's parameters (JAX float32)
    seconds: float  # wall time of the layer-by-layer quantization (activations included)

    @property
    def cosine_mean(self) -> float:
        return float(np.mean(self.cosine))


def check_options(o: Options) -> Options:
    if o.algorithm not in ALGORITHMS:
        raise ValueError(f"`algorithm` must be one of {ALGORITHMS}; got {o.algorithm!r}")
    if o.algorithm == "rtn" and o.rounding != "nearest":
        raise ValueError(f"`rounding` must be 'nearest' for rtn; got {o.rounding!r}")
    return o


def make_grid(o: Options, W) -> ptq.Grid:
    """``Grid.fit(W, bits, kind=o.grid, per="neuron", mse=o.mse)``; its step on ``step*Z``
    when ``o.finite`` is False (as `experiments.run.make_grid`)."""
    grid = ptq.Grid.fit(W, o.bits, kind=o.grid, per="neuron", mse=o.mse)
    return grid if o.finite else ptq.Grid.symmetric(grid.step, None)


def quantize_layer(o: Options, X, X_hat, W, grid: ptq.Grid, key=None):
    """One layer with the chosen algorithm; returns the ptq result (``.Q`` is (N, n))."""
    common = dict(lam=o.lam, percdamp=o.percdamp, order=o.order, rounding=o.rounding,
                  key=key, block_size=o.block_size)
    if o.algorithm == "rtn":
        return ptq.rtn(W, grid)
    if o.algorithm == "optq":
        return ptq.optq(X_hat, W, grid, **common)
    return ptq.qronos(X, X_hat, W, grid, variant=o.variant, **common)


def measure(X, X_hat, W, Q, result, step, algorithm: str, target=None) -> tuple[dict, dict]:
    """`experiments.run.measure` of one layer (float64), and the record's fields from it.

    Returns ``(fields, measured)``: ``fields`` has err2, errinf, self2 (per neuron), rel_err,
    input_mismatch and, for Qronos, e_ls (from ``result.W_start``); ``measured`` is the full
    per-neuron dict the bound checks read. ``target``: ``X @ W`` in float64 if known.
    """
    from experiments import data, run as run_

    X64, Xh64, W64 = (np.asarray(a, np.float64) for a in (X, X_hat, W))
    layer = data.Layer(X64, Xh64, W64, "real")
    if target is None:
        target = X64 @ W64
    res = None if algorithm == "rtn" else result
    measured = run_.measure(layer, np.asarray(Q, np.float64), res, step, floors=False,
                            target=target)
    D2 = np.sum(measured["err2"] ** 2)
    fields = {
        "err2": measured["err2"], "errinf": measured["errinf"], "self2": measured["err2_self"],
        "rel_err": float(np.sqrt(D2 / np.sum(target**2))),
        "input_mismatch": float(np.linalg.norm(X64 - Xh64) / np.linalg.norm(X64)),
    }
    if algorithm == "qronos":
        wt = np.asarray(result.W_start, np.float64)
        fields["e_ls"] = np.sqrt(np.sum((target - Xh64 @ wt) ** 2, axis=0)
                                 + result.lam * np.sum((W64 - wt) ** 2, axis=0))
    return fields, measured


@functools.lru_cache(maxsize=None)
def _target(i: int, kind: str, n_tokens: int) -> np.ndarray:
    """``X @ W`` of layer (i, kind) in float64: the same in every run at these tokens."""
    X = activations.full_precision(n_tokens).inputs[layer_name(i, kind)]
    W = activations.model().params["layers"][i][kind][0]
    return np.asarray(X, np.float64) @ np.asarray(W, np.float64)


@partial(jax.jit, static_argnums=(5,))
def _attention(h, mask, q, k, v, heads):
    return bert.attention(h, mask, q, k, v, heads)


_attn_residual = jax.jit(bert.attn_residual, static_argnums=(4,))
_ffn_act = jax.jit(bert.ffn_act)
_ffn_residual = jax.jit(bert.ffn_residual, static_argnums=(4,))
_embed = jax.jit(bert.embed, static_argnums=(2,))


def run(options: Options, *, n_tokens: int = activations.DEFAULT_TOKENS,
        stop_at: str | None = None, on_layer: Callable[[LayerContext], dict | None] | None = None):
    """Quantize layer by layer; the engine behind `quantize_encoder` and `calib.layer_data`.

    Returns ``(records, params)``, or, with ``stop_at`` a layer name, the (m, N) inputs
    X_hat of that layer once every earlier linear layer is quantized.
    """
    o = check_options(options)
    if stop_at is not None and stop_at not in LAYER_NAMES:
        raise ValueError(f"`stop_at` must be a linear layer name such as {LAYER_NAMES[0]!r}; "
                         f"got {stop_at!r}")
    loaded = activations.model()
    cfg = loaded.config
    fp = activations.full_precision(n_tokens)
    mask = jnp.asarray(fp.batch.mask)
    rows = fp.rows
    base = jax.random.key(o.seed)
    qlayers = [dict(p) for p in loaded.params["layers"]]
    records = []
    h = _embed(loaded.params["embeddings"], jnp.asarray(fp.batch.ids), cfg.eps)
    index = 0

    def step(i, kind, x):
        """Quantize layer (i, kind) from the padded input ``x``; None when stopping here."""
        nonlocal index
        name = layer_name(i, kind)
        X_hat = np.asarray(bert.gather(x, rows))
        if name == stop_at:
            return X_hat
        X = fp.inputs[name]
        W, b = loaded.params["layers"][i][kind]
        grid = make_grid(o, W)
        key = jax.random.fold_in(base, index) if o.rounding == "stochastic" else None
        t0 = time.perf_counter()
        res = quantize_layer(o, X, X_hat, W, grid, key)
        Q = jnp.asarray(res.Q, jnp.float32)
        Q.block_until_ready()
        seconds = time.perf_counter() - t0
        qlayers[i][kind] = (Q, b)
        rec = {"name": name, "layer": i, "kind": kind, "index": index, **o._asdict(),
               "m": X.shape[0], "N": W.shape[0], "n": W.shape[1],
               "lam": float(getattr(res, "lam", 0.0)), "seconds": seconds,
               "step": np.asarray(grid.step, np.float64)}
        step_n = np.broadcast_to(np.asarray(grid.step, np.float64), (W.shape[1],))
        # the algorithm's own Q (float64 in x64 mode), not the float32 copy the model runs
        fields, measured = measure(X, X_hat, W, res.Q, res, step_n, o.algorithm,
                                   _target(i, kind, n_tokens))
        rec.update(fields)
        if on_layer is not None:
            extra = on_layer(LayerContext(name, i, kind, o, X, X_hat, np.asarray(W),
                                          np.asarray(b), grid, res, measured))
            rec.update(extra or {})
        log.debug("%s %s %d bits: rel_err %.4g (%.2fs)", name, o.algorithm, o.bits,
                 rec["rel_err"], seconds)
        records.append(rec)
        index += 1
        return None

    for i in range(cfg.layers):
        p = qlayers[i]
        for kind in ("query", "key", "value"):  # one input for the three: the block input
            if (out := step(i, kind, h)) is not None:
                return out
        ctx = _attention(h, mask, p["query"], p["key"], p["value"], cfg.heads)
        if (out := step(i, "attn_out", ctx)) is not None:
            return out
        h1 = _attn_residual(ctx, h, p["attn_out"], p["ln_attn"], cfg.eps)
        if (out := step(i, "intermediate", h1)) is not None:
            return out
        a = _ffn_act(h1, p["intermediate"])
        if (out := step(i, "output", a)) is not None:
            return out
        h = _ffn_residual(a, h1, p["output"], p["ln_out"], cfg.eps)
    params = {"embeddings": loaded.params["embeddings"], "layers": qlayers}
    return records, params


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
    unknown = set(options) - set(Options._fields)
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)}; expected some of {Options._fields}")
    o = Options(algorithm=algorithm, bits=bits, **options)
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
