"""The strength study (`experiments.studies.strength`).

At smoke size, for real: ``reproduce --only lm_strength --size smoke`` runs OPTQ and the
least-squares-first Qronos at strength 1, 0.5 and chosen per layer on the SmolLM2 file; every
layer of each Qronos run records the strength it used, the chosen ones their evidence, and the
figure's tables are the records'. Fast, from hand-made records: the tables' names, strengths,
damping and the candidate a selection chose."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from experiments.figures import lm_strength as fig
from experiments.studies import strength

COLUMNS = {"config", "algorithm", "strength", "order", "bits", "calib_windows", "seed",
           "percdamp", "perplexity", "fp_perplexity"}
SELECTION = {"strength", "lam", "lams", "percdamps", "strengths", "heldout", "insample",
             "rounding_heldout", "rounding_insample", "folds", "sequences", "rows", "dead",
             "sketched"}


@pytest.fixture(scope="module")
def smoke(reproduce_lm_smoke):
    return reproduce_lm_smoke("lm_strength")


@pytest.mark.model
@pytest.mark.study
def test_smoke_records_and_tables(smoke):
    status, folder, out = smoke
    assert status == 0
    recs = strength.STUDY.load(folder)
    assert len(recs) == len(strength.STUDY.configs("smoke")) == 4
    assert all(r["status"] == "ok" for r in recs)
    by = {r["config"]["name"]: r for r in recs}
    assert set(by) == {"optq", "qronos_ls", "qronos_s05", "qronos_auto"}
    data = strength.SIZES["smoke"].data
    rows = data["calib"] * data["length"]
    for r in recs:
        assert len(r["layers"]) == 210 and np.isfinite(r["perplexity"])
    assert all("strength_used" not in lyr for lyr in by["optq"]["layers"])
    # the fixed strengths reached every layer's algorithm
    assert {lyr["strength_used"] for lyr in by["qronos_s05"]["layers"]} == {0.5}
    assert {lyr["strength_used"] for lyr in by["qronos_ls"]["layers"]} == {1.0}
    assert all("selection" not in lyr for lyr in by["qronos_s05"]["layers"])
    # the chosen strength: per layer, in [0, 1], with its evidence on the calibration windows
    auto = by["qronos_auto"]["layers"]
    used = np.array([lyr["strength_used"] for lyr in auto])
    assert np.all((used >= 0) & (used <= 1)) and np.ptp(used) > 0
    for lyr in auto:
        sel = lyr["selection"]
        assert SELECTION <= set(sel)
        assert sel["strength"] == lyr["strength_used"] == sel["strengths"][0]
        assert np.shape(sel["heldout"]) == np.shape(sel["insample"]) == (1, 3)
        assert sel["percdamps"] == [pytest.approx(0.01)]  # lam fixed by the default percdamp
        assert (sel["folds"], sel["sequences"], sel["rows"]) == (2, data["calib"], rows)
        c0, c1, ca = sel["heldout"][0]
        assert ca <= min(c0, c1) * (1 + 1e-6) + 1e-12  # a* minimises the held-out quadratic
    # the tables are the records'
    t = pd.read_csv(os.path.join(out, "lm_strength.csv"))
    assert COLUMNS <= set(t.columns) and len(t) == 4
    got = {row.algorithm: row for row in t.itertuples()}
    assert set(got) == {"optq", "qronos_ls_first", "qronos_s0.5", "qronos_auto"}
    assert (got["optq"].strength, got["qronos_s0.5"].strength,
            got["qronos_ls_first"].strength) == (0.0, 0.5, 1.0)
    assert got["qronos_auto"].strength == pytest.approx(np.median(used), abs=1e-6)
    for row in t.itertuples():
        r = by[row.config]
        assert row.perplexity == pytest.approx(r["perplexity"], rel=1e-5)
        assert (row.bits, row.calib_windows, row.seed, row.order) == (3, data["calib"], 0,
                                                                      "natural")
        assert row.percdamp == pytest.approx(0.01)
    assert np.all(np.isfinite(t.perplexity)) and np.all(np.isfinite(t.fp_perplexity))
    layers = pd.read_csv(os.path.join(out, "lm_strength_layers.csv"))
    assert set(fig.LAYER_COLUMNS) <= set(layers.columns)
    assert len(layers) == 210 and set(layers.config) == {"qronos_auto"}
    np.testing.assert_allclose(layers.strength, used, rtol=1e-5, atol=1e-9)
    for ext in ("png", "pdf"):
        assert os.path.getsize(os.path.join(out, f"lm_strength.{ext}")) > 0


# --- the figure from hand-made records ---------------------------------------------------


def _selection(strengths, percdamps, heldout, rho=None):
    L = len(percdamps)
    return {"strength": None, "lam": None, "percdamps": percdamps, "strengths": strengths,
            "heldout": heldout, "insample": [[h[0] / 2, h[1] / 2, h[2] / 2] for h in heldout],
            "rounding_heldout": rho or [None] * L, "rounding_insample": [None] * L,
            "folds": 2, "sequences": 4, "rows": 64, "dead": 0, "sketched": False}


def _record(name, perplexity, calib=4, seed=0, layers=None, **config):
    layers = layers or [{"name": f"l{i}", "layer": i // 7, "kind": "q_proj", "rel_err": 0.1,
                         "err2_fro": 1.0} for i in range(3)]
    c = {"name": name, "pass": "practical", "bits": 3, "calib": calib, "length": 16,
         "heldout": 1, "seed": seed, **config}
    return {"status": "ok", "perplexity": perplexity, "fp_perplexity": 20.0,
            "heldout_tokens": 16, "wall_s": {"quantize": 1.0}, "layers": layers, "config": c}


def _auto_layers(strengths, lam_auto=False):
    out = []
    for i, a in enumerate(strengths):
        if lam_auto:  # the second of three candidates has the smallest criterion
            sel = _selection([0.1, a, 0.9], [0.01, 0.1, 1.0],
                             [[4, 3, 2.5], [4, 3, 1.0], [4, 3, 1.5]], rho=[0.1, 0.2, 0.0])
        else:
            sel = _selection([a], [0.01], [[4, 3, 2]])
        sel["strength"] = a
        if lam_auto:  # the chosen candidate, as the driver records it
            sel["lams"], sel["lam"] = [1.0, 10.0, 100.0], 10.0
        out.append({"name": f"l{i}", "layer": i // 7, "kind": "q_proj", "rel_err": 0.1,
                    "err2_fro": 1.0, "m": 64, "N": 16, "n": 16, "strength_used": a,
                    "selection": sel})
    return out


def test_figure_tables_from_records(tmp_path):
    recs = [_record("rtn", 90.0, algorithm="rtn"),
            _record("optq", 50.0, algorithm="optq"),
            _record("qronos", 45.0, algorithm="qronos", variant="paper"),
            _record("qronos_ls", 40.0, algorithm="qronos", variant="ls_first"),
            _record("qronos_s05", 42.0, algorithm="qronos", variant="ls_first", strength=0.5),
            _record("qronos_s025", 44.0, algorithm="qronos", variant="ls_first", strength=0.25),
            _record("qronos_auto", 41.0, algorithm="qronos", variant="ls_first",
                    strength="auto", layers=_auto_layers([0.0, 0.2, 0.9])),
            _record("qronos_auto", 30.0, calib=16, algorithm="qronos", variant="ls_first",
                    strength="auto", layers=_auto_layers([0.5, 0.7, 0.8])),
            _record("qronos_auto_lam", 39.0, algorithm="qronos", variant="ls_first",
                    strength="auto", lam="auto", layers=_auto_layers([0.3, 0.4, 0.6], True)),
            {"status": "error", "config": {"name": "optq", "pass": "practical"}}]
    out = fig.build_all(recs, str(tmp_path))
    assert set(out) == {"lm_strength", "lm_strength_layers", "lm_strength_advice"}
    adv = out["lm_strength_advice"]  # every chosen run: full correction predicted 3/4 of none
    assert len(adv) == 3 and adv.enough_for_full_strength.all()
    assert np.allclose(adv.median_full_vs_none, 0.75)
    for f in ("lm_strength.png", "lm_strength.pdf", "lm_strength.csv", "lm_strength_layers.csv"):
        assert os.path.getsize(tmp_path / f) > 0
    t = pd.read_csv(tmp_path / "lm_strength.csv")
    assert COLUMNS <= set(t.columns) and len(t) == 9  # the error record is left out
    row = {(r.algorithm, r.calib_windows): r for r in t.itertuples()}
    assert np.isnan(row[("rtn", 4)].strength) and np.isnan(row[("rtn", 4)].percdamp)
    assert {a: row[(a, 4)].strength for a in ("optq", "qronos_paper", "qronos_ls_first",
                                              "qronos_s0.5", "qronos_s0.25")} == {
        "optq": 0.0, "qronos_paper": 1.0, "qronos_ls_first": 1.0, "qronos_s0.5": 0.5,
        "qronos_s0.25": 0.25}
    assert row[("qronos_auto", 4)].strength == pytest.approx(0.2)  # median over layers
    assert row[("qronos_auto", 16)].strength == pytest.approx(0.7)
    assert row[("qronos_auto_lam", 4)].strength == pytest.approx(0.4)
    assert row[("qronos_auto_lam", 4)].percdamp == pytest.approx(0.1)  # the chosen damping
    assert row[("qronos_auto", 4)].percdamp == pytest.approx(0.01)
    assert t.calib_windows.tolist()[-1] == 16  # sorted by calibration size
    layers = pd.read_csv(tmp_path / "lm_strength_layers.csv")
    assert len(layers) == 9 and set(fig.LAYER_COLUMNS) == set(layers.columns)
    lam = layers[layers.algorithm == "qronos_auto_lam"]
    assert lam.strength.tolist() == [0.3, 0.4, 0.6]
    assert lam.lam_percdamp.tolist() == [0.1] * 3
    assert lam.heldout_chosen.tolist() == [1.0] * 3 and lam.insample_chosen.tolist() == [0.5] * 3
    assert layers[layers.algorithm == "qronos_auto"].heldout_0.tolist() == [4.0] * 6


def test_algorithm_names():
    name = fig.algorithm_name
    assert name({"algorithm": "qronos", "variant": "ls_first", "strength": 0.75}) == \
        "qronos_s0.75"
    assert name({"algorithm": "qronos", "variant": "paper"}) == "qronos_paper"
    assert name({"algorithm": "qronos", "variant": "paper", "rounding": "stochastic"}) == \
        "qronos_paper_stochastic"
    assert name({"algorithm": "optq", "order": "decreasing_norm"}) == "optq"


def test_no_records_is_an_error_naming_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="experiments.studies.strength"):
        fig.build_all([], str(tmp_path))


def test_bounds_and_minilm_tables_from_records(tmp_path):
    checked = {"kind": "deterministic", "measured": "err2_pair_aug", "checked": True}
    layers = [{"name": f"l{i}", "layer": 0, "kind": "q_proj", "strength_used": 0.5,
               "bounds": {"Q4": {**checked, "violations": v, "ratio_median": r, "ratio_max": r}}}
              for i, (v, r) in enumerate([(0, 0.5), (0, 0.7), (2, 1.2)])]
    layers[1]["bounds"]["Q4"]["checked"] = False  # clipped: not judged
    bounds = _record("qronos_s05", 10.0, algorithm="qronos", variant="ls_first", strength=0.5,
                     layers=layers)
    bounds["config"]["pass"] = "bounds"
    t = fig.bounds_table([bounds, _record("optq", 50.0, algorithm="optq")])
    row = t.iloc[0]
    assert len(t) == 1 and row.bound == "Q4" and row.algorithm == "qronos_s0.5"
    assert (row.layers, row.checked, row.violations) == (3, 2, 2)
    assert row.ratio_median == 0.7 and row.ratio_max == 1.2 and row.strength_median == 0.5
    mini = _record("qronos_auto", 0.0, algorithm="qronos", variant="ls_first", strength="auto",
                   layers=_auto_layers([0.2, 0.4, 0.9]))
    mini["config"]["tokens"] = 2048
    mini.update(cosine_mean=0.88, cosine_min=0.5)
    out = fig.build_minilm([mini, bounds], str(tmp_path))
    assert out["minilm_strength"].strength.tolist() == [0.4]  # the median chosen strength
    assert (tmp_path / "minilm_strength.csv").exists()
    assert (tmp_path / "minilm_strength_bounds.csv").exists()
