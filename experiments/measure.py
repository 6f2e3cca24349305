"""The one measurement layer: what a single Hydra run and the whole-model driver share.

* the grid of a configuration (`make_grid`) and the algorithm that runs on it
  (`quantize_layer`): one dispatch, for the Hydra app (`experiments.run`) and the driver
  (`experiments.driver`);
* what is measured of a quantized layer (`measure`, per neuron, float64 or on the device),
  the realised step of the grid (`realised_step`) and whether any rounding clipped
  (`clipped`, which decides whether the no-clipping bounds apply);
* the body of a synthetic run's record (`compute`: quantize, measure, evaluate every bound);
* the record cycle every run of every study goes through (`record_run`): skip a recorded
  ``ok`` run, otherwise compute in the requested precision and write the record atomically,
  an ``error`` record with the traceback when the computation fails, so that a sweep or study
  goes on; a run stopped by the batch system's time-limit signal is an ``error`` record too
  (`SchedulerStop`).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import signal
import threading
import time
import traceback
from typing import Any, Callable, Iterator

import jax
import numpy as np
import scipy.linalg

import ptq
import theory
from experiments import bounds, records, schema
from experiments.data import Layer

log = logging.getLogger(__name__)

ALGORITHMS = ("rtn", "optq", "qronos")


def make_grid(W, bits: int, *, kind: str = "asymmetric", per: str = "neuron", mse: bool = False,
              finite: bool = True, group_size: int | None = None, static_groups: bool = False,
              step: float | None = None, levels: int | None = None):
    """The grid of a configuration, for the weights ``W`` (N, n).

    ``group_size``: the `ptq.GroupGrid` recipe (GPTQ's groups of input features), fitted
    inside the algorithm: the grid it realises is the result's ``grid``. ``step``: the
    symmetric grid ``step * {-levels, ..., levels}`` (``levels=None``: every multiple of the
    step). Otherwise ``ptq.Grid.fit(W, bits, kind, per, mse)``; with ``finite=False`` its
    step on the infinite alphabet ``step * Z``, so that nothing clips and every no-clipping
    bound applies.
    """
    if group_size is not None:
        return ptq.GroupGrid(bits, kind, group_size, static=static_groups, mse=mse)
    if step is not None:
        return ptq.Grid.symmetric(np.full(W.shape[1], step), levels)
    grid = ptq.Grid.fit(W, bits, kind=kind, per=per, mse=mse)
    return grid if finite else ptq.Grid.symmetric(grid.step, None)


def quantize_layer(algorithm: str, X, X_hat, W, grid, *, variant: str = "paper", **options):
    """One layer with ``algorithm``, as practitioners run it: ``"rtn"`` sees only ``W``;
    ``"optq"`` only the inputs the quantized model sees, ``Q = OPTQ(X_hat, W)`` (GPTQ);
    ``"qronos"`` both, ``Q = Qronos(X, X_hat, W)``, which targets ``X W`` from ``X_hat``.
    ``options``: the keywords of `ptq.optq` / `ptq.qronos` (lam, percdamp, order, rounding,
    key, block_size, ...). Returns the ptq result."""
    if algorithm == "rtn":
        return ptq.rtn(W, grid)
    if algorithm == "optq":
        return ptq.optq(X_hat, W, grid, **options)
    if algorithm == "qronos":
        return ptq.qronos(X, X_hat, W, grid, variant=variant, **options)
    raise ValueError(f"`algorithm` must be one of {ALGORITHMS}; got {algorithm!r}")


def floor_ls(X, X_hat, W, lam: float) -> np.ndarray:
    """``E_LS = min_v ||Xa w - Xha v||`` per neuron (THEORY.md I5), with ridge ``lam``."""
    N = X.shape[1]
    Xa = np.vstack([X, np.sqrt(lam) * np.eye(N)]) if lam > 0 else X
    Xha = np.vstack([X_hat, np.sqrt(lam) * np.eye(N)]) if lam > 0 else X_hat
    Y = Xa @ W
    # gelsy (QR with column pivoting) handles rank-deficient X_hat like the SVD driver and is
    # about 10 times faster: 0.9 s instead of 8.7 s (20 s with numpy) for a 2048 x 1536 layer.
    V = scipy.linalg.lstsq(Xha, Y, lapack_driver="gelsy")[0]
    return np.linalg.norm(Y - Xha @ V, axis=0)


def measure(layer: Layer, Q, result, step, *, floors: bool = True, target=None,
            xp=np) -> dict[str, Any]:
    """Per-neuron measurements, float64 (shape (n,) each).

    err2, errinf: ``||X w - X_hat q||`` in the 2- and inf-norm (the layer's output error);
    err2_self, errinf_self: ``||X_f (w - q)||`` for the factorised ``X_f = X_hat``;
    err2_aug: ``sqrt(||X_f (w-q)||^2 + lam ||w-q||^2)`` (B1, B2, S1); err2_pair_aug:
    ``sqrt(||X w - X_hat q||^2 + lam ||w-q||^2)`` (Q1, Q2); w_max: the largest
    weight the recursion rounded (``Result.w_max``; ``|w|`` for RTN); w_max_over_step:
    ``w_max / delta``, the levels the largest rounded value needs (with a step per weight,
    ``step`` (N, n) of a group-wise grid, ``w_max / min_i delta_ij``: an upper estimate of the
    levels needed, since the largest value may lie in a group with a larger step); k_used:
    the largest ``|q|/delta`` used (elementwise with a per-weight step), the alphabet the run
    needed; e_ls0: ``min_v ||X w - X_hat v||``, the floor of every quantizer under mismatch,
    and e_ls its ridge form (both least-squares solves, the costliest part; ``floors=False``
    leaves them out, no bound needs them).
    ``step``: (n,) per neuron or (N, n) per weight, rows in original feature order.
    ``target``: ``X @ W`` when the caller has it already (the real model reuses it across runs).
    ``xp``: the array module of the inputs, NumPy (float64 here) or ``jax.numpy`` (the products
    then run on the device in the inputs' dtype; the caller converts the outputs).
    """
    X, X_hat, W = layer.X, layer.X_hat, layer.W
    D = (X @ W if target is None else target) - X_hat @ Q
    S = X_hat @ (W - Q)
    lam = result.lam if result is not None else 0.0  # a float, or traced under jit
    w_max = (xp.asarray(result.w_max, dtype=W.dtype) if result is not None
             else xp.abs(W).max(axis=0))
    out = {
        "err2": xp.linalg.norm(D, axis=0),
        "errinf": xp.abs(D).max(axis=0),
        "err2_self": xp.linalg.norm(S, axis=0),
        "errinf_self": xp.abs(S).max(axis=0),
        "err2_aug": xp.sqrt(xp.sum(S**2, axis=0) + lam * xp.sum((W - Q) ** 2, axis=0)),
        "err2_pair_aug": xp.sqrt(xp.sum(D**2, axis=0) + lam * xp.sum((W - Q) ** 2, axis=0)),
        "w_max": w_max,
        "w_max_over_step": w_max / (xp.min(step, axis=0) if xp.ndim(step) == 2 else step),
        "k_used": xp.abs(xp.rint(Q / step)).max(axis=0),
        "w_inf": xp.abs(W).max(axis=0),
    }
    if floors and not np.array_equal(X, X_hat):
        out["e_ls0"] = floor_ls(X, X_hat, W, 0.0)
        out["e_ls"] = floor_ls(X, X_hat, W, lam)
    return out


def clipped(result, step: np.ndarray, rounding: str, skip_first: bool, rtol: float) -> bool:
    """Whether any rounding clipped, read off the per-step errors: without clipping
    ``|e_t| <= delta/2`` (nearest) or ``< delta`` (stochastic). Qronos' paper form has
    ``e_1 = wt_1 - Q(z_1)``, not a rounding error, so its first row is skipped.

    ``step``: (), (n,) or (N, n) in original feature order; ``result.e`` is in processing
    order, so a per-weight step is taken in that order too (``step[result.order]``)."""
    if result is None:
        return False
    first = 1 if skip_first else 0
    e = np.abs(np.asarray(result.e, dtype=np.float64))[first:]
    limit = np.asarray(step, dtype=np.float64) * (0.5 if rounding == "nearest" else 1.0)
    if limit.ndim == 2:  # per weight: into processing order, the rows of e
        limit = limit[np.asarray(result.order)][first:]
    return bool((e > limit * (1 + rtol)).any())


def guidance(spec: schema.Config, layer: Layer, order) -> dict[str, Any]:
    """`theory.lam_guidance` for this layer: the lam minimising B1 (S1) at the smallest step
    for which B3 (S3) guarantees that a K-level grid never clips, K from ``grid.bits``."""
    g = theory.lam_guidance(
        layer.X_hat, layer.W, bits=spec.grid.bits, rounding=spec.algorithm.rounding.value,
        p=spec.p, per=spec.grid.per.value, order=order,
    )
    return {"lam": g.lam, "levels": g.levels, "lams": g.lams.tolist(),
            "feasible": g.feasible.tolist(), "total": g.total.tolist(), "growth": g.growth.tolist(),
            "step_mean": [float(np.mean(s)) if np.isfinite(s).all() else None for s in g.step]}


def _summary(measured: dict[str, np.ndarray]) -> dict[str, float]:
    """Layer-level aggregates: Frobenius norm, mean and max over neurons."""
    out = {}
    for k in ("err2", "err2_self"):
        out[f"{k}_fro"] = float(np.sqrt(np.sum(measured[k] ** 2)))
        out[f"{k}_mean"] = float(measured[k].mean())
    for k in ("errinf", "errinf_self", "w_max", "k_used"):
        out[f"{k}_max"] = float(measured[k].max())
    return out


def realised_step(grid, shape: tuple[int, int]) -> np.ndarray:
    """The step of the grid a run used, float64: (N, n) for a per-weight grid (a group-wise
    one, rows in original feature order), else broadcast to (n,) (scalar or per neuron)."""
    step = np.asarray(grid.step, dtype=np.float64)
    return step.copy() if step.ndim == 2 else np.broadcast_to(step, (shape[1],)).copy()


def check_bounds(layer: Layer, result, step, measured: dict, *, algorithm: str, rounding: str,
                 variant: str, mismatched: bool, p: float,
                 precision: str) -> tuple[bool, dict[str, Any]]:
    """Whether any rounding clipped (`clipped`) and every bound that applies to the run
    (`experiments.bounds.applicable`) evaluated against ``measured`` (`bounds.evaluate`, the
    factorised inputs being ``X_hat``); ``result`` None (RTN) has no bound. The one judgement of
    synthetic runs (`compute`) and model layers (`experiments.driver.theory_bounds`)."""
    is_paper = algorithm == "qronos" and variant == "paper"
    clip = clipped(result, step, rounding, is_paper, bounds.RTOL[precision])
    strength = getattr(result, "strength", None)
    strength = 1.0 if strength is None else float(strength)
    names = bounds.applicable(algorithm, rounding, mismatched, strength)
    if not names:
        return clip, {}
    return clip, bounds.evaluate(
        names, X_f=layer.X_hat, X=layer.X, X_hat=layer.X_hat, W=layer.W, step=step,
        lam=float(result.lam), order=np.asarray(result.order), variant=variant, p=p,
        measured=measured, clipped=clip, precision=precision, strength=strength)


def compute(spec: schema.Config, layer: Layer) -> dict[str, Any]:
    """The body of a record for a validated config and its layer (raises on failure)."""
    t0 = time.perf_counter()
    Q, result, grid = quantize_config(spec, layer)
    t1 = time.perf_counter()
    step = realised_step(grid, layer.W.shape)
    a = spec.algorithm
    measured = measure(layer, Q, result, step)
    mismatched = not np.array_equal(layer.X, layer.X_hat)
    clip, evaluated = check_bounds(layer, result, step, measured, algorithm=a.method.value,
                                   rounding=a.rounding.value, variant=a.variant.value,
                                   mismatched=mismatched, p=spec.p,
                                   precision=spec.precision.value)
    lam = float(result.lam) if result is not None else None
    order = np.asarray(result.order) if result is not None else None
    guide = guidance(spec, layer, order) if spec.guidance and order is not None else None
    t2 = time.perf_counter()
    K = None if not grid.is_finite else float(min(-np.min(grid.index_bounds()[0]),
                                                  np.min(grid.index_bounds()[1])))
    return {
        "shapes": dict(zip(("m", "N", "n"), (*layer.X.shape, layer.W.shape[1]))),
        "data_source": layer.source,
        "lam": lam,
        "order": order.tolist() if order is not None else None,
        "step": step.tolist(),
        "K": K,
        "clipped": clip,
        "mismatched": mismatched,
        "measured": {k: v.tolist() for k, v in measured.items()},
        "summary": _summary(measured),
        "bounds": evaluated,
        "guidance": guide,
        "wall_s": {"algorithm": t1 - t0, "bounds": t2 - t1},
    }


def config_grid(g: schema.GridConfig, W):
    """The grid a validated grid config describes, for ``W`` (`make_grid`)."""
    return make_grid(W, g.bits, kind=g.kind.value, per=g.per.value, mse=g.mse, finite=g.finite,
                     group_size=g.group_size, static_groups=g.static_groups, step=g.step,
                     levels=g.levels)


def quantize_config(spec: schema.Config, layer: Layer):
    """Run the configured algorithm; returns (Q float64, Result or None for RTN, the
    realised grid: ``result.grid``, the fitted one for a `ptq.GroupGrid`)."""
    a = spec.algorithm
    grid = config_grid(spec.grid, layer.W)
    options = {} if a.method == schema.Method.rtn else dict(
        lam=a.lam, percdamp=a.percdamp, order=a.order.value, order_seed=a.order_seed,
        rounding=a.rounding.value, block_size=a.block_size,
        key=jax.random.key(spec.seed) if a.rounding == schema.Rounding.stochastic else None)
    result = quantize_layer(a.method.value, layer.X, layer.X_hat, layer.W, grid,
                            variant=a.variant.value, **options)
    jax.block_until_ready(result.Q)
    Q = np.asarray(result.Q, dtype=np.float64)
    return Q, (None if a.method == schema.Method.rtn else result), result.grid


class SchedulerStop(BaseException):
    """The batch system stopped the run before it finished (SLURM's time-limit warning).

    submitit asks SLURM for SIGUSR2 ``signal_delay_s`` before the time limit and answers it by
    requeueing the job (SystemExit) or, when no requeue is left, by raising UncompletedJobError
    wherever the run happens to be. That exception is an Exception: code that records its own
    failures (each bound in `experiments.bounds`, the shared factorisation) would take it for a
    failed computation and carry on, leaving an ``ok`` record made after the stop. Raised instead
    of it, a BaseException (like KeyboardInterrupt) passes every ``except Exception`` up to
    `run`, which records the run as an error, so that the next sweep runs it again.
    """


@contextlib.contextmanager
def _stop_on_scheduler_signal() -> Iterator[None]:
    """While computing, turn an exception raised by the SIGUSR2 handler (submitit's, under
    SLURM) into `SchedulerStop`. Without a Python-level handler (local runs) nothing changes."""
    previous = signal.getsignal(signal.SIGUSR2)
    if not callable(previous) or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        try:
            previous(signum, frame)  # submitit: requeue and exit, or raise
        except Exception as exc:
            raise SchedulerStop(f"{type(exc).__name__}: {exc}") from exc

    signal.signal(signal.SIGUSR2, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR2, previous)


@contextlib.contextmanager
def precision(x64: bool | None) -> Iterator[None]:
    """JAX's x64 mode set to ``x64`` while inside (None: left as it is), restored after."""
    if x64 is None:
        yield
        return
    old = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", bool(x64))
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", old)


def record_run(path: str, config: dict[str, Any], compute: Callable[[], dict[str, Any]], *,
               label: str, header: dict[str, Any] | None = None,
               x64: bool | None = None) -> dict[str, Any]:
    """The record cycle of one run: return the ``ok`` record at ``path`` if there is one
    (marked ``skipped``); otherwise call ``compute()`` (JAX's x64 mode set to ``x64``) and
    write ``{id, **header, config, versions, created, **compute(), status: "ok", wall_s}``
    atomically, or, if it raises, an ``error`` record with the exception and its traceback
    (logged with ``label``). Returns the record written."""
    old = records.read(path)
    if old is not None and old.get("status") == "ok":
        return dict(old, skipped=True)
    record: dict[str, Any] = {"id": records.run_id(config), **(header or {}), "config": config,
                              "versions": records.versions(),
                              "created": datetime.datetime.now(datetime.UTC).isoformat()}
    t0 = time.perf_counter()
    try:
        with precision(x64), _stop_on_scheduler_signal():
            record.update(compute(), status="ok")
    except (Exception, SchedulerStop) as exc:  # the sweep goes on; the record keeps the traceback
        log.error("%s failed: %s: %s", label, type(exc).__name__, exc)
        record.update(status="error", error=f"{type(exc).__name__}: {exc}",
                      traceback=traceback.format_exc())
    record.setdefault("wall_s", {})["total"] = time.perf_counter() - t0
    records.write_atomic(path, record)
    return record
