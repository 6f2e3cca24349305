"""INT8 and INT4 weight matmuls against float32 at the real models' layer shapes (issue 12).

    python -m experiments.bench --only intmm                  # figures/intmm.{csv,md,png,pdf}
    python -m experiments.bench --only intmm --shapes 384x384 --batches 1 16 --repeats 3

One layer ``y = X @ W``, X (m, N) float32 activations (m = batch of tokens), W (N, n). Per
shape and batch, in one process, each variant is jitted once and timed in rounds, the variants
and the float32 baseline taking turns within each round (`interleaved`), so all of them see the
same load of a shared machine; the median over the rounds is reported:

* ``float32``: ``jnp.dot(X, W)`` at precision HIGHEST (true float32 on every backend).
* ``int8_dot``: the XLA int8 dot alone, ``Xq @ Wq`` with int8 operands and int32 accumulation
  (``jax.lax.dot_general(..., preferred_element_type=int32)``), then ``* sx * sw`` (float32);
  X is already int8 (the compute of an INT8 layer).
* ``int8``: the same with the activations quantized inside the function, as a W8A8 layer runs
  them: ``sx = max_k |x_k| / 127`` per row, ``Xq = round(X / sx)`` (int8); W int8 symmetric per
  output column, ``sw = max_j |w_j| / 127``.
* ``int4``: W packed as GPTQ's 4-bit ``qweight`` (int32 (N/8, n), `ptq.pack.pack_bits`),
  unpacked inside the jitted function (shifts by 0, 4, .., 28 and ``& 15``), dequantized per
  output column ``(c - zero) * scale`` to float32 and multiplied by X in float32 (W4A16-style).
* ``int4_int8``: the unpacked codes ``c - zero`` as int8 against int8 activations (as
  ``int8``), int32 accumulation (W4A8).

Reported per row: the median and fastest time, ``speedup = t_float32 / t`` (throughput ratio),
``time_saved_pct = 100 (1 - t / t_float32)`` (seed 002 claims 40% for INT8, 60% for INT4, and
2.4x / 3x throughput on edge devices), the weight bytes read, and ``rel_diff``, the relative
Frobenius difference of the output from the float32 one (what the quantization changes).
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from experiments import timing
from experiments.bench.report import md_table, write_md_json
from experiments.figures import style
from ptq.pack import pack_bits

# (N, n) of every distinct linear layer shape: MiniLM (q/k/v/o, intermediate, output), then
# SmolLM2 (q/o, k/v, gate/up, down).
SHAPES = ((384, 384), (384, 1536), (1536, 384), (576, 576), (576, 192), (576, 1536),
          (1536, 576))
MODEL_OF = {(384, 384): "MiniLM", (384, 1536): "MiniLM", (1536, 384): "MiniLM",
            (576, 576): "SmolLM2", (576, 192): "SmolLM2", (576, 1536): "SmolLM2",
            (1536, 576): "SmolLM2"}
BATCHES = (1, 16, 512)
VARIANTS = ("float32", "int8_dot", "int8", "int4", "int4_int8")
SEED_CLAIMS = {"int8": {"time_saved_pct": 40.0, "speedup": 2.4},
               "int4": {"time_saved_pct": 60.0, "speedup": 3.0}}
HIGHEST = jax.lax.Precision.HIGHEST
_INT32 = {"preferred_element_type": jnp.int32}
_DIMS = (((1,), (0,)), ((), ()))  # contract X's axis 1 with W's axis 0


@dataclasses.dataclass(frozen=True)
class Options:
    shapes: tuple[tuple[int, int], ...] = SHAPES
    batches: tuple[int, ...] = BATCHES
    repeats: int = 41  # rounds: each variant timed once per round, in turn (medians reported)
    min_time: float = 0.005  # seconds per timed chunk (fast calls repeated within it)
    seed: int = 0


# ------------------------------------------------------------------------------ the variants
@jax.jit
def f32(X, W):
    return jnp.dot(X, W, precision=HIGHEST)


def _quantize_rows(X):
    """Symmetric int8 per row: ``sx = max|x| / 127`` (1 for a zero row), ``round(X / sx)``."""
    a = jnp.max(jnp.abs(X), axis=1, keepdims=True)
    sx = jnp.where(a > 0, a / 127.0, 1.0)
    return jnp.clip(jnp.round(X / sx), -127, 127).astype(jnp.int8), sx


@jax.jit
def int8_dot(Xq, sx, Wq, sw):
    return jax.lax.dot_general(Xq, Wq, _DIMS, **_INT32).astype(jnp.float32) * sx * sw


@jax.jit
def int8(X, Wq, sw):
    Xq, sx = _quantize_rows(X)
    return jax.lax.dot_general(Xq, Wq, _DIMS, **_INT32).astype(jnp.float32) * sx * sw


def unpack4(qweight):
    """GPTQ 4-bit words (N/8, n) int32 -> codes (N, n) int32: code of input 8r+j is bits
    4j..4j+3 of row r (the arithmetic shift's sign bits are masked off)."""
    shifts = jnp.arange(0, 32, 4, dtype=jnp.int32)[None, :, None]
    c = (qweight[:, None, :] >> shifts) & 15
    return c.reshape(-1, qweight.shape[1])


@jax.jit
def int4(X, qweight, zero, scale):
    W = (unpack4(qweight) - zero).astype(jnp.float32) * scale
    return jnp.dot(X, W, precision=HIGHEST)


@jax.jit
def int4_int8(X, qweight, zero, scale):
    Wk = (unpack4(qweight) - zero).astype(jnp.int8)  # c - zero in [-15, 15]
    Xq, sx = _quantize_rows(X)
    return jax.lax.dot_general(Xq, Wk, _DIMS, **_INT32).astype(jnp.float32) * sx * scale


def weights(W: np.ndarray) -> dict:
    """The quantized forms of W: int8 symmetric per column, GPTQ 4-bit min-max per column."""
    a = np.abs(W).max(axis=0)
    sw = np.where(a > 0, a / 127, 1).astype(np.float32)
    Wq = np.clip(np.round(W / sw), -127, 127).astype(np.int8)
    lo, hi = np.minimum(W.min(axis=0), 0), np.maximum(W.max(axis=0), 0)
    scale = ((hi - lo) / 15).astype(np.float32)
    zero = np.round(-lo / scale).astype(np.int32)
    codes = np.clip(np.round(W / scale) + zero, 0, 15).astype(np.int32)
    return {"Wq": Wq, "sw": sw[None], "qweight": pack_bits(codes, 4), "zero": zero[None],
            "scale": scale[None], "codes": codes}


# ------------------------------------------------------------------------------ measuring
def measure(N: int, n: int, m: int, opt: Options) -> list[dict]:
    """Every variant at one (N, n, m); float32 first, then the ratios against it."""
    rng = np.random.default_rng(opt.seed + 7 * N + n + m)
    X = rng.standard_normal((m, N)).astype(np.float32)
    W = (rng.standard_normal((N, n)) / np.sqrt(N)).astype(np.float32)
    q = weights(W)
    d = {k: jax.device_put(v) for k, v in {"X": X, "W": W, **q}.items() if k != "codes"}
    Xq, sx = _quantize_rows(d["X"])
    calls = {
        "float32": (lambda: f32(d["X"], d["W"]), 4 * N * n),
        "int8_dot": (lambda: int8_dot(Xq, sx, d["Wq"], d["sw"]), N * n),
        "int8": (lambda: int8(d["X"], d["Wq"], d["sw"]), N * n),
        "int4": (lambda: int4(d["X"], d["qweight"], d["zero"], d["scale"]), N * n // 2),
        "int4_int8": (lambda: int4_int8(d["X"], d["qweight"], d["zero"], d["scale"]),
                      N * n // 2),
    }
    y32 = np.asarray(f32(d["X"], d["W"]), np.float64)
    times = interleaved({k: fn for k, (fn, _) in calls.items()}, opt.repeats, opt.min_time)
    rows = []
    for name, (fn, nbytes) in calls.items():
        y = np.asarray(fn(), np.float64)
        t = times[name]
        rows.append({"model": MODEL_OF.get((N, n), "-"), "N": N, "n": n, "batch": m,
                     "variant": name, "median_s": float(np.median(t)), "best_s": min(t),
                     "rounds": len(t), "weight_bytes": nbytes,
                     "rel_diff": float(np.linalg.norm(y - y32) / np.linalg.norm(y32))})
    base = rows[0]["median_s"]
    for r in rows:
        r["speedup"] = base / r["median_s"]
        r["time_saved_pct"] = 100 * (1 - r["median_s"] / base)
        r["gflops"] = 2 * m * N * n / r["median_s"] / 1e9
    return rows


def interleaved(fns: dict, rounds: int, chunk_s: float) -> dict[str, list[float]]:
    """Per-call seconds of each function over ``rounds`` rounds, the functions taking turns
    within a round, so that every variant and the float32 baseline see the same load of a
    shared machine. Each function is called once first (compilation), and each timed chunk
    repeats it ``k`` times with ``k`` chosen so that a chunk lasts about ``chunk_s``."""
    reps = {}
    for name, fn in fns.items():
        jax.block_until_ready(fn())
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        reps[name] = max(1, int(chunk_s / max(time.perf_counter() - t0, 1e-7)))
    out: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:  # rotate who goes first
            fn, k = fns[name], reps[name]
            t0 = time.perf_counter()
            for _ in range(k):
                y = fn()
            jax.block_until_ready(y)
            out[name].append((time.perf_counter() - t0) / k)
    return out


def check_unpack(opt: Options) -> None:
    """The in-jit unpacker gives back the codes `ptq.pack` packed (else the timing is moot)."""
    W = np.random.default_rng(opt.seed).standard_normal((64, 32)).astype(np.float32)
    q = weights(W)
    if not np.array_equal(np.asarray(unpack4(jnp.asarray(q["qweight"]))), q["codes"]):
        raise RuntimeError("the JAX 4-bit unpacker disagrees with ptq.pack.pack_bits")


def run(opt: Options, progress=lambda msg: None) -> dict:
    check_unpack(opt)
    env = timing.environment()
    progress(f"environment: {env}")
    rows = []
    for N, n in opt.shapes:
        for m in opt.batches:
            rows += measure(N, n, m, opt)
            r = {x["variant"]: x for x in rows[-len(VARIANTS):]}
            progress(f"N={N} n={n} m={m}: " + ", ".join(
                f"{v} {r[v]['median_s'] * 1e6:.0f} us ({r[v]['speedup']:.2f}x)" for v in r))
    return {"env": env, "options": dataclasses.asdict(opt), "rows": rows}


# ------------------------------------------------------------------------------ report
def summary(rows: list[dict]) -> pd.DataFrame:
    """Geometric-mean speedup over the shapes, per batch and variant."""
    df = pd.DataFrame(rows)
    g = df.groupby(["batch", "variant"], sort=False)["speedup"]
    out = g.apply(lambda s: float(np.exp(np.mean(np.log(s))))).rename("geomean_speedup")
    out = out.reset_index()
    out["time_saved_pct"] = 100 * (1 - 1 / out["geomean_speedup"])
    return out


def markdown(res: dict, command: str) -> str:
    df = pd.DataFrame(res["rows"])
    table = []
    for (model, N, n, m), d in df.groupby(["model", "N", "n", "batch"], sort=False):
        by = d.set_index("variant")
        table.append({"model": model, "N x n": f"{N} x {n}", "batch": m,
                      "float32 [us]": by.loc["float32", "median_s"] * 1e6,
                      **{v: by.loc[v, "speedup"] for v in VARIANTS[1:]}})
    s = summary(res["rows"])
    geo = [{"batch": m, **d.set_index("variant")["geomean_speedup"].to_dict()}
           for m, d in s.groupby("batch")]
    lines = [
        "# INT8 / INT4 weight matmuls against float32\n",
        f"Command: `{command}`\n",
        "Environment: " + ", ".join(f"{k} {v}" for k, v in res["env"].items()) + "\n",
        ("Speedup = median float32 time / median time of the variant (same process, same "
         "inputs); > 1 is faster. Variants: see `experiments/bench/intmm.py`.\n"),
        md_table(table),
        "Geometric mean of the speedup over the shapes:\n",
        md_table(geo, [("batch", "batch")] + [(v, v) for v in VARIANTS[1:]]),
        "Seed 002 claims INT8 40% and INT4 60% less compute, 2.4x and 3x throughput.\n",
    ]
    return "\n".join(lines)


def figure(res: dict, out_dir: str) -> list[str]:
    df = pd.DataFrame(res["rows"])
    batches = sorted(df.batch.unique())
    fig, axes = style.figure(ncols=len(batches), width=3.2, height=3.3, sharey=True)
    shapes = list(dict.fromkeys(zip(df.N, df.n)))
    colors = {"int8_dot": "#1f77b4", "int8": "#17becf", "int4": "#d62728", "int4_int8": "#ff7f0e"}
    labels = {"int8_dot": "INT8 dot (int8 X)", "int8": "INT8 (quantize X + dot)",
              "int4": "INT4 unpack -> f32 dot", "int4_int8": "INT4 unpack -> int8 dot"}
    x = np.arange(len(shapes))
    w = 0.8 / len(colors)
    for ax, m in zip(axes, batches):
        d = df[df.batch == m]
        for k, v in enumerate(colors):
            s = d[d.variant == v].set_index(["N", "n"]).loc[shapes, "speedup"]
            ax.bar(x + (k - 1.5) * w, s.values, w, color=colors[v], label=labels[v])
        ax.axhline(1.0, color="k", lw=0.8)
        ax.axhline(SEED_CLAIMS["int8"]["speedup"], color=colors["int8"], ls="--", lw=0.8,
                   label="seed 002: INT8 2.4x")
        ax.axhline(SEED_CLAIMS["int4"]["speedup"], color=colors["int4"], ls="--", lw=0.8,
                   label="seed 002: INT4 3x")
        ax.set_yscale("log", base=2)
        ax.set_xticks(x, [f"{N}x{n}" for N, n in shapes], rotation=60, fontsize=7)
        ax.set_title(f"batch m = {m}")
        ax.grid(True, axis="y", which="both", alpha=0.3)
    axes[0].set_ylabel("speedup over float32 (median)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle(f"y = X W, W (N x n), {res['env']['device']}", fontsize=8)
    return style.save(fig, "intmm", df, out_dir)


def write(res: dict, out_dir: str, command: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)

    paths = figure(res, out_dir)  # intmm.png, .pdf and .csv (every row)
    return paths + write_md_json(os.path.join(out_dir, "intmm"), markdown(res, command),
                                 {**res, "command": command})


__all__ = ["BATCHES", "SHAPES", "VARIANTS", "Options", "measure", "run", "summary", "unpack4",
           "weights", "write"]
