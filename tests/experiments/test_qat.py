"""experiments.studies.qat on the real MiniLM: the fake-quantized forward is ptq's, QAT learns in
every
layer and ends on the grid, the output scales, and the smoke study through reproduce.

A missing model package fails these tests with its install command (PTQ_ALLOW_SKIP_REAL=1
skips them instead), as the other real-model tests.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from experiments.models.minilm import weights
from experiments.studies import qat, qat_training

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def model():
    try:
        m = qat._model()
    except weights.ModelMissingError as exc:
        if os.environ.get("PTQ_ALLOW_SKIP_REAL") == "1":
            pytest.skip(f"needs the model package: {exc}")
        pytest.fail(f"needs the model package: {exc}. Install it with "
                    f"`{weights.INSTALL_COMMAND}`", pytrace=False)
    return m


@pytest.fixture(autouse=True)
def _float32():
    # the study runs in float32 (its deployment precision); the conftest turns x64 on
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", True)


@pytest.fixture(scope="module")
def batch(model):
    return qat.calibration(256, 0)


def _init(params, model):
    return {model.layer_name(i, k): p[k][0] for i, p in enumerate(params["blocks"])
            for k in model.kinds}


@pytest.mark.parametrize("lsq", [False, True])
def test_fake_quantized_forward_equals_the_ptq_forward(model, batch, lsq):
    grids = qat.layer_grids(model, 3)
    names = qat_training.layer_names(model)
    g_tree = [{k: grids[n] for k, n in zip(model.kinds, row)} for row in names]
    latent = {"v": [{k: model.params["blocks"][i][k][0] / grids[n].step
                     for k, n in zip(model.kinds, row)} for i, row in enumerate(names)]}
    if lsq:
        latent["u"] = [{k: jnp.zeros_like(grids[n].step) for k, n in zip(model.kinds, row)}
                       for row in names]
    b = qat_training.Rows(jnp.asarray(batch.ids), jnp.asarray(batch.mask))
    student = qat_training.student(model, model.params, latent, g_tree, lsq)
    fake = qat_training.hidden(model, student, b)
    ref = qat_training.hidden(model, qat.run_ptq(model, "rtn", 3, batch).params, b)
    m = np.asarray(batch.mask, bool)
    # Weights: w = (W / step) * step may differ from W by one float32 rounding, which moves
    # Q only for a weight within 1 ulp of a rounding boundary; the hidden states then agree to
    # float32 rounding of the 6-block forward (|h| ~ 1; 2e-5 absolute is ~100 ulps).
    np.testing.assert_allclose(np.asarray(fake)[m], np.asarray(ref)[m], atol=2e-5, rtol=0)


def test_training_decreases_the_loss_reaches_every_layer_and_ends_on_the_grid(model, batch):
    grids = qat.layer_grids(model, 3)
    res = qat_training.train(model, batch, _init(model.params, model), grids, steps=6, lr=0.01,
                    batch_size=2, seed=0, lsq=True, progress=False)
    assert res.loss_final < 0.9 * res.loss_initial, (res.loss_initial, res.loss_final)
    assert len(res.grad_norms) == 2 * 36  # every latent weight and every learned step
    assert min(res.grad_norms.values()) > 0, min(res.grad_norms, key=res.grad_norms.get)
    qat_training.check_on_grid(res.params, res.grids, model)  # raises if a weight is off its grid
    stepped = sum(not jnp.array_equal(res.grids[n].step, grids[n].step) for n in grids)
    assert stepped == 36  # LSQ moved every layer's steps
    bad = [dict(p) for p in res.params["blocks"]]
    W, b = bad[0]["query"]
    bad[0]["query"] = (W.at[0, 0].add(0.3 * res.grids[model.layer_name(0, "query")].step[0]), b)
    with pytest.raises(RuntimeError, match="off the grid"):
        qat_training.check_on_grid({**res.params, "blocks": bad}, res.grids, model)


def test_bad_training_arguments(model, batch):
    grids = qat.layer_grids(model, 3)
    init = _init(model.params, model)
    for kw, match in ((dict(steps=0), r"`steps` must be an integer >= 1; got 0"),
                      (dict(lr=-1.0), r"`lr` must be a number > 0; got -1.0"),
                      (dict(batch_size=99), r"`batch_size` must be an integer in \[1, \d+\]")):
        args = {**dict(steps=2, lr=0.01, batch_size=2), **kw}
        with pytest.raises(ValueError, match=match):
            qat_training.train(model, batch, init, grids, **args)
    with pytest.raises(ValueError, match="one entry per linear layer"):
        qat_training.train(model, batch, {}, grids, steps=2, lr=0.01, batch_size=2)


def test_least_squares_scales_never_increase_a_layer_error(model, batch):
    params = qat.run_ptq(model, "rtn", 2, batch).params
    _, layers = qat.apply_scales(model, params, batch, "ls", "channel")
    assert len(layers) == 36
    for lyr in layers:
        e = lyr["rel_err"]
        # on the same Y: per-channel LS <= per-layer LS <= unscaled; float32 slack 1e-5
        assert e["ls_channel"] <= e["ls"] * (1 + 1e-5) <= e["none"] * (1 + 2e-5), lyr["name"]
        assert e["ls_channel"] <= e["gamma_channel"] * (1 + 1e-5), lyr["name"]
        assert e["applied"] == pytest.approx(e["ls_channel"], rel=1e-6)


@pytest.mark.study
def test_smoke_study_through_reproduce(tmp_path):
    from experiments import reproduce

    runs, out = str(tmp_path / "runs"), str(tmp_path / "figures")
    assert reproduce.main(["--size", "smoke", "--only", "qat", "--runs", runs,
                           "--out", out]) == 0
    t = pd.read_csv(os.path.join(out, "qat.csv"))
    assert {"method", "bits", "gamma", "quality", "seconds"} <= set(t.columns)
    size = qat.STUDY.sizes["smoke"]
    assert len(t) == len(size.methods) * len(size.bits) * (1 + len(size.scales))
    assert set(t.method) == set(size.methods)
    assert set(t.gamma) == {"none", *size.scales}
    assert t.quality.between(-1, 1).all() and (t.seconds > 0).all()
    q = t[t.method.str.startswith("qat") & (t.gamma == "none")]
    assert (q.loss_final <= q.loss_initial).all()
    summary = pd.read_csv(os.path.join(out, "summary.csv"))
    assert summary.set_index("figure").loc["qat", "errors"] == 0
    for ext in ("png", "pdf"):
        assert os.path.getsize(os.path.join(out, f"qat.{ext}")) > 1000


def test_ptq_then_qat_starts_from_what_ptq_rounded(model, batch):
    # z = Q + e (identity I3's e, back in feature order) rounds to PTQ's own codes on the
    # study's grid: the first fake-quantized forward of QAT from OPTQ is the OPTQ model.
    run = qat.run_ptq(model, "optq", 3, batch)
    grids = qat.layer_grids(model, 3)
    moved = 0
    for i, p in enumerate(run.params["blocks"]):
        for k in model.kinds:
            n = model.layer_name(i, k)
            z, Q = run.rounded[n], p[k][0]
            assert not np.allclose(z, Q)  # inside the intervals, not at the levels
            moved += int(jnp.sum(grids[n].codes(z) != grids[n].codes(Q)))
    # z is rebuilt in float32, so a weight rounded within an ulp of a boundary may flip
    assert moved <= 1e-6 * sum(p[k][0].size for p in run.params["blocks"] for k in model.kinds)
