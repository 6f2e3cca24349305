"""Group-wise grids (`ptq.GroupGrid`, GPTQ's g128) through the sequential driver on MiniLM.

Block 0 only (6 linear layers), 512 calibration tokens, float64: every layer's record and
`LayerContext` carry the realised grid (step (N, n), its group table expanded by g_idx), the
measurements stay per neuron, clipping is what the range says, and `theory_bounds` takes the
(N, n) step. The finite 4-bit layers all clip (as per channel), so no-clipping bounds are
checked on the same layers with the realised group steps on the infinite alphabet.
"""

from __future__ import annotations

import numpy as np
import pytest

import ptq
from experiments import driver as qm
from experiments.models.minilm import activations

pytestmark = pytest.mark.model

TOKENS = 512
GS = 128


def one_block():
    from experiments.models.minilm import MiniLM

    model = MiniLM()
    model.config = model.config._replace(layers=1)
    return model


def _range_clip(res, grid, skip_first: bool) -> bool:
    """Clipping from the range: ``z_t = q_t + e_t`` (processing order) more than half a step
    outside its group's index range (margin 1e-9 steps)."""
    order = np.asarray(res.order)
    N, n = np.shape(res.Q)
    step = np.asarray(grid.step, np.float64)[order]
    kmin, kmax = (np.broadcast_to(np.asarray(k, np.float64), (N, n))[order]
                  for k in grid.index_bounds())
    x = (np.asarray(res.Q, np.float64)[order] + np.asarray(res.e, np.float64)) / step
    out = (x > kmax + 0.5 + 1e-9) | (x < kmin - 0.5 - 1e-9)
    return bool(out[1 if skip_first else 0:].any())


@pytest.mark.parametrize("algorithm", ["optq", "qronos", "rtn"])
def test_g128_layers_carry_the_realised_grid(real_model, algorithm):
    batch = activations.full_precision(TOKENS).batch
    seen = {}

    def hook(ctx):
        N = ctx.W.shape[0]
        seen[ctx.name] = (ctx.grid, ctx.result)
        # B2 on N > m (output.dense, N = 1536) costs O((N - m) m^3): leave that layer out
        out = qm.theory_bounds(ctx) if N <= TOKENS else {}
        if algorithm == "optq" and ctx.kind in ("query", "intermediate"):
            # the same layer on the realised group steps, infinite alphabet: nothing clips
            inf = ptq.Grid.symmetric(ctx.grid.step, None)
            res = qm.quantize_layer(ctx.options, ctx.X, ctx.X_hat, ctx.W, inf)
            _, measured = qm.measure(ctx.X, ctx.X_hat, ctx.W, res.Q, res, ctx.grid.step,
                                     "optq")
            seen[ctx.name + "/inf"] = qm.theory_bounds(ctx._replace(grid=inf, result=res,
                                                                    measured=measured))
        return {"checked": out}

    records, _ = qm.quantize_model(one_block(), qm.make_options(algorithm, 4, group_size=GS),
                                   batch, on_layer=hook)
    assert len(records) == 6
    for rec in records:
        grid, res = seen[rec["name"]]
        N, n = rec["N"], rec["n"]
        assert rec["group_size"] == GS and not rec["static_groups"]
        assert rec["step"].shape == (N, n)
        g = np.asarray(res.g_idx)
        np.testing.assert_array_equal(g, np.arange(N) // GS)  # natural order
        np.testing.assert_array_equal(rec["step"], np.asarray(res.scales, np.float64)[g])
        np.testing.assert_array_equal(np.asarray(grid.step), np.asarray(res.grid.step))
        np.testing.assert_array_equal(np.asarray(grid.dequantize(res.codes)),
                                      np.asarray(res.Q))
        assert rec["err2"].shape == rec["errinf"].shape == (n,)
        out = rec["checked"]
        if not out:
            continue
        assert all(np.shape(v) == (n,) for v in out["measured"].values())
        if algorithm == "rtn":
            assert not out["clipped"] and out["bounds"] == {}
            continue
        assert out["clipped"] == _range_clip(res, grid, algorithm == "qronos"), rec["name"]
        for b, v in out["bounds"].items():
            assert "error" not in v, (rec["name"], b, v)
            assert v["checked"] == (not out["clipped"])
            assert v["violations"] == 0, (rec["name"], b, v["ratio_max"])
    if algorithm == "optq":
        for name in (records[0]["name"], records[4]["name"]):
            out = seen[name + "/inf"]
            assert not out["clipped"], name
            assert {"B1", "B2", "B3"} <= set(out["bounds"]), name
            for b, v in out["bounds"].items():
                assert "error" not in v and v["checked"], (name, b, v)
                assert v["violations"] == 0, (name, b, v["ratio_max"])


@pytest.mark.parametrize("options, match", [
    (dict(group_size=0), "group_size"),
    (dict(group_size=True), "group_size"),
    (dict(group_size=64, finite=False), "finite"),
    (dict(static_groups="yes"), "static_groups"),
])
def test_bad_group_options_fail_naming_the_option(options, match):
    with pytest.raises(ValueError, match=match):
        qm.make_options("optq", 4, **options)
