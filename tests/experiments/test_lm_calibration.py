"""The LM calibration/damping study at smoke size: ``reproduce --only lm_calibration --size
smoke`` runs OPTQ and Qronos twice (percdamp 0.01 and 0.1) on the real SmolLM2 file, and the
figure's table matches the records; the default reproduce leaves the study out."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from experiments.studies import lm_calibration

pytestmark = [pytest.mark.model, pytest.mark.study]


@pytest.fixture(scope="module")
def smoke(reproduce_lm_smoke):
    return reproduce_lm_smoke("lm_calibration")


def test_table_matches_the_records(smoke):
    status, folder, out = smoke
    assert status == 0
    recs = [r for r in lm_calibration.STUDY.load(folder) if r["status"] == "ok"]
    assert len(recs) == len(lm_calibration.STUDY.configs("smoke")) == 4
    t = pd.read_csv(os.path.join(out, "lm_calibration.csv"))
    assert {"algorithm", "calib_tokens", "percdamp", "perplexity", "gain_median"} <= set(t.columns)
    assert sorted(t.percdamp.unique()) == [0.01, 0.1]
    for r in recs:
        c = r["config"]
        row = t[(t.config == c["name"]) & np.isclose(t.percdamp, c.get("percdamp") or 0.01)]
        assert len(row) == 1
        assert row.perplexity.iloc[0] == pytest.approx(r["perplexity"], rel=1e-5)
        assert row.calib_tokens.iloc[0] == c["calib"] * c["length"] == r["layers"][0]["m"]
        assert r["layers"][0]["lam"] > 0
    # the damping reached the algorithm: lam scales with percdamp on the first layer (same X)
    lam = {(r["config"]["name"], r["config"].get("percdamp")): r["layers"][0]["lam"]
           for r in recs}
    assert lam[("optq", 0.1)] == pytest.approx(10 * lam[("optq", None)], rel=1e-5)
    q = t[t.config == "qronos"]
    assert np.all(np.isfinite(q.floor_median)) and np.all(np.isfinite(q.gain_median))
    assert t[t.config == "optq"].floor_median.isna().all()  # OPTQ has no floor column
    for ext in ("png", "pdf"):
        assert os.path.getsize(os.path.join(out, f"lm_calibration.{ext}")) > 0
