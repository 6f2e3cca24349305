r"""Bits per layer under an average-bits budget: seed 002's formula, the theory, uniform bits.

    python -m experiments.studies.allocation  # default: budgets 3.0 and 3.5, 3 seeds (~3 min)
    python -m experiments.studies.allocation --size smoke    # what CI runs (one seed, budget 3.0)

MiniLM's 36 linear layers each get a bit-width from ``BIT_SET`` = (2, 3, 4, 8) so that the
average over all weights, ``sum_l n_l b_l / sum_l n_l`` (n_l = N_l x n_l weights; the scales
and zero points, 16 + b bits per output channel, are not counted), is at most the budget.
Every allocation is quantized with OPTQ (GPTQ's asymmetric min-max grid per output channel,
natural order, ptq's default damping) through the one driver, each layer at its own bits
(`experiments.driver`'s ``overrides``), and scored on the MiniLM study's held-out text
(mean cosine of the sentence embeddings with the full-precision model).

What the allocations use, all measured on the seed's calibration text only:

* the sensitivity ``alpha_l``: the end-to-end loss increase per unit of output-error power
  injected at layer l. The loss is QAT's distillation loss (`experiments.studies.qat`): the squared
  error of the last hidden states against the full-precision model's, over the squared norm
  of the latter. The error is injected as Gaussian weight noise ``G = s Z`` (Z standard
  normal, seeded) on layer l alone, so its output error ``X_l G`` has the correlations across
  tokens that a quantization error ``X_l (W - Q)`` has; s is set so that the injected power
  ``||X_l G||_F^2`` is a fixed fraction ``rho`` of the layer's output power ``||X_l W_l||_F^2``,
  and ``alpha_l = (L(W + G) - L(W)) / ||X_l G||_F^2`` (L(W) = 0). Measured at two fractions
  (``noise``, 1% and 4%); ``linearity`` is the ratio of the two alphas (1 where the loss is
  linear in the injected power, the model every allocation assumes); the allocation uses the
  first. X_l is the layer's full-precision input.
* ``sigma_l^2``: the variance of the layer's weights.
* ``D_l(b)``: the layer's predicted OPTQ error at b bits, from identity I3 at high rate,
  ``sum_j delta_j(b)^2 sum_t r_t^2 / 12`` (delta_j(b) the step of neuron j's b-bit grid, r_t
  from X_l and the damping; `theory.optq_l2_bound` with unit steps gives ``sqrt(sum_t r_t^2)/2``),
  B1 squared divided by 3.

The allocations (`allocate_seed`, `allocate_theory`, `allocate_uniform`):

* ``seed``: seed 002's ``b*_l = 1/2 log2(alpha_l sigma_l^2 / lambda)``, rounded to the nearest
  width of the set (clipped to [2, 8]); lambda is the smallest (by bisection on log lambda) at
  which the rounded widths meet the budget;
* ``theory``: the exact minimiser of the predicted loss increase ``sum_l alpha_l D_l(b_l)``
  under the budget, by dynamic programming over the budget in units of the smallest layer;
* ``uniform``: every layer at one width, at each integer width between the budgets' floor and
  ceiling (3 and 4 at the default size: 3.5 has no uniform allocation).

Each run's per-layer bits become a GPTQModel ``dynamic`` override (`ptq.pack.QuantizeConfig`,
built by `experiments.studies.checkpoint.Collector.config`), recorded with the run; at each seed the
theory allocation at the largest budget is written as a packed checkpoint, read back and
compared with the in-memory model (``checkpoint`` in the record: each layer's bits, and the
largest relative weight change, the float16 rounding of the scales, at most 2^-11).

One record per seed (JSON, atomic, resumable) in ``runs/<size>/allocation/``; the table
``figures/allocation.csv``, the per-layer table ``figures/allocation_layers.csv`` and the
figure ``figures/allocation.{png,pdf}`` (`experiments.figures.allocation`).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sys
import tempfile
import time
from typing import Any, NamedTuple

import numpy as np

import theory
from experiments import driver as qm
from experiments import records
from experiments.figures import allocation as figures
from experiments.measure import record_run
from experiments.studies import checkpoint as ck
from experiments.studies import qat, qat_training
from experiments.studies.checkpoint import Collector
from experiments.study import StudyCommand, load_sizes
from ptq.pack import FLOAT16_REL

log = logging.getLogger(__name__)

BIT_SET = (2, 3, 4, 8)
ALLOCATIONS = ("uniform", "seed", "theory")
PERCDAMP = 0.01  # ptq's default damping, used by the driver and by the prediction


class Size(NamedTuple):
    seeds: tuple[int, ...]  # calibration draws (experiments.studies.qat.calibration)
    budgets: tuple[float, ...]  # average bits per weight
    tokens: int  # calibration tokens
    heldout: int  # held-out sequences scored
    noise: tuple[float, float]  # injected output-error power / output power, for alpha


SIZES = load_sizes("allocation", Size)  # conf/study/allocation.yaml


# --------------------------------------------------------------------------- allocations
def _check(values, name: str, n: int | None = None) -> np.ndarray:
    v = np.asarray(values, np.float64)
    if v.ndim != 1 or (n is not None and v.shape[0] != n) or not np.all(np.isfinite(v)):
        raise ValueError(f"`{name}` must be a finite 1-D array" + (f" of {n} layers" if n else "")
                         + f"; got shape {v.shape}")
    return v


def _check_budget(budget: float, sizes: np.ndarray) -> float:
    if not BIT_SET[0] <= budget <= BIT_SET[-1]:
        raise ValueError(f"`budget` must be in [{BIT_SET[0]}, {BIT_SET[-1]}] bits per weight; "
                         f"got {budget!r}")
    if np.any(sizes <= 0):
        raise ValueError("`sizes` must be positive weight counts")
    return float(budget)


def average_bits(bits, sizes) -> float:
    """``sum_l n_l b_l / sum_l n_l``: bits per weight of an allocation."""
    b, n = np.asarray(bits, np.float64), np.asarray(sizes, np.float64)
    return float(np.sum(n * b) / np.sum(n))


def allocate_uniform(n_layers: int, bits: int) -> np.ndarray:
    if bits not in BIT_SET:
        raise ValueError(f"`bits` must be one of {BIT_SET}; got {bits!r}")
    return np.full(n_layers, bits, np.int64)


def _nearest_width(b: np.ndarray) -> np.ndarray:
    widths = np.asarray(BIT_SET)
    return widths[np.argmin(np.abs(np.clip(b, widths[0], widths[-1])[:, None] - widths), axis=1)]


def allocate_seed(alpha, sigma2, sizes, budget: float) -> tuple[np.ndarray, float]:
    """Seed 002's rule ``b*_l = 1/2 log2(alpha_l sigma_l^2 / lambda)`` on ``BIT_SET``.

    The continuous widths are rounded to the nearest width of the set (clipped to [2, 8]);
    the average of the rounded widths falls as lambda grows, and lambda is the smallest at which
    it is within ``budget`` (bisection on log lambda to 1e-12). Returns ``(bits, lambda)``.
    """
    a = _check(alpha, "alpha")
    s2 = _check(sigma2, "sigma2", a.shape[0])
    n = _check(sizes, "sizes", a.shape[0])
    budget = _check_budget(budget, n)
    if np.any(a <= 0) or np.any(s2 <= 0):
        raise ValueError("`alpha` and `sigma2` must be positive")
    log_v = np.log(a * s2)

    def bits(log_lam):
        return _nearest_width(0.5 * (log_v - log_lam) / math.log(2))

    # every layer at 8 bits below lo, at 2 bits above hi
    lo, hi = log_v.min() - 2 * 9 * math.log(2), log_v.max() + 1.0
    if average_bits(bits(lo), n) <= budget:
        return bits(lo), math.exp(lo)
    while hi - lo > 1e-12:
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if average_bits(bits(mid), n) <= budget else (mid, hi)
    return bits(hi), math.exp(hi)


def allocate_theory(cost, sizes, budget: float) -> tuple[np.ndarray, float]:
    """The exact minimiser of ``sum_l cost[l, k_l]`` with ``average_bits <= budget``.

    ``cost`` is (L, len(BIT_SET)): the predicted loss increase of layer l at each width.
    Dynamic programming over the budget in units of ``gcd(sizes)`` weights (the budget is
    rounded down to whole units, so the result never exceeds it): O(L x units x 4).
    Returns ``(bits, predicted total cost)``.
    """
    c = np.asarray(cost, np.float64)
    n = _check(sizes, "sizes")
    if c.shape != (n.shape[0], len(BIT_SET)) or not np.all(np.isfinite(c)):
        raise ValueError(f"`cost` must be a finite ({n.shape[0]}, {len(BIT_SET)}) array; "
                         f"got shape {c.shape}")
    budget = _check_budget(budget, n)
    ints = n.astype(np.int64)
    if not np.array_equal(ints, n):
        raise ValueError("`sizes` must be integer weight counts")
    unit = math.gcd(*ints.tolist())
    u = ints // unit
    cap = int(math.floor(budget * u.sum() + 1e-9))
    L, widths = len(u), np.asarray(BIT_SET)
    best = np.full(cap + 1, np.inf)  # best[s]: least cost of the layers so far using s units
    best[0] = 0.0
    choice = np.zeros((L, cap + 1), np.int8)
    for l in range(L):
        nxt = np.full(cap + 1, np.inf)
        for k, b in enumerate(widths):
            w = int(u[l] * b)
            if w > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[w:] = best[: cap + 1 - w] + c[l, k]
            better = cand < nxt
            nxt[better], choice[l, better] = cand[better], k
        best = nxt
    if not np.isfinite(best).any():
        raise ValueError(f"`budget` {budget} is below the smallest allocation ({BIT_SET[0]} bits)")
    s = int(np.argmin(best))
    total = float(best[s])
    out = np.zeros(L, np.int64)
    for l in range(L - 1, -1, -1):
        k = int(choice[l, s])
        out[l] = widths[k]
        s -= int(u[l] * widths[k])
    return out, total


# --------------------------------------------------------------------------- measurements
def layer_inputs(model, batch) -> dict[str, np.ndarray]:
    """Each linear layer's full-precision calibration input X_l (m, N), from the driver."""
    records_, _ = qm.quantize_model(model, qm.make_options("rtn", 8), batch,
                                    on_layer=lambda ctx: {"X": np.asarray(ctx.X, np.float32)})
    return {r["name"]: r["X"] for r in records_}


def _weights(model) -> dict[str, np.ndarray]:
    return {model.layer_name(i, k): np.asarray(p[k][0], np.float32)
            for i, p in enumerate(model.params["blocks"]) for k in model.kinds}


def distillation_loss(model, batch):
    """``params -> L``: QAT's loss on ``batch``, ``sum ||h_6 - h_6^fp||^2 / sum ||h_6^fp||^2``."""
    import jax

    target = jax.jit(lambda p, b: qat_training.hidden(model, p, b))(model.params, batch)
    errors = jax.jit(lambda p, b, t: qat_training.sq_errors(model, p, b, t))

    def loss(params) -> float:
        num, den = errors(params, batch, target)
        return float(num / den)

    return loss


def sensitivities(model, batch, X: dict, noise: tuple[float, ...], seed: int,
                  loss=None) -> dict:
    """Layer name -> alphas at each noise fraction (see the module docstring)."""
    import jax.numpy as jnp

    loss = distillation_loss(model, batch) if loss is None else loss
    W = _weights(model)
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(model.n_blocks):
        for kind in model.kinds:
            name = model.layer_name(i, kind)
            Xl = X[name].astype(np.float64)
            Z = rng.standard_normal(W[name].shape)
            pz = float(np.sum((Xl @ Z) ** 2))
            pw = float(np.sum((Xl @ W[name].astype(np.float64)) ** 2))
            alphas = []
            for rho in noise:
                s = math.sqrt(rho * pw / pz)
                blocks = [dict(p) for p in model.params["blocks"]]
                w, b = blocks[i][kind]
                blocks[i][kind] = (jnp.asarray(W[name] + s * Z, jnp.float32), b)
                alphas.append(loss({**model.params, "blocks": blocks}) / (s * s * pz))
            out[name] = alphas
    return out


def predicted_errors(X: dict, W: dict, bits=BIT_SET) -> dict[str, np.ndarray]:
    """Layer name -> (len(bits),) high-rate OPTQ error ``sum_j delta_j(b)^2 sum_t r_t^2 / 12``."""
    out = {}
    for name, Wl in W.items():
        half_root = np.asarray(theory.optq_l2_bound(X[name].astype(np.float64),
                                                    np.ones(Wl.shape[1]), percdamp=PERCDAMP))
        r_sq = float(4 * half_root[0] ** 2)  # sum_t r_t^2, the same for every neuron
        steps = [np.asarray(qm.make_grid(qm.make_options("optq", b), Wl).step, np.float64)
                 for b in bits]
        out[name] = np.array([float(np.sum(s**2)) * r_sq / 12 for s in steps])
    return out


def quantize_and_score(model, batch, names, bits, heldout: int, loss=None) -> dict:
    """OPTQ at ``bits`` per layer (``names`` order): quality, layer errors, the dynamic config,
    and with ``loss`` (`distillation_loss`) the calibration loss of the quantized model."""
    widths = dict(zip(names, (int(b) for b in bits)))
    base = max(sorted(set(widths.values())), key=list(widths.values()).count)
    packer = Collector()
    t0 = time.perf_counter()
    recs, params = qm.quantize_model(
        model, qm.make_options("optq", base), batch, on_layer=packer,
        overrides={n: {"bits": b} for n, b in widths.items() if b != base})
    seconds = time.perf_counter() - t0
    layers, fmt = packer.finish("gptq_v2")  # v2 stores every zero point (v1 not zero)
    config = packer.config(qm.make_options("optq", base), fmt)
    if {n: config.for_layer(n).bits for n in names} != widths:
        raise RuntimeError("the dynamic config does not give every layer its bits")
    return {"params": params, "layers": layers, "config": config, "seconds": seconds,
            "quality": qat.heldout_quality(params, heldout),
            "loss": None if loss is None else loss(params),
            "self_err2": {r["name"]: float(np.sum(np.asarray(r["self2"], np.float64) ** 2))
                          for r in recs}}


def _checkpoint_check(model, run: dict) -> dict:
    """Write the run as a packed checkpoint, read it back, compare with the in-memory model."""
    with tempfile.TemporaryDirectory() as tmp:
        ck.save_model(tmp, model, run["layers"], run["config"], run["params"], dtype="float32")
        back = ck.load_model(tmp, model)
        size = ck.file_size(tmp)
    widths = {n: lyr.bits for n, lyr in run["layers"].items()}
    return {"bytes": size, "max_weight_change": ck.max_weight_change(model, run["params"], back),
            "bits_round_trip": widths == {n: run["config"].for_layer(n).bits for n in widths}}


def seed_record(size: Size, seed: int) -> dict:
    """Everything the study measures at one calibration seed."""
    model = qat._model()
    batch = qat.calibration(size.tokens, seed)
    names = [model.layer_name(i, k) for i in range(model.n_blocks) for k in model.kinds]
    W = _weights(model)
    t0 = time.perf_counter()
    X = layer_inputs(model, batch)
    loss = distillation_loss(model, batch)
    alphas = sensitivities(model, batch, X, size.noise, seed, loss)
    D = predicted_errors(X, W)
    measure_s = time.perf_counter() - t0
    del X
    alpha = np.array([alphas[n][0] for n in names])
    sigma2 = np.array([float(np.var(W[n])) for n in names])
    sizes = np.array([W[n].size for n in names])
    cost = alpha[:, None] * np.array([D[n] for n in names])
    plans: list[tuple[str, float, np.ndarray, dict]] = []
    for b in range(int(math.floor(min(size.budgets))), int(math.ceil(max(size.budgets))) + 1):
        plans.append(("uniform", float(b), allocate_uniform(len(names), b), {}))
    for budget in size.budgets:
        bits, lam = allocate_seed(alpha, sigma2, sizes, budget)
        plans.append(("seed", budget, bits, {"lambda": lam}))
        bits, total = allocate_theory(cost, sizes, budget)
        plans.append(("theory", budget, bits, {"predicted_optimum": total}))
    runs, check = [], None
    k_of = {b: k for k, b in enumerate(BIT_SET)}
    for j, (alloc, budget, bits, extra) in enumerate(plans, 1):
        run = quantize_and_score(model, batch, names, bits, size.heldout, loss)
        pred = float(sum(cost[l, k_of[int(b)]] for l, b in enumerate(bits)))
        runs.append({"allocation": alloc, "budget": budget, "avg_bits": average_bits(bits, sizes),
                     "bits": [int(b) for b in bits], "quality": run["quality"],
                     "predicted_loss": pred, "loss": run["loss"], "seconds": run["seconds"],
                     "dynamic": run["config"].to_dict().get("dynamic"),
                     "base_bits": run["config"].bits, "self_err2": run["self_err2"], **extra})
        log.info("[allocation seed %d %d/%d] %-7s budget %.1f: %.3f bits, cosine %.4f (%.0fs)",
                 seed, j, len(plans), alloc, budget, runs[-1]["avg_bits"], run["quality"],
                 run["seconds"])
        if alloc == "theory" and budget == max(size.budgets):
            check = _checkpoint_check(model, run)
    layers = [{"name": n, "weights": int(sizes[l]), "sigma2": float(sigma2[l]),
               "alpha": float(alphas[n][0]), "alpha_high": float(alphas[n][1]),
               "linearity": float(alphas[n][1] / alphas[n][0]),
               **{f"pred_err_{b}": float(D[n][k]) for k, b in enumerate(BIT_SET)}}
              for l, n in enumerate(names)]
    return {"layers": layers, "runs": runs, "checkpoint": check, "measure_seconds": measure_s}


# --------------------------------------------------------------------------- the study
class AllocationStudy(StudyCommand):
    """The study as `experiments.reproduce` runs it (``sizes``, ``run_and_build``)."""

    key = "allocation"
    figures = staticmethod(figures.build_all)
    label = "allocation"
    description = "Mixed-precision bits per MiniLM layer: seed 002's formula, the theory, uniform."
    in_default_reproduce = False  # `--only allocation` at default size (the budget)
    sizes = SIZES

    def run_study(self, size_name: str, folder: str) -> int:
        size = self.size(size_name)
        ran = 0
        for seed in size.seeds:
            cfg = {"study": self.key, "seed": seed, "budgets": list(size.budgets),
                   "tokens": size.tokens, "heldout": size.heldout, "noise": list(size.noise),
                   "bit_set": list(BIT_SET), "algorithm": "optq"}
            path = os.path.join(folder, f"seed{seed}-{records.run_id(cfg)}.json")
            rec = record_run(path, cfg, functools.partial(seed_record, size, seed),
                             label=f"allocation seed {seed}")
            if rec.get("skipped"):
                continue
            ran += 1
            log.info("[allocation] seed %d: %s (%.0fs)", seed, rec["status"],
                     rec["wall_s"]["total"])
        return ran

    def summarize(self, folder: str, ids: set[str] | None = None) -> dict[str, Any]:
        """Records, errors, and as violations: runs over their budget, checkpoints whose
        reloaded bits differ from the in-memory model's or whose weights differ by more than
        the float16 rounding of the scales (relative 2^-11, `ptq.pack.FLOAT16_REL`)."""
        recs = self.load(folder, ids)
        ok = [r for r in recs if r["status"] == "ok"]
        over = sum(1 for r in ok for run in r["runs"]
                   if run["allocation"] != "uniform" and run["avg_bits"] > run["budget"] + 1e-9)
        bad = sum(1 for r in ok if r["checkpoint"] is None or not r["checkpoint"]["bits_round_trip"]
                  or r["checkpoint"]["max_weight_change"] > FLOAT16_REL)
        return {"runs": len(ok), "errors": len(recs) - len(ok), "violations": over + bad,
                "prob_violation_rate": np.nan, "p": np.nan, "median_tightness": np.nan}


STUDY = AllocationStudy()
main = STUDY.main

__all__ = ["ALLOCATIONS", "BIT_SET", "SIZES", "STUDY", "Size", "allocate_seed",
           "allocate_theory", "allocate_uniform", "average_bits", "distillation_loss",
           "layer_inputs", "main",
           "predicted_errors", "quantize_and_score", "sensitivities"]

if __name__ == "__main__":
    sys.exit(main())
