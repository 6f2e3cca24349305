"""Group-wise grids (`ptq.GroupGrid`) through the Hydra `grid` group and `experiments.run`.

A smoke-size layer (m = 64, N = 32, n = 6) with groups of 8 features: every algorithm gives an
``ok`` record whose step is the realised (N, n) grid of the result, its group table expanded
by ``g_idx``; the bounds take that step as is and none is violated where nothing clipped.
"""

from __future__ import annotations

import numpy as np
import pytest

import ptq
from experiments import data, measure, records, schema
from experiments import run as run_mod

N, n, GS = 32, 6, 8
SMOKE = [f"data.N={N}", "data.m=64", f"data.n={n}"]


@pytest.fixture
def spy(monkeypatch):
    """Record what `experiments.measure.quantize_config` returns (Q, Result or None, realised grid)
    and
    the RTN result, which `quantize` does not hand back."""
    seen = {}
    quantize, rtn = measure.quantize_config, ptq.rtn

    def keep_rtn(*a, **kw):
        seen["rtn"] = rtn(*a, **kw)
        return seen["rtn"]

    def keep(*a, **kw):
        seen["out"] = quantize(*a, **kw)
        return seen["out"]

    monkeypatch.setattr(measure, "quantize_config", keep)
    monkeypatch.setattr(ptq, "rtn", keep_rtn)
    return seen


def run_one(compose_cfg, tmp_path, overrides):
    return run_mod.run(compose_cfg([*SMOKE, f"out_dir={tmp_path}", *overrides]))


def test_group_preset_and_overrides_compose(compose_cfg):
    g = schema.validate(compose_cfg(["grid=group128"])).grid
    assert (g.kind, g.bits, g.group_size, g.static_groups) == (schema.GridKind.asymmetric, 4,
                                                                128, False)
    g = schema.validate(compose_cfg(["grid=asymmetric", "grid.group_size=32",
                                     "grid.static_groups=true"])).grid
    assert (g.group_size, g.static_groups) == (32, True)
    recipe = measure.config_grid(g, np.zeros((N, n)))
    assert recipe == ptq.GroupGrid(4, "asymmetric", 32, static=True, mse=False)
    # GPTQ's -1 means per channel: the ordinary fitted grid
    g = schema.validate(compose_cfg(["grid=group128", "grid.group_size=-1"])).grid
    assert g.group_size is None
    assert isinstance(measure.config_grid(g, np.ones((N, n))), ptq.Grid)


@pytest.mark.parametrize("overrides, key", [
    (["grid=group128", "grid.group_size=0"], "grid.group_size"),
    (["grid=group128", "grid.group_size=-2"], "grid.group_size"),
    (["grid=fixed_step", "grid.group_size=8"], "grid.step"),
    (["grid=group128", "grid.per=layer"], "grid.per"),
    (["grid=unbounded", "grid.group_size=8"], "grid.finite"),
])
def test_invalid_group_configs_fail_naming_the_key(compose_cfg, tmp_path, overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")) as info:
        run_one(compose_cfg, tmp_path, overrides)
    assert "grid.group_size" in str(info.value)  # what it conflicts with, named
    assert records.record_files([str(tmp_path)]) == []  # nothing written


def _independent_clip(res, Q, grid, skip_first: bool, half: float) -> bool:
    """Clipping read off the range instead of the errors: the value rounded at step t,
    ``z_t = q_t + e_t`` (processing order), lies more than ``half`` a step (1/2 nearest, 1
    stochastic) outside its group's index range [kmin, kmax] (margin 1e-9 steps for float64
    rounding)."""
    order = np.asarray(res.order)
    step = np.asarray(grid.step, np.float64)[order]
    kmin, kmax = (np.broadcast_to(np.asarray(k, np.float64), (N, n))[order]
                  for k in grid.index_bounds())
    x = (np.asarray(Q)[order] + np.asarray(res.e, np.float64)) / step
    out = (x > kmax + half + 1e-9) | (x < kmin - half - 1e-9)
    return bool(out[1 if skip_first else 0:].any())


# Measured unclipped on this data (seed 0) at 4 bits, groups of 8: the no-clipping bounds are
# then checked on group-wise steps. (Qronos clips here once X_hat != X.)
CASES = {
    "optq": (["data.mismatch=0.1"], True),
    "optq_stochastic": (["data.mismatch=0.1"], True),
    "qronos": ([], True),
    "qronos_ls": ([], True),
    "qronos_mismatch": (["algorithm=qronos", "data.mismatch=0.1"], False),
    "rtn": (["data.mismatch=0.1"], True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_group_wise_run_records_the_realised_grid(compose_cfg, tmp_path, spy, case):
    extra, unclipped = CASES[case]
    alg = [] if case == "qronos_mismatch" else [f"algorithm={case}"]
    rec = run_one(compose_cfg, tmp_path, [*alg, "grid=group128", f"grid.group_size={GS}",
                                          *extra])
    assert rec["status"] == "ok", rec.get("traceback")
    Q, result, grid = spy["out"]
    res = spy["rtn"] if result is None else result
    step = np.asarray(rec["step"])
    assert step.shape == (N, n)
    g_idx = np.asarray(res.g_idx)
    assert g_idx.shape == (N,) and np.asarray(res.scales).shape == (N // GS, n)
    np.testing.assert_array_equal(step, np.asarray(res.scales, np.float64)[g_idx])
    np.testing.assert_array_equal(step, np.asarray(grid.step, np.float64))
    # natural order, dynamic groups: consecutive features
    np.testing.assert_array_equal(g_idx, np.arange(N) // GS)
    np.testing.assert_array_equal(np.asarray(grid.dequantize(res.codes)), Q)
    for k, v in rec["measured"].items():
        assert len(v) == n, k  # per neuron, also with a per-weight step
    m = {k: np.asarray(v) for k, v in rec["measured"].items()}
    np.testing.assert_allclose(m["w_max_over_step"], m["w_max"] / step.min(axis=0), rtol=1e-15)
    np.testing.assert_array_equal(m["k_used"], np.abs(np.rint(Q / step)).max(axis=0))
    kmin, kmax = (np.broadcast_to(np.asarray(k), (N, n)) for k in grid.index_bounds())
    assert rec["K"] == float(min(-kmin.min(), kmax.min()))
    if result is not None:
        paper = case in ("qronos", "qronos_mismatch")
        half = 1.0 if case == "optq_stochastic" else 0.5
        assert rec["clipped"] == _independent_clip(result, Q, grid, paper, half)
    assert rec["clipped"] == (not unclipped)
    if case == "rtn":
        assert rec["bounds"] == {}
    for name, b in rec["bounds"].items():
        assert "error" not in b, (name, b)
        # checked unless the run clipped (or the bound is on an expectation, S1)
        assert b["checked"] == (not rec["clipped"] and b["kind"] != "expectation"), name
        assert b["violations"] == 0, (name, b["ratio_max"])
    if unclipped and case != "rtn":
        assert any(b["checked"] for b in rec["bounds"].values()), "no bound was checked"


@pytest.mark.parametrize("algorithm", ["optq", "qronos"])
def test_static_groups_follow_original_order_under_act_order(compose_cfg, tmp_path, spy,
                                                             algorithm):
    """static_groups: g_idx[j] == j // group_size whatever the order; dynamic groups are
    consecutive in processing order, g_idx[order[t]] == t // group_size."""
    common = [f"algorithm={algorithm}", "grid=group128", f"grid.group_size={GS}",
              "algorithm.order=decreasing_norm"]
    paper = algorithm == "qronos"
    rec = run_one(compose_cfg, tmp_path, [*common, "grid.static_groups=true"])
    assert rec["status"] == "ok", rec.get("traceback")
    Q, res, grid = spy["out"]
    assert rec["clipped"] == _independent_clip(res, Q, grid, paper, 0.5)  # step[order] used
    order = np.asarray(rec["order"])
    assert not np.array_equal(order, np.arange(N))  # a real permutation
    np.testing.assert_array_equal(np.asarray(res.g_idx), np.arange(N) // GS)
    np.testing.assert_array_equal(np.asarray(rec["step"]),
                                  np.asarray(res.scales, np.float64)[np.arange(N) // GS])
    rec = run_one(compose_cfg, tmp_path, common)
    Q, res, grid = spy["out"]
    assert rec["clipped"] == _independent_clip(res, Q, grid, paper, 0.5)
    g = np.asarray(res.g_idx)
    np.testing.assert_array_equal(g[np.asarray(rec["order"])], np.arange(N) // GS)
    np.testing.assert_array_equal(np.asarray(rec["step"]),
                                  np.asarray(res.scales, np.float64)[g])


def test_per_channel_records_keep_one_step_per_neuron(compose_cfg, tmp_path):
    for grid in (["grid=asymmetric"], ["grid=group128", "grid.group_size=-1"]):
        rec = run_one(compose_cfg, tmp_path, grid)
        assert rec["status"] == "ok" and np.shape(rec["step"]) == (n,), grid


def test_clipped_takes_per_weight_steps_in_processing_order():
    """``result.e`` is in processing order: an (N, n) step (original order) must be taken at
    ``order``. With the order reversed, each error is 0.4 of its own step (no clipping), but
    well above half of the step of the row it would meet unpermuted."""
    rng = np.random.default_rng(1)
    step = np.exp(rng.uniform(-3, 3, (N, n)))
    step[np.arange(N) % 2 == 0] *= 100.0
    order = np.arange(N)[::-1]
    e = 0.4 * step[order] * rng.choice([-1.0, 1.0], (N, n))

    class Fake:
        pass

    res = Fake()
    res.e, res.order = e, order
    assert not measure.clipped(res, step, "nearest", False, 1e-12)
    assert measure.clipped(res, step[order], "nearest", False, 1e-12)  # the wrong rows
    e[5, 2] = 0.51 * step[order[5], 2]
    assert measure.clipped(res, step, "nearest", False, 1e-12)
    assert not measure.clipped(res, step, "stochastic", False, 1e-12)  # |e| < delta
    e[0] = 0.9 * step[order[0]]  # Qronos' paper form: the first row is no rounding error
    e[5, 2] = 0.0
    assert measure.clipped(res, step, "nearest", False, 1e-12)
    assert not measure.clipped(res, step, "nearest", True, 1e-12)


def test_measure_with_per_weight_step():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((40, N))
    W = rng.standard_normal((N, n))
    step = np.exp(rng.uniform(-2, 0, (N, n)))
    Q = step * np.rint(W / step)
    out = measure.measure(data.Layer(X, X, W, "t"), Q, None, step, floors=False)
    assert all(np.shape(v) == (n,) for v in out.values())
    np.testing.assert_allclose(out["w_max_over_step"], np.abs(W).max(0) / step.min(0),
                               rtol=1e-15)
    np.testing.assert_array_equal(out["k_used"], np.abs(np.rint(W / step)).max(0))
