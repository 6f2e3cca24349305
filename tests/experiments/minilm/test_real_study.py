"""The real-model study at smoke size, end to end: records, resume, error records, the three
figures and the reproduce row, and every applicable bound checked on every layer."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from experiments import reproduce
from experiments.models.minilm.weights import LAYER_NAMES
from experiments.studies.minilm import STUDY as study

pytestmark = [pytest.mark.model, pytest.mark.study]

EXPECTED_BOUNDS = {"optq": {"B1", "B2", "B3"}, "qronos": {"Q1"}}


@pytest.fixture(scope="module")
def smoke(real_model, tmp_path_factory):
    """``reproduce --only real --size smoke`` into a temporary folder (about a minute)."""
    root = tmp_path_factory.mktemp("study")
    runs, out = str(root / "runs"), str(root / "figures")
    status = reproduce.main(["--size", "smoke", "--only", "real", "--runs", runs, "--out", out])
    return status, os.path.join(runs, "smoke", "real"), out


def test_reproduce_row_and_records(smoke):
    status, folder, _ = smoke
    assert status == 0
    recs = study.load(folder)
    size = study.sizes["smoke"]
    assert len(recs) == len(size.practical) + len(size.bounds) == len(study.configs("smoke"))
    assert all(r["status"] == "ok" for r in recs)
    for r in recs:
        assert [lyr["name"] for lyr in r["layers"]] == list(LAYER_NAMES)
        assert 0 < r["cosine_min"] <= r["cosine_mean"] <= 1 + 1e-6
    s = study.summarize(folder)
    assert s["runs"] == len(recs) and s["errors"] == 0 and s["violations"] == 0
    assert 0 < s["median_tightness"] < 1


def test_every_bound_checked_on_every_layer(smoke):
    _, folder, _ = smoke
    bound_runs = [r for r in study.load(folder) if r["config"]["pass"] == "bounds"]
    assert {r["config"]["name"] for r in bound_runs} == set(EXPECTED_BOUNDS)
    for r in bound_runs:
        expected = EXPECTED_BOUNDS[r["config"]["name"]]
        for lyr in r["layers"]:
            assert lyr["clipped"] is False, lyr["name"]  # infinite alphabet: nothing clips
            names = set(lyr["bounds"])
            assert expected <= names, (lyr["name"], names)
            if r["config"]["name"] == "optq":  # the mismatch bound Q2 once X_hat differs from X
                assert ("Q2" in names) == (lyr["input_mismatch"] > 0), (lyr["name"], names)
            for b, v in lyr["bounds"].items():
                assert v["checked"] and v["violations"] == 0, (lyr["name"], b, v)
                assert 0 < v["ratio_max"] <= 1 + 1e-4 and v["measured_fro"] <= v["bound_fro"]


def test_figures_written_from_the_records(smoke):
    _, folder, out = smoke
    for name in ("real_cosine", "real_gain", "real_bounds"):
        for ext in ("png", "pdf", "csv"):
            assert os.path.getsize(os.path.join(out, f"{name}.{ext}")) > 0
    cosine = pd.read_csv(os.path.join(out, "real_cosine.csv"))
    assert set(cosine.config) == set(study.sizes["smoke"].practical)
    recs = {r["config"]["name"]: r for r in study.load(folder)
            if r["config"]["pass"] == "practical"}
    assert len(cosine) == len(recs)
    # the CSV's "%.6g" floats are within 5e-6 relative of the records' numbers
    for row in cosine.itertuples():
        r = recs[row.config]
        assert (row.bits, row.heldout) == (r["config"]["bits"], r["heldout_n"])
        assert [row.cosine_mean, row.cosine_min, row.quantize_s] == pytest.approx(
            [r["cosine_mean"], r["cosine_min"], r["wall_s"]["quantize"]], rel=1e-5, abs=0)
    gain = pd.read_csv(os.path.join(out, "real_gain.csv"))
    assert len(gain) == len(LAYER_NAMES)
    opt = {lyr["name"]: lyr["rel_err"] for lyr in recs["optq"]["layers"]}
    qro = {lyr["name"]: lyr["rel_err"] for lyr in recs["qronos"]["layers"]}
    for row in gain.itertuples():
        assert row.gain_qronos == pytest.approx(opt[row.name] / qro[row.name], rel=1e-5)
    bounds = pd.read_csv(os.path.join(out, "real_bounds.csv"))
    expected = {(r["config"]["name"], r["config"]["bits"], i, b): (lyr, v)
                for r in study.load(folder) if r["config"]["pass"] == "bounds"
                for i, lyr in enumerate(r["layers"]) for b, v in lyr["bounds"].items()}
    keys = list(zip(bounds.config, bounds.bits, bounds["index"], bounds.bound))
    assert sorted(keys) == sorted(expected)  # one row per (run, layer, bound)
    for row in bounds.itertuples():
        # abs=0: pytest's default abs of 1e-12 would pass any E_LS near round-off (X_hat = X)
        lyr, v = expected[(row.config, row.bits, row.index, row.bound)]
        assert (row.name, row.kind, row.checked, row.violations) == (
            lyr["name"], v["kind"], v["checked"], v["violations"])
        assert [row.measured_fro, row.bound_fro, row.ratio_median, row.ratio_max,
                row.e_ls_fro] == pytest.approx([v["measured_fro"], v["bound_fro"],
                                                v["ratio_median"], v["ratio_max"],
                                                lyr.get("e_ls_fro", float("nan"))],
                                               rel=1e-5, abs=0, nan_ok=True)


def test_second_run_skips_and_failures_are_recorded(smoke):
    _, folder, _ = smoke
    ran, _ = study.run_study("smoke", folder)
    assert ran == 0  # every record exists: nothing recomputed
    bad = study.config("practical", "optq", 0, study.sizes["smoke"])  # bits 0 is invalid
    rec = study.run_one(bad, folder + "-bad")
    assert rec["status"] == "error" and "bits" in rec["error"]
    (path,) = [f for f in os.listdir(folder + "-bad") if f.endswith(".json")]
    with open(os.path.join(folder + "-bad", path)) as f:
        assert json.load(f)["status"] == "error"
    with pytest.raises(ValueError, match="size"):
        study.configs("huge")
