"""Quantized real models as packed GPTQ checkpoints (`ptq.pack`), reloaded for the JAX forward.

    python -m experiments.studies.checkpoint                        # MiniLM, OPTQ 4-bit per channel
    python -m experiments.studies.checkpoint --model minilm smollm2 --bits 2 3 4 8 \
        --dtype float16 float32 --table figures/checkpoint_size.csv   # the committed table
    python -m experiments.studies.checkpoint --model smollm2 --bits 4 --calib 4

Each run quantizes every linear layer with the one sequential driver
(`experiments.driver`), collects each layer's codes and grid through its ``on_layer``
hook, writes
``runs/checkpoints/<model>-<algorithm>-<asym|symm>-<b>b-g<group size>[-static]-<dtype>/``
(``model.safetensors`` + ``quantize_config.json``), reads it back into the adapter's parameters
and scores both on held-out text (MiniLM: cosine of the sentence embeddings with the
full-precision model; SmolLM2: perplexity).

What the file holds:

* every linear layer as ``<name>.qweight``, ``.qzeros``, ``.scales`` (float16), ``.g_idx``,
  ``name`` as the model's own checkpoint spells it (``encoder.layer.0.attention.self.query``,
  ``model.layers.0.self_attn.q_proj``);
* every other tensor -- embeddings, layer norms, biases -- under its Hugging Face name in
  ``--dtype`` (float16 by default, as GPTQ checkpoints ship the unquantized tensors; float32
  keeps them exact). SmolLM2's output embedding is tied to the input one and stored once.

Reloading gives the linear weights ``fp16(scale) * (code - zero)`` in float32: bit for bit the
in-memory quantized model's codes on its steps rounded to float16 (`stored_weights`), so with
``--dtype float32`` the reloaded model *is* that model and its outputs are identical. Against
the in-memory model with float32 steps, each weight differs by its scale's float16 rounding
(relative <= 2^-11; the run prints the measured maximum and the held-out scores of both).

Group-wise grids flow through unchanged: the realised grid (``result.grid``, step (N, n), one
row per input feature, the step of its group) is compressed to its (G, n) table with
``result.g_idx``, or where a result has none, ``j // group_size`` (natural order or static
groups) or ``order^-1(j) // group_size`` (act_order: groups of consecutive processed
features); group_size and static_groups of quantize_config.json come from the `ptq.GroupGrid`
recipe (or the driver's options), desc_act from the order.

Sizes: the dense float32 and float16 files of the same model (same names, linear weights in
PyTorch's (out, in) layout) are written once per model next to the checkpoints, and the table
compares file sizes (``figures/checkpoint_size.csv``).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

import numpy as np

from experiments.driver import make_options, quantize_model
from experiments.models import smollm2
from experiments.models.smollm2 import text
from experiments.studies import lm
from experiments.studies import minilm as sequential
from experiments.studies.minilm import _adapter
from ptq import pack as pk
from ptq.grid import group_index as group_index_of

OUT = "runs/checkpoints"
SEED_CLAIM = 68.0  # seed 002: "up to 68% reduction in model size"

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ names
def _minilm_name(path: tuple) -> str | None:
    ln = {0: "weight", 1: "bias"}
    if path[0] == "embeddings":
        emb = {"word": "word_embeddings.weight", "position": "position_embeddings.weight",
               "token_type": "token_type_embeddings.weight"}
        return (f"embeddings.{emb[path[1]]}" if path[1] in emb
                else f"embeddings.LayerNorm.{ln[path[2]]}")
    if path[0] == "blocks" and path[2] in ("ln_attn", "ln_out"):
        where = "attention.output" if path[2] == "ln_attn" else "output"
        return f"encoder.layer.{path[1]}.{where}.LayerNorm.{ln[path[3]]}"
    return None


def _smollm2_name(path: tuple) -> str | None:
    top = {("embed",): "model.embed_tokens.weight", ("norm",): "model.norm.weight"}
    if path in top:
        return top[path]
    norms = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
    if path[0] == "blocks" and path[2] in norms:
        return f"model.layers.{path[1]}.{norms[path[2]]}.weight"
    return None


NAMES: dict[str, Callable[[tuple], str | None]] = {"minilm": _minilm_name,
                                                   "smollm2": _smollm2_name}


def _leaves(obj, path=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, path + (k,))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _leaves(v, path + (i,))
    elif obj is not None:
        yield path, obj


def _rebuild(obj, fill, path=()):
    if isinstance(obj, dict):
        return {k: _rebuild(v, fill, path + (k,)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        out = [_rebuild(v, fill, path + (i,)) for i, v in enumerate(obj)]
        return out if isinstance(obj, list) else tuple(out)
    return None if obj is None else fill(path)


def tensor_name(model, path: tuple) -> str:
    """The checkpoint name of the parameter at ``path`` in the adapter's ``params``.

    A linear layer's weight is ``<layer_name>.weight`` (the dense files; the packed file has
    its four GPTQ tensors instead), its bias ``<layer_name>.bias``; other tensors take their
    Hugging Face names, or the dotted path where the model has no table.
    """
    if path[0] == "blocks" and path[2] in model.kinds:
        return f"{model.layer_name(path[1], path[2])}.{('weight', 'bias')[path[3]]}"
    name = NAMES.get(model.name, lambda p: None)(path)
    return name if name is not None else ".".join(map(str, path))


def _is_linear_weight(model, path: tuple) -> bool:
    return path[0] == "blocks" and path[2] in model.kinds and path[3] == 0


def dense_tensors(model, params, dtype) -> dict[str, np.ndarray]:
    """Every parameter under its name, in ``dtype``; linear weights as (out, in) = W^T."""
    out = {}
    for path, a in _leaves(params):
        a = np.asarray(a)
        out[tensor_name(model, path)] = (np.ascontiguousarray(a.T) if _is_linear_weight(
            model, path) else a).astype(dtype)
    return out


# ------------------------------------------------------------------------------ collecting
def realised_grid(ctx):
    """The grid a layer was quantized on: ``result.grid`` where the algorithm reports it (a
    `ptq.GroupGrid` recipe is fitted inside the algorithm), else the driver's ``ctx.grid``."""
    grid = getattr(ctx.result, "grid", None)
    return ctx.grid if grid is None else grid


def group_index(ctx) -> np.ndarray | None:
    """g_idx of a layer: ``result.g_idx`` where the algorithm reports it; None for per-neuron
    or per-layer grids; else derived for a per-feature (N, n) grid from ``group_size``.

    GPTQ's groups are ``group_size`` consecutive features in natural order (no act_order, or
    static groups), else in processing order: feature ``order[t]`` is in group t // group_size.
    """
    g = getattr(ctx.result, "g_idx", None)
    if g is not None:
        return np.asarray(g, np.int32)
    if np.ndim(realised_grid(ctx).step) < 2:
        return None
    gs, static = _groups(ctx)
    if gs is None:
        raise ValueError(f"layer {ctx.name!r}: a per-feature grid needs a group size")
    order = getattr(ctx.result, "order", None)
    return group_index_of(ctx.W.shape[0], gs, None if static else order)


def _groups(ctx) -> tuple[int | None, bool]:
    """(group_size or None, static_groups), from a `ptq.GroupGrid` recipe or the options."""
    src = ctx.grid if hasattr(ctx.grid, "group_size") else ctx.options
    gs = getattr(src, "group_size", None)
    static = getattr(src, "static", getattr(src, "static_groups", False))
    return (None if gs in (None, -1) else int(gs)), bool(static)


class Collector:
    """An ``on_layer`` hook of `quantize_model`: packs each quantized layer as it is done.

    Layers are held in GPTQModel's v2 layout (zero points as they are, always representable)
    and `finish` gives them in the checkpoint's format.
    """

    def __init__(self):
        self.v2: dict[str, pk.PackedLayer] = {}
        self.kinds: set[tuple[int, bool, int | None, bool]] = set()  # bits, sym, groups

    def __call__(self, ctx) -> None:
        grid = realised_grid(ctx)
        self.kinds.add(pk.grid_bits(grid) + _groups(ctx))
        self.v2[ctx.name] = pk.from_grid(np.asarray(ctx.result.codes), grid,
                                         g_idx=group_index(ctx), name=ctx.name,
                                         format="gptq_v2")

    def zero_points_zero(self) -> dict[str, int]:
        """Layer name -> how many of its zero points are 0 (those v1 cannot store)."""
        counts = {name: int(np.sum(pk.unpack(lyr).zeros == 0)) for name, lyr in self.v2.items()}
        return {k: v for k, v in counts.items() if v}

    def finish(self, format: str = "auto") -> tuple[dict[str, pk.PackedLayer], str]:
        """``(layers, format)``: "gptq" (v1; raises if a zero point is 0), "gptq_v2", or "auto":
        v1 when every zero point is >= 1, else v2 for the whole checkpoint (logged)."""
        if format == "auto":
            zero = self.zero_points_zero()
            format = "gptq_v2" if zero else "gptq"
            if zero:
                log.warning("%d layers have zero points 0 (%d in all; first %s), which GPTQ v1 "
                            "cannot store: writing checkpoint_format gptq_v2", len(zero),
                            sum(zero.values()), next(iter(zero)))
        if format not in pk.FORMATS:
            raise ValueError(f"`format` must be 'auto' or one of {pk.FORMATS}; got {format!r}")
        return {k: pk.convert(v, format, name=k) for k, v in self.v2.items()}, format

    def config(self, options, format: str) -> pk.QuantizeConfig:
        """The `ptq.pack.QuantizeConfig` of the collected layers and the driver's options.

        Layers may differ in bits only (mixed precision, the driver's ``overrides``): the
        config's ``bits`` is then the most common width (the smaller on a tie) and every other
        layer gets a GPTQModel ``dynamic`` rule ``+:^<escaped name>$ -> {"bits": b}``.
        """
        rest = {k[1:] for k in self.kinds}
        if len(rest) != 1:
            raise ValueError(f"the layers mix grid kinds or groups: {sorted(rest, key=str)}")
        ((sym, gs, static),) = rest
        widths = {name: lyr.bits for name, lyr in self.v2.items()}
        counts = {b: list(widths.values()).count(b) for b in set(widths.values())}
        bits = max(sorted(counts), key=counts.get)
        dynamic = {f"+:^{re.escape(name)}$": {"bits": b} for name, b in widths.items()
                   if b != bits}
        return pk.QuantizeConfig(
            bits=bits, group_size=-1 if gs is None else gs,
            desc_act=options.order != "natural", sym=sym, static_groups=static,
            damp_percent=0.01 if options.percdamp is None else float(options.percdamp),
            checkpoint_format=format, dynamic=dynamic or None)


def stored_weights(codes, grid) -> np.ndarray:
    """What a checkpoint of ``codes`` on ``grid`` (a realised `ptq.Grid`, `realised_grid`)
    dequantizes to, computed from the grid: ``float32(fp16(step)) * (codes - zero)`` (the
    float32 weight the JAX forward runs)."""
    s = np.asarray(grid.step).astype(np.float16).astype(np.float32)
    return s * (np.asarray(codes) - np.asarray(grid.zero)).astype(np.float32)


# ------------------------------------------------------------------------------ files
def save_model(folder, model, layers: dict, config: pk.QuantizeConfig, params, *,
               dtype: str = "float16") -> Path:
    """Write the packed ``layers`` and every other tensor of ``params`` (in ``dtype``)."""
    rest = {k: v for k, v in dense_tensors(model, params, np.dtype(dtype)).items()
            if k.removesuffix(".weight") not in layers}
    missing = {model.layer_name(i, k) for i in range(model.n_blocks) for k in model.kinds}
    missing -= set(layers)
    if missing:
        raise ValueError(f"`layers` lacks {len(missing)} linear layers, e.g. {sorted(missing)[0]}")
    return pk.save(folder, layers, config, tensors=rest)


def load_model(folder, model) -> dict:
    """The adapter's ``params`` (JAX float32) from a checkpoint written by `save_model`."""
    import jax.numpy as jnp

    ck = pk.load(folder)

    def fill(path):
        if _is_linear_weight(model, path):
            return jnp.asarray(pk.dequantize(ck.layers[model.layer_name(path[1], path[2])]))
        return jnp.asarray(ck.tensors[tensor_name(model, path)].astype(np.float32))

    return _rebuild(model.params, fill)


def file_size(folder) -> int:
    """Bytes of the checkpoint's files (weights and config)."""
    return sum(f.stat().st_size for f in Path(folder).iterdir() if f.is_file())


def dense_sizes(model, out: str) -> dict[str, int]:
    """File sizes of the unquantized model saved as float32 and as float16 (written once)."""
    from safetensors.numpy import save_file

    sizes = {}
    for dtype in ("float32", "float16"):
        path = Path(out) / f"{model.name}-dense-{dtype}.safetensors"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file(dense_tensors(model, model.params, np.dtype(dtype)), str(path),
                      metadata={"format": "pt"})
        sizes[dtype] = path.stat().st_size
    return sizes


# ------------------------------------------------------------------------------ models
class Quantized(NamedTuple):
    model: Any  # the adapter
    options: Any  # experiments.driver.Options
    params: dict  # the in-memory quantized model (adapter layout, float32 steps)
    collector: Collector
    seconds: float


def adapter(name: str):
    if name == "minilm":
        return _adapter()
    if name == "smollm2":
        return lm.model()
    raise ValueError(f"`model` must be 'minilm' or 'smollm2'; got {name!r}")


def quantize(name: str, options, *, tokens: int = 2048, calib: int = 4, length: int = 512,
             model=None, on_layer: Callable | None = None) -> Quantized:
    """Quantize every linear layer of model ``name`` and pack each one as it is done.

    MiniLM calibrates on ``tokens`` tokens (`experiments.real`), SmolLM2 on ``calib`` windows
    of ``length`` tokens (`experiments.studies.lm`); ``model`` replaces the adapter (tests: a model
    cut to its first blocks); ``on_layer`` is called after the packing hook on each layer.
    """
    model = adapter(name) if model is None else model
    packer = Collector()

    def collector(ctx):
        packer(ctx)
        return None if on_layer is None else on_layer(ctx)

    t0 = time.perf_counter()
    if name == "minilm":
        _, p = sequential.run(options, n_tokens=tokens, on_layer=collector)
        params = {"embeddings": p["embeddings"], "blocks": p["layers"]}
    else:
        _, params = quantize_model(model, options, lm.calibration_batch(calib, length,
                                                                         options.seed),
                                   on_layer=collector)
    return Quantized(model, options, params, packer, time.perf_counter() - t0)


def score(name: str, params, *, heldout: int = 64, length: int = 512) -> float:
    """MiniLM: mean held-out cosine with the full-precision embeddings; SmolLM2: held-out
    perplexity on ``heldout`` windows of ``length`` tokens."""
    if name == "minilm":
        return float(sequential.heldout_cosine(
            {"embeddings": params["embeddings"], "layers": params["blocks"]}, heldout).mean())

    return smollm2.perplexity(params, text.heldout_windows(heldout, length))[0]


def max_weight_change(model, a: dict, b: dict) -> float:
    """Max over every linear weight of ``|a - b| / |b|`` (b nonzero; zeros must match)."""
    worst = 0.0
    for path, W in _leaves(b):
        if _is_linear_weight(model, path):
            A = np.asarray(_get(a, path), np.float64)
            W = np.asarray(W, np.float64)
            nz = W != 0
            if np.any(A[~nz] != 0):
                return float("inf")
            worst = max(worst, float(np.max(np.abs(A[nz] - W[nz]) / np.abs(W[nz]))))
    return worst


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


# ------------------------------------------------------------------------------ the table
def run(name: str = "minilm", bits=(4,), group_sizes=(None,), algorithm: str = "optq", *,
        grid: str = "asymmetric", static_groups: bool = False, format: str = "auto",
        dtypes=("float16",), out: str = OUT, heldout: int = 64, **sizes) -> list[dict]:
    """Write one checkpoint per (bits, group size, dtype), reload it, score it; one row each.

    A group size (None: per channel) quantizes on `ptq.GroupGrid` grids through the driver's
    ``group_size`` / ``static_groups`` options."""
    rows = []
    for b in bits:
        for gs in group_sizes:
            extra = {} if gs is None else {"group_size": gs, "static_groups": static_groups}
            o = make_options(algorithm, b, grid=grid, **extra)
            q = quantize(name, o, **sizes)
            layers, fmt = q.collector.finish(format)
            config = q.collector.config(o, fmt)
            fp = dense_sizes(q.model, out)
            in_memory = score(name, q.params, heldout=heldout)
            packed = sum(sum(getattr(lyr, t).nbytes for t in pk.TENSORS)
                         for lyr in layers.values())
            dense_linear = sum(4 * lyr.shape[0] * lyr.shape[1] for lyr in layers.values())
            for dtype in dtypes:
                static = "-static" if config.static_groups else ""
                folder = Path(out) / (f"{name}-{algorithm}-{grid[:4]}-{b}b-g{config.group_size}"
                                      f"{static}-{dtype}")
                save_model(folder, q.model, layers, config, q.model.params, dtype=dtype)
                reloaded = load_model(folder, q.model)
                size = file_size(folder)
                rows.append({
                    "model": name, "algorithm": algorithm, "grid": grid, "bits": b,
                    "group_size": config.group_size, "format": fmt, "other_dtype": dtype,
                    "bytes": size, "float32_bytes": fp["float32"], "float16_bytes": fp["float16"],
                    "reduction_vs_float32_pct": 100 * (1 - size / fp["float32"]),
                    "reduction_vs_float16_pct": 100 * (1 - size / fp["float16"]),
                    "seed_claim_pct": SEED_CLAIM, "packed_linear_bytes": packed,
                    "float32_linear_bytes": dense_linear,
                    "linear_reduction_vs_float32_pct": 100 * (1 - packed / dense_linear),
                    "other_bytes": size - packed,
                    "zero_points_zero": sum(q.collector.zero_points_zero().values()),
                    "metric": "heldout_cosine" if name == "minilm" else "perplexity",
                    "in_memory": in_memory, "reloaded": score(name, reloaded, heldout=heldout),
                    "max_weight_rel_change": max_weight_change(q.model, reloaded, q.params),
                    "path": str(folder),
                })
                log.info("%s: %.2f MB (%.1f%% below float32)", folder, size / 1e6,
                         rows[-1]["reduction_vs_float32_pct"])
    return rows


COLUMNS = [("model", "model"), ("bits", "bits"), ("group_size", "group"), ("format", "format"),
           ("other_dtype", "other tensors"),
           ("bytes", "file [MB]"), ("float32_bytes", "float32 [MB]"),
           ("float16_bytes", "float16 [MB]"), ("reduction_vs_float32_pct", "vs float32 [%]"),
           ("reduction_vs_float16_pct", "vs float16 [%]"), ("seed_claim_pct", "seed 002 [%]"),
           ("linear_reduction_vs_float32_pct", "linear layers vs float32 [%]"),
           ("in_memory", "in memory"), ("reloaded", "reloaded"),
           ("max_weight_rel_change", "max weight change")]


def markdown(rows: list[dict]) -> str:
    def fmt(k, v):
        if k.endswith("bytes"):
            return f"{v / 1e6:.2f}"
        if k.endswith("pct"):
            return f"{v:.1f}"
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(h for _, h in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(fmt(k, r[k]) for k, _ in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m experiments.studies.checkpoint",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", nargs="+", default=["minilm"], choices=["minilm", "smollm2"])
    p.add_argument("--algorithm", default="optq", choices=["rtn", "optq", "qronos"])
    p.add_argument("--bits", type=int, nargs="+", default=[4])
    p.add_argument("--group-size", type=int, nargs="+", default=[-1],
                   help="features per group of the grids (ptq.GroupGrid); -1: per channel")
    p.add_argument("--static-groups", action="store_true",
                   help="GPTQ's static_groups: every group fitted first, in original order")
    p.add_argument("--grid", default="asymmetric", choices=["asymmetric", "symmetric"])
    p.add_argument("--format", default="auto", choices=["auto", "gptq", "gptq_v2"],
                   help="auto: GPTQ v1 unless a zero point is 0, then v2 (see ptq.pack)")
    p.add_argument("--dtype", nargs="+", default=["float16"], choices=["float16", "float32"],
                   help="dtype of the unquantized tensors (embeddings, norms, biases)")
    p.add_argument("--out", default=OUT, help="folder of the checkpoints")
    p.add_argument("--table", default=None, help="also write the size table to this CSV")
    p.add_argument("--tokens", type=int, default=2048, help="MiniLM calibration tokens")
    p.add_argument("--calib", type=int, default=4, help="SmolLM2 calibration windows")
    p.add_argument("--heldout", type=int, default=None,
                   help="held-out sequences (MiniLM, default 64) or windows (SmolLM2, 8)")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for model in a.model:
        heldout = a.heldout or (64 if model == "minilm" else 8)
        sizes = {"tokens": a.tokens} if model == "minilm" else {"calib": a.calib}
        rows += run(model, a.bits, [None if g == -1 else g for g in a.group_size], a.algorithm,
                    grid=a.grid, static_groups=a.static_groups, format=a.format,
                    dtypes=a.dtype, out=a.out, heldout=heldout, **sizes)
    print(markdown(rows))
    if a.table:
        import pandas as pd

        os.makedirs(os.path.dirname(a.table) or ".", exist_ok=True)
        pd.DataFrame(rows).drop(columns=["path"]).to_csv(a.table, index=False,
                                                         float_format="%.6g")
        print(f"wrote {a.table}")
    return 0


__all__ = ["Collector", "Quantized", "dense_sizes", "dense_tensors", "file_size", "group_index",
           "load_model", "main", "quantize", "realised_grid", "run", "save_model", "score",
           "stored_weights", "tensor_name"]

if __name__ == "__main__":
    sys.exit(main())
