"""The causal LM study at smoke size, end to end: ``reproduce --only lm --size smoke`` runs the
real SmolLM2 file on the committed Wikipedia token ids through the one sequential driver, every
applicable bound is checked on each of the 210 linear layers, and the figures and the CSV
columns users read are written from the records."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from experiments.models import smollm2
from experiments.studies import lm

pytestmark = [pytest.mark.model, pytest.mark.study]

EXPECTED_BOUNDS = {"optq": {"B1", "B2", "B3"}, "qronos": {"Q1"}}
N_LAYERS = 30 * 7


@pytest.fixture(scope="module")
def smoke(reproduce_lm_smoke):
    return reproduce_lm_smoke("lm")


def test_records_cover_every_layer(smoke):
    status, folder, _ = smoke
    assert status == 0
    recs = lm.STUDY.load(folder)
    assert len(recs) == len(lm.STUDY.configs("smoke")) and all(r["status"] == "ok" for r in recs)
    names = [smollm2.layer_name(i, k) for i in range(30) for k in smollm2.KINDS]
    for r in recs:
        assert [lyr["name"] for lyr in r["layers"]] == names
        assert all(lyr["m"] == 12 * 128 for lyr in r["layers"])
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1
        # the unquantized model's perplexity on the same windows is below any 3-bit model's
        assert r["fp_perplexity"] < r["perplexity"]
    s = lm.STUDY.summarize(folder)
    assert s["errors"] == 0 and s["violations"] == 0 and 0 < s["median_tightness"] < 1


def test_every_bound_holds_on_all_210_layers(smoke):
    _, folder, _ = smoke
    bound_runs = [r for r in lm.STUDY.load(folder) if r["config"]["pass"] == "bounds"]
    assert {r["config"]["name"] for r in bound_runs} == set(lm.STUDY.size("smoke").bounds)
    for r in bound_runs:
        assert len(r["layers"]) == N_LAYERS
        for lyr in r["layers"]:
            assert lyr["clipped"] is False, lyr["name"]
            assert EXPECTED_BOUNDS[r["config"]["name"]] <= set(lyr["bounds"]), lyr["name"]
            for b, v in lyr["bounds"].items():
                assert v["checked"] and v["violations"] == 0, (lyr["name"], b, v)
                assert 0 < v["ratio_max"] <= 1 + 1e-9


def test_figures_and_csv_from_the_records(smoke):
    _, folder, out = smoke
    for name in ("lm_perplexity", "lm_gain", "lm_bounds"):
        for ext in ("png", "pdf", "csv"):
            assert os.path.getsize(os.path.join(out, f"{name}.{ext}")) > 0
    t = pd.read_csv(os.path.join(out, "lm_perplexity.csv"))
    assert {"algorithm", "bits", "group_size", "perplexity"} <= set(t.columns)
    recs = {r["config"]["name"]: r for r in lm.STUDY.load(folder)
            if r["config"]["pass"] == "practical"}
    assert set(t.config) == set(recs)
    for row in t.itertuples():
        assert row.perplexity == pytest.approx(recs[row.config]["perplexity"], rel=1e-5)
        assert row.group_size == -1  # per channel
    layers = pd.read_csv(os.path.join(out, "lm_bounds.csv"))
    assert layers.violations.sum() == 0 and np.all(layers.ratio_max <= 1 + 1e-9)


def test_second_run_recomputes_nothing(smoke):
    _, folder, _ = smoke
    ran, _ = lm.STUDY.run_study("smoke", folder)
    assert ran == 0
