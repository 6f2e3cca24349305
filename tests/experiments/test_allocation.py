"""experiments.studies.allocation: the exact budgeted allocation against brute force, seed 002's
rule,
the driver's per-layer overrides, and the smoke study (real MiniLM) through reproduce.

A missing model package fails the real-model tests with its install command
(PTQ_ALLOW_SKIP_REAL=1 skips them instead), as the other real-model tests.
"""

from __future__ import annotations

import itertools
import math
import os

import jax
import numpy as np
import pandas as pd
import pytest

from experiments.models.minilm import weights
from experiments.studies import allocation as al

B = np.asarray(al.BIT_SET)


def _brute(cost, sizes, budget):
    best, arg = math.inf, None
    for ks in itertools.product(range(len(B)), repeat=len(sizes)):
        bits = B[list(ks)]
        if al.average_bits(bits, sizes) <= budget + 1e-12:
            c = sum(cost[l, k] for l, k in enumerate(ks))
            if c < best:
                best, arg = c, bits
    return best, arg


@pytest.mark.parametrize("seed", range(6))
def test_theory_allocation_is_the_exact_budgeted_optimum(seed):
    rng = np.random.default_rng(seed)
    L = 5
    sizes = rng.choice([384 * 384, 4 * 384 * 384], L)
    # a decreasing cost per layer, as alpha D(b) is
    scale = np.exp(rng.uniform(-3, 3, L))
    cost = scale[:, None] * 4.0 ** -B[None, :] * np.exp(rng.uniform(-0.3, 0.3, (L, len(B))))
    for budget in (2.0, 2.7, 3.0, 3.5, 5.0, 8.0):
        bits, total = al.allocate_theory(cost, sizes, budget)
        want, _ = _brute(cost, sizes, budget)
        assert al.average_bits(bits, sizes) <= budget + 1e-12
        assert total == pytest.approx(want, rel=1e-12)
        assert total == pytest.approx(sum(cost[l, list(B).index(b)] for l, b in enumerate(bits)),
                                      rel=1e-12)


def test_seed_rule_meets_the_budget_and_follows_its_formula():
    rng = np.random.default_rng(1)
    L = 36
    alpha = np.exp(rng.uniform(-16, -10, L))
    sigma2 = np.exp(rng.uniform(-7, -4, L))
    sizes = rng.choice([1, 4], L) * 384 * 384
    prev = np.full(L, 2)
    for budget in (2.0, 2.5, 3.0, 3.5, 4.0, 6.0, 8.0):
        bits, lam = al.allocate_seed(alpha, sigma2, sizes, budget)
        assert al.average_bits(bits, sizes) <= budget + 1e-12
        # each width is the nearest of the set to 1/2 log2(alpha sigma^2 / lambda), clipped
        b_star = np.clip(0.5 * np.log2(alpha * sigma2 / lam), 2, 8)
        dist = np.abs(b_star[:, None] - B[None, :])
        np.testing.assert_array_equal(dist[np.arange(L), np.searchsorted(B, bits)],
                                      dist.min(axis=1))
        assert np.all(bits >= prev)  # a larger budget never takes bits away
        prev = bits
    assert np.all(al.allocate_seed(alpha, sigma2, sizes, 8.0)[0] == 8)
    assert np.all(al.allocate_seed(alpha, sigma2, sizes, 2.0)[0] == 2)


@pytest.mark.parametrize("call, match", [
    (lambda: al.allocate_theory(np.ones((3, 4)), [1, 1, 1], 1.5), r"`budget` must be in \[2, 8\]"),
    (lambda: al.allocate_theory(np.ones((3, 3)), [1, 1, 1], 3),
     r"`cost` must be a finite \(3, 4\)"),
    (lambda: al.allocate_seed([1, -1], [1, 1], [1, 1], 3), "must be positive"),
    (lambda: al.allocate_seed([1, 1], [1], [1, 1], 3), "`sigma2` must be a finite 1-D array of 2"),
    (lambda: al.allocate_uniform(3, 5), r"`bits` must be one of \(2, 3, 4, 8\); got 5"),
])
def test_errors_name_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def model():
    from experiments.studies import qat

    try:
        return qat._model()
    except weights.ModelMissingError as exc:
        if os.environ.get("PTQ_ALLOW_SKIP_REAL") == "1":
            pytest.skip(f"needs the model package: {exc}")
        pytest.fail(f"needs the model package: {exc}. Install it with "
                    f"`{weights.INSTALL_COMMAND}`", pytrace=False)


@pytest.fixture(autouse=True)
def _float32():
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", True)


@pytest.mark.model
def test_driver_overrides_give_each_layer_its_bits(model):
    from experiments import driver as qm
    from experiments.studies import qat

    batch = qat.calibration(256, 0)
    names = [model.layer_name(i, k) for i in range(model.n_blocks) for k in model.kinds]
    want = {n: b for n, b in zip(names, itertools.cycle((2, 3, 4, 8)))}
    codes = {}
    recs, _ = qm.quantize_model(model, qm.make_options("optq", 3), batch,
                                overrides={n: {"bits": b} for n, b in want.items()},
                                on_layer=lambda ctx: codes.update({ctx.name: ctx.result.codes}))
    assert {r["name"]: r["bits"] for r in recs} == want
    for n, b in want.items():  # asymmetric grid: codes in [0, 2^b - 1], the top level used
        c = np.asarray(codes[n])
        assert c.min() >= 0 and c.max() == 2**b - 1, n
    with pytest.raises(ValueError, match="`overrides` must name linear layers such as"):
        qm.quantize_model(model, qm.make_options("optq", 3), batch, overrides={"x": {"bits": 2}})
    with pytest.raises(ValueError, match=r"`overrides\['encoder.layer.0.attention.self.query'\]`"
                                         r" must set Options fields; got \['scale'\]"):
        qm.quantize_model(model, qm.make_options("optq", 3), batch,
                          overrides={names[0]: {"scale": 2}})
    with pytest.raises(ValueError, match="`bits`"):
        qm.quantize_model(model, qm.make_options("optq", 3), batch,
                          overrides={names[0]: {"bits": 0}})


@pytest.mark.model
@pytest.mark.study
def test_smoke_study_through_reproduce(tmp_path):
    from experiments import reproduce

    runs, out = str(tmp_path / "runs"), str(tmp_path / "figures")
    assert reproduce.main(["--size", "smoke", "--only", "allocation", "--runs", runs,
                           "--out", out]) == 0
    t = pd.read_csv(os.path.join(out, "allocation.csv"))
    size = al.SIZES["smoke"]
    assert set(t.allocation) == set(al.ALLOCATIONS)
    assert len(t) == len(size.seeds) * (2 * len(size.budgets) + 1)
    assert (t.avg_bits[t.allocation != "uniform"] <= t.budget[t.allocation != "uniform"]).all()
    assert t.quality.between(-1, 1).all() and (t.loss > 0).all()
    # the exact optimum of the predicted loss is at most every other allocation's prediction
    for budget in size.budgets:
        at = t[(t.budget == budget) | (t.allocation == "uniform") & (t.budget <= budget)]
        assert at.predicted_loss[at.allocation == "theory"].min() <= at.predicted_loss.min() + 1e-12
    # each run's dynamic override gives back its bits (the record holds both)
    rec = al.STUDY.load(os.path.join(runs, "smoke", "allocation"))[0]
    from ptq import pack as pk

    names = [lyr["name"] for lyr in rec["layers"]]
    for run in rec["runs"]:
        cfg = pk.QuantizeConfig(bits=run["base_bits"], dynamic=run["dynamic"])
        assert [cfg.for_layer(n).bits for n in names] == run["bits"]
    assert rec["checkpoint"]["bits_round_trip"]
    assert 0 < rec["checkpoint"]["max_weight_change"] <= pk.FLOAT16_REL
    lay = pd.read_csv(os.path.join(out, "allocation_layers.csv"))
    assert len(lay) == 36 and (lay.alpha > 0).all()
    # the loss is close to linear in the injected power at the median layer (the allocations'
    # model); the per-layer ratios are in the table
    assert 0.8 < lay.linearity.median() < 1.25
    # uniform bits need no override; a mixed allocation has one rule per layer off the base
    for run in rec["runs"]:
        off = sum(b != run["base_bits"] for b in run["bits"])
        assert (run["dynamic"] is None) == (off == 0) and len(run["dynamic"] or {}) == off
    summary = pd.read_csv(os.path.join(out, "summary.csv"))
    assert summary.set_index("figure").loc["allocation", "errors"] == 0
    for ext in ("png", "pdf"):
        assert os.path.getsize(os.path.join(out, f"allocation.{ext}")) > 1000


def test_default_reproduce_leaves_the_long_studies_to_only():
    from experiments import reproduce

    assert not reproduce.in_default("allocation") and not reproduce.in_default("rate_distortion")
    assert reproduce.in_default("qat") and reproduce.in_default("real")
