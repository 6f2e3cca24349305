"""The benchmark itself: every measurement of one run, returned as plain rows (dicts).

Per size N (m = 2N calibration rows, n = N neurons, float32, 4-bit GPTQ min-max grid):

* ``ptq.optq`` from X (Gram included) and its parts: the symmetric Gram ``X^T X``, the
  "from H" part (regularise + order + one Cholesky + kernel + mapping back), the kernel alone;
* ``ptq.qronos`` from X and X_hat, and its extra parts (``X_hat^T X``, the least-squares fit);
* the canonical PyTorch GPTQ (`peers.torch_gptq`) from X (``X^T X`` in torch included), its
  ``X^T X`` alone and its three factorisations alone;
* qwix's GPTQ eagerly (H included), first call and steady state, where it fits the budget;
* Brevitas' Qronos (`peers.brevitas_qronos`) from X and X_hat (its hooks accumulating H and
  G included), where it fits its budget, and its agreement with ``ptq.qronos``;
* the machine: the float32 matrix-product rate and one Cholesky of H timed alone, giving

      limit(N) = t_chol(N) + (n N^2 + m N^2) / rate

  ``n N^2`` = the OPTQ updates (``sum_t 2 n (t - 1)`` flops: every strictly triangular
  coefficient times an n-row, once) and ``m N^2`` = the symmetric Gram ``X^T X`` (half of a
  general product's ``2 m N^2``, what a SYRK does); ``rate`` = GFLOP/s of a square float32
  ``jnp.dot`` (precision HIGHEST) measured at the size nearest to N, in the same run.
  Rounding, copies and the Cholesky flops (timed instead) are not counted: it is what OPTQ
  from X would take if every product ran at the measured matrix-product rate.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import ptq
from ptq import gather, gram
from ptq._optq import _natural_factor, _ordered_factor, run_ordered
from ptq._qronos import _least_squares
from ptq.kernel import quantize_ordered
from experiments.bench import flops, peers, timing

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Options:
    """What one benchmark run measures (the CLI flags of ``python -m experiments.bench``)."""

    sizes: tuple[int, ...] = (512, 1024, 2048, 4096)
    repeats: int = 5  # timed calls after the warm-up; medians are reported
    min_time: float = 1.0  # fast calls are repeated until their runs add up to this [s]
    peers: tuple[str, ...] = ("torch", "qwix", "brevitas")
    qwix_max_n: int = 2048  # qwix runs eagerly only up to this N ...
    qwix_repeats: int = 1  # ... with this many timed calls after its first call ...
    qwix_budget_s: float = 400.0  # ... and is skipped when its predicted time exceeds this
    brevitas_max_n: int = 4096  # Brevitas' Qronos (a Python loop over columns): up to this N,
    brevitas_repeats: int = 1  # with this many timed calls after the first,
    brevitas_budget_s: float = 900.0  # skipped when its predicted time exceeds this
    bits: int = 4
    block_size: int = 128
    sweep_sizes: tuple[int, ...] = (2048, 4096)
    sweep_blocks: tuple[int, ...] = (32, 64, 128, 256, 512)
    check_n: int = 512  # size of the ptq-vs-torch and ptq-vs-Brevitas checks (0: skip)
    theory_n: int | None = 4096  # size at which the theory bounds are timed (None: skip)
    seed: int = 0


def make_data(N: int, seed: int):
    """X (2N, N), X_hat = X + 0.1 noise, W (N, N), all float32 NumPy, standard normal."""
    rng = np.random.default_rng(seed + N)
    X = rng.standard_normal((2 * N, N), dtype=np.float32)
    X_hat = X + np.float32(0.1) * rng.standard_normal((2 * N, N), dtype=np.float32)
    W = rng.standard_normal((N, N), dtype=np.float32)
    return X, X_hat, W


def flops_limit(N: int, m: int, n: int) -> float:
    """Flops counted in the machine limit: updates ``n N^2`` + symmetric Gram ``m N^2``."""
    return float(n * N * N + m * N * N)


def qronos_flops_limit(N: int, m: int, n: int) -> float:
    """Flops counted in Qronos' own limit: OPTQ's (`flops_limit`, on X_hat) + the cross Gram
    ``X_hat^T X`` (a general product, ``2 m N^2``) + ``G W`` (``2 N^2 n``) + the two
    triangular solves of the least-squares start (``2 N^2 n``): ``3 m N^2 + 5 n N^2``."""
    return flops_limit(N, m, n) + 2.0 * m * N * N + 4.0 * n * N * N


def _timer(opt: Options):
    """``time_call`` with the run's repeats and minimum total time."""
    return lambda fn: timing.time_call(fn, opt.repeats, min_time=opt.min_time)


# ----------------------------------------------------------------------------- ptq
OTHER_ORDERS = ("decreasing_norm", "random")  # timed besides the natural order


def measure_ptq(N: int, opt: Options, row: dict) -> dict:
    """Time ptq.optq / ptq.qronos and their parts at size N; fills ``row``; returns state."""
    X, X_hat, W = make_data(N, opt.seed)
    m, B = X.shape[0], min(opt.block_size, N)
    Xd, Xhd, Wd = (jax.device_put(A) for A in (X, X_hat, W))
    grid = ptq.Grid.fit(Wd, opt.bits, kind="asymmetric", per="neuron")
    row["dtype"] = str(Xd.dtype)

    t = _timer(opt)(lambda: ptq.optq(Xd, Wd, grid, block_size=B).Q)
    row.update(optq_s=t.median, optq_best_s=t.best, optq_first_s=t.first,
               optq_compile_s=t.first - t.median)
    t = _timer(opt)(lambda: ptq.qronos(Xd, Xhd, Wd, grid, block_size=B).Q)
    row.update(qronos_s=t.median, qronos_best_s=t.best, qronos_first_s=t.first,
               qronos_compile_s=t.first - t.median)
    # The other processing orders pay for gathering H, W and the grid into that order and
    # scattering the results back (`derive` divides by the natural order's median).
    for order in OTHER_ORDERS:
        row[f"optq_{order}_s"] = _timer(opt)(
            lambda order=order: ptq.optq(Xd, Wd, grid, block_size=B, order=order).Q).median

    # The parts of optq, with the arguments ptq.optq builds (natural order, percdamp 0.01).
    XtX = gram.gram_sym(Xd)
    lam = 0.01 * float(jnp.mean(jnp.diagonal(XtX)))
    perm = np.arange(N)
    p = gather.gather_index(perm)  # None: the natural order, as ptq.optq passes it
    row["gram_s"] = _timer(opt)(lambda: gram.gram_sym(Xd)).median

    def from_h():
        R = _ordered_factor(XtX, lam, p)
        return run_ordered(R, Wd, grid, perm=perm, lam=lam, m=m, name="X", rounding="nearest",
                           key=None, block_size=B).Q

    row["optq_from_h_s"] = _timer(opt)(from_h).median
    R = _ordered_factor(XtX, lam, p)
    kernel = _kernel_fn(R, Wd, grid, B)
    row["kernel_s"] = _timer(opt)(kernel).median
    H = gram.regularise(XtX, lam)
    row["chol_s"] = timing.cholesky_time(H, opt.repeats, opt.min_time).median
    row["qronos_cross_gram_s"] = _timer(opt)(lambda: gram.gram(Xhd, Xd)).median
    XhXh, XhX = gram.gram_sym(Xhd), gram.gram(Xhd, Xd)
    lam_h = 0.01 * float(jnp.mean(jnp.diagonal(XhXh)))
    row["qronos_lsq_s"] = _timer(opt)(lambda: _least_squares(XhXh, XhX, Wd, lam_h)).median

    mib = 2.0**20
    row["optq_peak_mb"] = timing.peak_memory(lambda: ptq.optq(Xd, Wd, grid, block_size=B).Q) / mib
    row["qronos_peak_mb"] = (
        timing.peak_memory(lambda: ptq.qronos(Xd, Xhd, Wd, grid, block_size=B).Q) / mib
    )
    dev = timing.device_peak()
    row["device_peak_mb"] = dev / 2**20 if dev is not None else math.nan

    # Compile times of the jitted pieces, from cleared caches (lower + compile each). On the
    # CPU the two Gram products are NumPy's BLAS (ptq.gram.gram_sym / gram): nothing to
    # compile, reported as NaN.
    jax.clear_caches()
    pieces = {
        "gram_sym": lambda: gram._gram_sym_xla.lower(Xd),
        "factor": lambda: _natural_factor.lower(XtX, lam),
        "kernel": lambda: _kernel_lowering(R, Wd, grid, B),
        "cross_gram": lambda: gram._gram_xla.lower(Xhd, Xd),
        "least_squares": lambda: _least_squares.lower(XhXh, XhX, Wd, lam_h),
    }
    if gram._on_host(Xd, Xhd):
        row["compile_gram_sym_s"] = row["compile_cross_gram_s"] = math.nan
        del pieces["gram_sym"], pieces["cross_gram"]
    total = 0.0
    for name, lower in pieces.items():
        t0 = time.perf_counter()
        compiled = lower().compile()
        row[f"compile_{name}_s"] = dt = time.perf_counter() - t0
        total += dt
        if name == "kernel":
            row["kernel_xla_mb"] = _xla_bytes(compiled) / 2**20
    row["compile_pieces_s"] = total
    return {"X": X, "X_hat": X_hat, "W": W, "grid": grid, "B": B}


def _kernel_fn(R, Wd, grid, B):
    return lambda: quantize_ordered(
        R, Wd, grid, None, None, block_size=B, stochastic=False, first_override=False
    )


def _kernel_lowering(R, Wd, grid, B):
    return quantize_ordered.lower(
        R, Wd, grid, None, None, block_size=B, stochastic=False, first_override=False
    )


def _xla_bytes(compiled) -> float:
    """Arguments + outputs + temporaries of a compiled program (XLA's memory analysis)."""
    try:
        a = compiled.memory_analysis()
        return float(a.argument_size_in_bytes + a.output_size_in_bytes + a.temp_size_in_bytes)
    except Exception:  # noqa: BLE001 - not every backend reports it
        return math.nan


# ----------------------------------------------------------------------------- peers
def measure_torch(N: int, state: dict, opt: Options, row: dict) -> None:
    import torch

    X, W = state["X"], state["W"]
    Xt, Wt = peers.to_torch(X), peers.to_torch(np.ascontiguousarray(W.T))
    scale, zero = peers.torch_minmax_params(Wt, opt.bits)
    B = state["B"]

    def total():
        return peers.torch_gptq(Wt, peers.torch_gram(Xt), scale, zero, bits=opt.bits, blocksize=B).Q

    t = _timer(opt)(total)
    row.update(torch_s=t.median, torch_best_s=t.best, torch_first_s=t.first)
    row["torch_gram_s"] = _timer(opt)(lambda: peers.torch_gram(Xt)).median
    row["torch_from_h_s"] = row["torch_s"] - row["torch_gram_s"]
    H = peers.torch_gram(Xt)
    row["torch_factor_s"] = _timer(opt)(lambda: peers.torch_factor(H.clone(), 0.01)).median
    row["torch_peak_mb"] = timing.peak_memory(total) / 2**20
    row["torch_threads"] = torch.get_num_threads()


def skip_reason(peer: str, N: int, max_n: int, repeats: int, budget_s: float,
                history: list) -> str | None:
    """Why a slow peer is skipped at N (above ``max_n``, or its time predicted from the last
    size over ``budget_s``), or None. ``history`` holds ``(N, first, steady)`` per size run."""
    if N > max_n:
        return f"skipped: N > {peer}_max_n = {max_n}"
    if history:  # predicted from the last size: first call and loop both grow ~4x per doubling
        N0, first0, steady0 = history[-1]
        predicted = (N / N0) ** 2 * (first0 + repeats * steady0)
        if predicted > budget_s:
            return f"skipped: predicted {predicted:.0f} s > {peer}_budget_s = {budget_s:g}"
    return None


def measure_qwix(N: int, state: dict, opt: Options, row: dict, history: list) -> None:
    """qwix eagerly; skipped (reason in ``row['qwix_note']``) above ``qwix_max_n`` or budget."""
    why = skip_reason("qwix", N, opt.qwix_max_n, opt.qwix_repeats, opt.qwix_budget_s, history)
    if why:
        row["qwix_note"] = why
        return
    run = peers.qwix_runner(opt.bits)
    Wr, Xd = jax.device_put(np.ascontiguousarray(state["W"].T)), jax.device_put(state["X"])
    t = timing.time_call(lambda: run(Wr, Xd), opt.qwix_repeats)  # no min_time: slow
    row.update(qwix_s=t.median, qwix_first_s=t.first, qwix_note="eager, symmetric absmax grid")
    history.append((N, t.first, t.median))


def measure_brevitas(N: int, state: dict, opt: Options, row: dict, history: list) -> None:
    """Brevitas' Qronos from X and X_hat (`peers.brevitas_qronos`: layer, hooks, update);
    skipped (reason in ``row['brevitas_note']``) above ``brevitas_max_n`` or its budget.

    Its damping (``alpha`` for ``lam = 0.01 mean(diag(X_hat^T X_hat))``, as ptq) is set up
    once, untimed; every timed call builds a fresh layer (Qronos updates it in place)."""
    why = skip_reason("brevitas", N, opt.brevitas_max_n, opt.brevitas_repeats,
                      opt.brevitas_budget_s, history)
    if why:
        row["brevitas_note"] = why
        return
    Xt, Xht = peers.to_torch(state["X"]), peers.to_torch(state["X_hat"])
    Wt = peers.to_torch(np.ascontiguousarray(state["W"].T))
    alpha = peers.brevitas_alpha(Xht, 0.01)
    runs = []

    def call():
        runs.append(peers.brevitas_qronos(Xt, Xht, Wt, bits=opt.bits, block_size=state["B"],
                                          alpha=alpha))
        return runs[-1].Q

    t = timing.time_call(call, opt.brevitas_repeats)  # no min_time: slow
    timed = runs[1:]  # after the warm-up call
    row.update(brevitas_qronos_s=t.median, brevitas_qronos_first_s=t.first,
               brevitas_gram_s=statistics.median(r.gram_s for r in timed),
               brevitas_update_s=statistics.median(r.update_s for r in timed),
               brevitas_note=f"eager, block size {state['B']}, damping matched to percdamp 0.01")
    history.append((N, t.first, t.median))


# ----------------------------------------------------------------------------- checks
def agreement(N: int, opt: Options, dtype: str) -> dict:
    """ptq.optq vs the torch GPTQ on the same asymmetric per-row grid and order, at size N.

    Codes can differ where float rounding moves a value across a rounding boundary, and a
    flipped code changes every later step of its neuron, so the check reports the fraction of
    equal codes, the grid's own scale/zero difference, and the relative difference of the
    layer errors ``||X (W - Q)||_F``.
    """
    X, _, W = make_data(N, opt.seed)
    np_dtype = np.float64 if dtype == "float64" else np.float32
    X, W = X.astype(np_dtype), W.astype(np_dtype)
    with jax.enable_x64(dtype == "float64"):
        grid = ptq.Grid.fit(jnp.asarray(W), opt.bits, kind="asymmetric", per="neuron")
        res = ptq.optq(X, W, grid, percdamp=0.01, block_size=min(opt.block_size, N))
        Q_ptq = np.asarray(res.Q, dtype=np.float64)
        codes_ptq = np.asarray(res.codes)
        step, zero = np.asarray(grid.step, np.float64), np.asarray(grid.zero, np.float64)
    Xt, Wt = peers.to_torch(X), peers.to_torch(np.ascontiguousarray(W.T))
    scale, tzero = peers.torch_minmax_params(Wt, opt.bits)
    Q_t = peers.torch_gptq(Wt, peers.torch_gram(Xt), scale, tzero, bits=opt.bits).Q
    Q_torch = Q_t.numpy().astype(np.float64).T
    codes_torch = np.rint(Q_torch / step + zero)

    def err(Q):
        return np.linalg.norm(X.astype(np.float64) @ (W.astype(np.float64) - Q))

    return {
        "N": N,
        "dtype": dtype,
        "grid_scale_max_rel_diff": float(np.max(np.abs(scale.numpy()[:, 0] - step) / step)),
        "grid_zero_max_diff": float(np.max(np.abs(tzero.numpy()[:, 0] - zero))),
        "codes_equal_frac": float(np.mean(codes_ptq == codes_torch)),
        "max_code_diff": float(np.max(np.abs(codes_ptq - codes_torch))),
        "err_ptq": float(err(Q_ptq)),
        "err_torch": float(err(Q_torch)),
        "err_rel_diff": float(abs(err(Q_ptq) - err(Q_torch)) / err(Q_torch)),
    }


def brevitas_agreement(N: int, opt: Options, dtype: str) -> list[dict]:
    """ptq.qronos (both variants) vs Brevitas' Qronos on the same data, grid, damping, order.

    One row per ptq variant: the fraction of identical integer codes (all, at the first
    processed feature, and neurons whose every code agrees), the grids' differences, and the
    relative output errors ``||X W - X_hat Q||_F / ||X W||_F`` of both. Brevitas runs in
    ``dtype`` (its layer and buffers), ptq in the same dtype (x64 for float64). The variant
    Brevitas implements agrees up to float rounding; the other differs at step 1 (codes of
    the first feature) and, through the re-fit, in the rest of those neurons.
    """
    X, X_hat, W = make_data(N, opt.seed)
    np_dtype = np.float64 if dtype == "float64" else np.float32
    X, X_hat, W = X.astype(np_dtype), X_hat.astype(np_dtype), W.astype(np_dtype)
    B = min(opt.block_size, N)
    b = peers.brevitas_qronos(peers.to_torch(X), peers.to_torch(X_hat),
                              peers.to_torch(np.ascontiguousarray(W.T)), bits=opt.bits,
                              percdamp=0.01, block_size=B)
    Q_b = b.Q.numpy().astype(np.float64).T
    codes_b = b.codes.numpy().astype(np.int64).T
    X64, Xh64, W64 = (A.astype(np.float64) for A in (X, X_hat, W))
    target = X64 @ W64

    def err(Q):
        return np.linalg.norm(target - Xh64 @ Q) / np.linalg.norm(target)

    rows = []
    with jax.enable_x64(dtype == "float64"):
        grid = ptq.Grid.fit(jnp.asarray(W), opt.bits, kind="asymmetric", per="neuron")
        step, zero = np.asarray(grid.step, np.float64), np.asarray(grid.zero, np.float64)
        for variant in ("paper", "ls_first"):
            res = ptq.qronos(X, X_hat, W, grid, percdamp=0.01, variant=variant, block_size=B)
            Q_p, codes_p = np.asarray(res.Q, np.float64), np.asarray(res.codes, np.int64)
            same = codes_p == codes_b
            e_p, e_b = err(Q_p), err(Q_b)
            rows.append({
                "N": N, "dtype": dtype, "ptq_variant": variant,
                "grid_scale_max_rel_diff": float(np.max(np.abs(
                    b.scale.numpy()[:, 0].astype(np.float64) - step) / step)),
                "grid_zero_max_diff": float(np.max(np.abs(
                    b.zero_point.numpy()[:, 0].astype(np.float64) - zero))),
                "codes_equal_frac": float(np.mean(same)),
                "first_codes_equal_frac": float(np.mean(same[0])),  # natural order: row 0
                "neurons_equal_frac": float(np.mean(same.all(axis=0))),
                "err_ptq": float(e_p), "err_brevitas": float(e_b),
                "err_rel_diff": float(abs(e_p - e_b) / e_b),
            })
    return rows


def block_sweep(N: int, blocks, opt: Options) -> list[dict]:
    """Kernel time (from R, the only part B changes) and optq end to end, per block size."""
    X, _, W = make_data(N, opt.seed)
    Xd, Wd = jax.device_put(X), jax.device_put(W)
    grid = ptq.Grid.fit(Wd, opt.bits, kind="asymmetric", per="neuron")
    XtX = gram.gram_sym(Xd)
    lam = 0.01 * float(jnp.mean(jnp.diagonal(XtX)))
    R = _ordered_factor(XtX, lam, jnp.arange(N))
    rows = []
    for B in blocks:
        if B > N:
            continue
        k = _timer(opt)(_kernel_fn(R, Wd, grid, B))
        e = _timer(opt)(lambda: ptq.optq(Xd, Wd, grid, block_size=B).Q)
        rows.append({"N": N, "block_size": B, "kernel_s": k.median, "kernel_best_s": k.best,
                     "optq_s": e.median, "optq_best_s": e.best})
    return rows


THEORY_REPEATS = 3  # timed calls per theory function (NumPy: no compilation, no warm-up)


def theory_times(N: int, opt: Options, optq_s: float, qronos_s: float) -> list[dict]:
    """Time the `theory` bounds (float64 NumPy) at size N next to the quantization itself.

    Medians of `THEORY_REPEATS` calls on float64 copies of the benchmark's inputs. Besides each function alone, the rows "run: ..." time
    what `experiments.bounds.evaluate` computes for one run of each algorithm (one
    factorisation shared by every bound of the run), and "float64 matmul" gives NumPy's
    float64 matrix-product rate (GFLOP/s in the note), the rate the bounds are limited by.
    Each row is compared with ptq's float32 time (``vs_quantization``) and with its own
    float64 limit, its counted flops (`flops.THEORY`) at that rate (`derive_theory`).
    """
    import theory

    X, X_hat, W = make_data(N, opt.seed)
    with jax.enable_x64(False):
        grid = ptq.Grid.fit(jnp.asarray(W), opt.bits, kind="asymmetric", per="neuron")
        r = np.asarray(ptq.optq(X, W, grid).r)
    step = np.asarray(grid.step, np.float64)
    # `theory` works in float64: the inputs are converted once here, as a float64 bounds pass
    # holds them (each call would otherwise copy X to float64 again).
    X, X_hat, W = (A.astype(np.float64) for A in (X, X_hat, W))
    rows = []

    def timed(name, fn, compare, note=""):
        runs = []
        for _ in range(THEORY_REPEATS):
            t0 = time.perf_counter()
            out = fn()
            runs.append(time.perf_counter() - t0)
        dt = statistics.median(runs)
        rows.append({"N": N, "function": name, "seconds": dt,
                     "vs_quantization": dt / compare if compare else float("nan"), "note": note})
        return out, dt

    # The float64 rate every limit divides by: a warm-up call, then repeated until the runs
    # add up to min_time (a lone small product is too short to time on a loaded machine).
    A = np.random.default_rng(opt.seed).standard_normal((N, N))
    dt = timing.time_call(lambda: A @ A, THEORY_REPEATS, min_time=opt.min_time).median
    rows.append({"N": N, "function": "float64 matmul (N, N) x (N, N)", "seconds": dt,
                 "vs_quantization": float("nan"), "note": f"{2 * N**3 / dt / 1e9:.0f} GFLOP/s"})
    f, _ = timed("factorise(X)", lambda: theory.factorise(X), optq_s,
                 "shared float64 factor of H")
    fh, _ = timed("factorise(X_hat)", lambda: theory.factorise(X_hat, name="X_hat"), qronos_s)
    timed("optq_l2_bound(r=Result.r)", lambda: theory.optq_l2_bound(X, step, r=r), optq_s,
          "reuses ptq's factor: O(m N)")
    timed("optq_l2_bound", lambda: theory.optq_l2_bound(X, step), optq_s, "own factorisation")
    timed("optq_l2_bound(factors)", lambda: theory.optq_l2_bound(X, step, factors=f), optq_s)
    timed("optq_weight_bound(factors)", lambda: theory.optq_weight_bound(X, W, step, factors=f),
          optq_s)
    timed("stochastic_l2_bound(factors)", lambda: theory.stochastic_l2_bound(X, step, factors=f),
          optq_s)
    timed("stochastic_linf_bound(factors)",
          lambda: theory.stochastic_linf_bound(X, step, factors=f), optq_s)
    timed("stochastic_weight_bound(factors)",
          lambda: theory.stochastic_weight_bound(X, W, step, factors=f), optq_s)
    timed("qronos_l2_bound(factors)",
          lambda: theory.qronos_l2_bound(X, X_hat, W, step, factors=fh), qronos_s)
    timed("optq_mismatch_l2_bound(factors)",
          lambda: theory.optq_mismatch_l2_bound(X, X_hat, W, step, factors=fh), qronos_s)
    timed("qronos_linf_bound(factors)",
          lambda: theory.qronos_linf_bound(X, X_hat, W, step, factors=fh), qronos_s)

    def optq_run():  # B1, B2, B3 (B2 is free here: N <= m)
        g = theory.factorise(X)
        return (theory.optq_l2_bound(X, step, factors=g), theory.optq_structural_bound(X, step),
                theory.optq_weight_bound(X, W, step, factors=g))

    def stochastic_run():  # S1, S2, S3
        g = theory.factorise(X)
        return (theory.stochastic_l2_bound(X, step, factors=g),
                theory.stochastic_linf_bound(X, step, factors=g),
                theory.stochastic_weight_bound(X, W, step, factors=g))

    timed("run: OPTQ (factorise + B1 + B2 + B3)", optq_run, optq_s, "what a sweep run computes")
    timed("run: stochastic OPTQ (factorise + S1 + S2 + S3)", stochastic_run, optq_s)
    timed("run: Qronos (factorise(X_hat) + Q1)", lambda: theory.qronos_l2_bound(X, X_hat, W, step),
          qronos_s)
    for row in rows:
        row.update(m=X.shape[0], n=W.shape[1])
    derive_theory(rows)
    return rows


def derive_theory(rows: list[dict]) -> None:
    """Add each theory row's float64 limit (`flops.THEORY`), in place.

    ``gflop`` = the row's counted flops; ``rate64_gflops`` = NumPy's float64 rate from the
    row "float64 matmul (N, N) x (N, N)" of the same run (``2 N^3`` / its median);
    ``limit64_s = flops / rate`` and ``over_limit64 = seconds / limit64_s``. Rows of saved
    runs without m, n take the benchmark's m = 2N, n = N; rows without a count are left as
    they are.
    """
    rate = {r["N"]: flops.gemm(r["N"], r["N"], r["N"]) / r["seconds"] for r in rows
            if r["function"] == "float64 matmul (N, N) x (N, N)" and r["seconds"] > 0}
    for row in rows:
        count = flops.THEORY.get(row["function"])
        if count is None or row["N"] not in rate:
            continue
        N = row["N"]
        f = count.flops(row.get("m", 2 * N), N, row.get("n", N))
        row.update(gflop=f / 1e9, flops_formula=count.formula,
                   rate64_gflops=rate[N] / 1e9, limit64_s=f / rate[N],
                   over_limit64=row["seconds"] * rate[N] / f)


# ----------------------------------------------------------------------------- driver
def rate_for(N: int, matmul: list[dict]) -> float:
    """GFLOP/s of the square product measured at the size nearest to N (log scale)."""
    best = min(matmul, key=lambda r: abs(math.log(r["size"] / N)))
    return float(best["gflops"])


def derive(rows: list[dict], matmul: list[dict]) -> None:
    """Add the derived columns (limit, ratios, compile ratios) to the measured rows, in place.

    Only measured numbers go in, so a saved run can be re-derived (``--report-only``).
    """
    for row in rows:
        N = row["N"]
        row["rate_gflops"] = rate_for(N, matmul)
        row["limit_flops"] = flops_limit(N, row["m"], row["n"])
        row["limit_s"] = row["chol_s"] + row["limit_flops"] / (row["rate_gflops"] * 1e9)
        row["optq_over_limit"] = row["optq_s"] / row["limit_s"]
        row["optq_best_over_limit"] = row["optq_best_s"] / row["limit_s"]
        row["qronos_over_optq"] = row["qronos_s"] / row["optq_s"]
        for order in OTHER_ORDERS:
            if f"optq_{order}_s" in row:  # runs saved before these were timed have none
                row[f"optq_{order}_over_natural"] = row[f"optq_{order}_s"] / row["optq_s"]
        row["qronos_limit_s"] = row["chol_s"] + (qronos_flops_limit(N, row["m"], row["n"])
                                                 / (row["rate_gflops"] * 1e9))
        row["qronos_over_limit"] = row["qronos_s"] / row["qronos_limit_s"]
        for peer in ("torch", "qwix"):
            if f"{peer}_s" in row and not math.isnan(row[f"{peer}_s"]):
                row[f"{peer}_over_optq"] = row[f"{peer}_s"] / row["optq_s"]
        if "brevitas_qronos_s" in row and not math.isnan(row["brevitas_qronos_s"]):
            row["brevitas_over_qronos"] = row["brevitas_qronos_s"] / row["qronos_s"]
        row["compile_ratio_vs_first"] = row["optq_compile_s"] / rows[0]["optq_compile_s"]
        row["compile_pieces_ratio_vs_first"] = (
            row["compile_pieces_s"] / rows[0]["compile_pieces_s"]
        )


def run(opt: Options, progress=lambda msg: None) -> dict:
    """Run every measurement of ``opt``; returns ``{"env", "options", "rows", "matmul",
    "sweep", "agreement", "brevitas_agreement", "theory", "skipped"}`` (lists of dict rows)."""
    env = timing.environment()
    skipped = {}
    for peer, why in (("torch", peers.torch_missing()), ("qwix", peers.qwix_missing()),
                      ("brevitas", peers.brevitas_missing())):
        if peer in opt.peers and why:
            skipped[peer] = why
    use = [p for p in opt.peers if p not in skipped]
    if "torch" in use or "brevitas" in use:  # Brevitas runs on torch
        import torch

        env["torch"] = torch.__version__
        env["torch_device"] = "cpu"
    for peer in ("qwix", "brevitas"):
        if peer in use:
            import importlib.metadata

            env[peer] = importlib.metadata.version(peer)
    progress(f"environment: {env}")

    rate_sizes = sorted({min(s, 4096) for s in opt.sizes} | {min(1024, max(opt.sizes))})
    rates = timing.matmul_rate(rate_sizes, opt.repeats, opt.min_time)
    matmul = [{"size": s, "gflops": g} for s, g in rates.items()]
    progress(f"matmul GFLOP/s: {rates}")

    rows, qwix_history, brevitas_history = [], [], []
    for N in opt.sizes:
        row = {"N": N, "m": 2 * N, "n": N, "bits": opt.bits, "block_size": min(opt.block_size, N)}
        state = measure_ptq(N, opt, row)
        progress(f"N={N} ptq: optq {row['optq_s']:.3f} s, qronos {row['qronos_s']:.3f} s")
        if "torch" in use:
            measure_torch(N, state, opt, row)
            progress(f"N={N} torch GPTQ {row['torch_s']:.3f} s")
        if "qwix" in use:
            measure_qwix(N, state, opt, row, qwix_history)
            progress(f"N={N} qwix {row.get('qwix_s', math.nan):.3f} s ({row['qwix_note']})")
        if "brevitas" in use:
            measure_brevitas(N, state, opt, row, brevitas_history)
            progress(f"N={N} brevitas Qronos {row.get('brevitas_qronos_s', math.nan):.3f} s "
                     f"({row['brevitas_note']})")
        rows.append(row)
    derive(rows, matmul)

    sweep = []
    for N in opt.sweep_sizes:
        sweep += block_sweep(N, opt.sweep_blocks, opt)
        progress(f"block sweep N={N}: " + ", ".join(
            f"B={r['block_size']}: {r['kernel_s']:.3f}" for r in sweep if r["N"] == N))

    agree = []
    if opt.check_n and "torch" in use:
        for dtype in ("float32", "float64"):
            agree.append(agreement(opt.check_n, opt, dtype))
            progress(f"agreement: {agree[-1]}")
    elif opt.check_n:
        skipped["agreement"] = skipped.get("torch", "torch peer not requested")
    brevitas_agree = []
    if opt.check_n and "brevitas" in use:
        for dtype in ("float32", "float64"):
            brevitas_agree += brevitas_agreement(opt.check_n, opt, dtype)
            progress(f"brevitas agreement: {brevitas_agree[-2:]}")
    elif opt.check_n:
        skipped["brevitas_agreement"] = skipped.get("brevitas", "brevitas peer not requested")

    theory_rows = []
    if opt.theory_n:
        match = [r for r in rows if r["N"] == opt.theory_n]
        if match:
            theory_rows = theory_times(opt.theory_n, opt, match[0]["optq_s"], match[0]["qronos_s"])
            progress(f"theory at N={opt.theory_n}: done")
        else:
            skipped["theory"] = f"theory_n = {opt.theory_n} is not among the sizes {opt.sizes}"
    return {
        "env": env, "options": dataclasses.asdict(opt), "rows": rows, "matmul": matmul,
        "sweep": sweep, "agreement": agree, "brevitas_agreement": brevitas_agree,
        "theory": theory_rows, "skipped": skipped,
    }
