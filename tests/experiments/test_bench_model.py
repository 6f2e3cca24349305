"""The scale benchmark (``python -m experiments.bench --only model``) at tiny sizes.

SmolLM2 cut to its first two blocks (14 linear layers) on one calibration window of 64 tokens,
through the one sequential driver: ptq.optq, ptq.qronos and the torch GPTQ given to the driver
as its ``quantizer``; and the large-layer timing at N = 256. No timing assertions beyond
"positive and finite" (speed lives in the committed output): the checks are that every layer
is quantized onto its grid by every method, that the torch-driven run does the same work as
ptq.optq on the same captured inputs, and that the files are written. A missing SmolLM2
package fails with its install command (as every SmolLM2 test); torch is optional (skip).
"""

from __future__ import annotations

import math

import jax
import numpy as np
import pandas as pd
import pytest

from experiments import timing
from experiments.bench import model as bm
from experiments.bench import model_report, peers, whole_model
from experiments.bench.__main__ import parse

pytestmark = pytest.mark.model


def _needs_model():
    from experiments.models import smollm2

    try:
        smollm2.verify()
    except smollm2.ModelMissingError as exc:
        pytest.fail(f"the model benchmark needs the SmolLM2 package: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One run of both parts through the module's command line, float32 as benchmarked."""
    _needs_model()
    methods = whole_model.METHODS if peers.torch_missing() is None else ("optq", "qronos")
    out = tmp_path_factory.mktemp("bench_model")
    x64 = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        argv = ["--calib", "1", "--length", "64", "--heldout", "1", "--blocks", "2", "--no-warmup",
                "--methods", *methods, "--threads-shapes", "64x32", "--layer-N", "256",
                "--layer-n", "128", "--out", str(out)]
        assert bm.main(argv) == 0
    finally:
        jax.config.update("jax_enable_x64", x64)
    return out, methods


@pytest.mark.slow  # with the next test, about 90 s on 2 cores (compiles 4 layer shapes)
def test_files_and_tables(tiny_run):
    out, methods = tiny_run
    for suffix in (".csv", ".md", ".json"):
        assert (out / f"bench_model{suffix}").exists(), suffix
    df = pd.read_csv(out / "bench_model.csv")
    model, layer = df[df["part"] == "model"], df[df["part"] == "layer"]
    assert len(model) == len(methods) and list(layer["algorithm"]) == ["ptq.optq", "ptq.qronos"]
    # Every method quantized all 2 x 7 layers on the same 64 calibration tokens.
    assert (model["layers"] == 14).all() and (model["m"] == 64).all()
    for col in ("total_s", "quantizer_s", "forward_s", "peak_mib", "perplexity"):
        assert model[col].map(math.isfinite).all() and (model[col] > 0).all(), col
    # The parts add up: quantizer and measurement are inside the total.
    assert (model["quantizer_s"] + model["measure_s"] <= model["total_s"] + 1e-9).all()
    assert (model["on_grid_layers"] == 14).all()
    for col in ("first_s", "second_s", "peak_mib", "inputs_mib"):
        assert (layer[col] > 0).all(), col
    # The inputs of the large layer: X, X_hat (m = 2N) and W, float32.
    assert layer["inputs_mib"].iloc[0] == pytest.approx((2 * 512 * 256 + 256 * 128) * 4 / 2**20)
    text = (out / "bench_model.md").read_text()
    for heading in ("## Whole model", "### Quantizer time per block", "## One large layer",
                    "Command: `python -m experiments"):
        assert heading in text, heading
    res = pd.read_json(out / "bench_model.json", typ="series")
    blocks = model_report.per_block(res["layers"])
    assert [b["blocks"] for b in blocks] == [2] * len(methods)
    for b, (_, row) in zip(blocks, model.iterrows()):  # the blocks add up to the quantizer time
        assert b["sum_s"] == pytest.approx(row["quantizer_s"], rel=1e-9)


@pytest.mark.slow
def test_report_only_rewrites_a_saved_run(tiny_run, tmp_path):
    out, _ = tiny_run
    assert bm.main(["--report-only", str(out / "bench_model.json"), "--out",
                    str(tmp_path)]) == 0
    old, new = pd.read_csv(out / "bench_model.csv"), pd.read_csv(tmp_path / "bench_model.csv")
    pd.testing.assert_frame_equal(old, new)


@pytest.mark.slow
def test_torch_driven_run_matches_ptq(tiny_run):
    """Same driver, same captured X_hat: the torch GPTQ's codes equal ptq.optq's almost
    everywhere, and its model scores like ptq.optq's."""
    out, methods = tiny_run
    if "torch" not in methods:
        pytest.skip(peers.torch_missing())
    df = pd.read_csv(out / "bench_model.csv")
    torch_row = df[df["method"].str.startswith("torch")].iloc[0]
    optq_row = df[df["method"] == "ptq.optq"].iloc[0]
    # A code flips only where float32 rounding moves a value across a rounding boundary, and
    # the flip then moves the later steps of its neuron: a few per cent at most (the float32
    # agreement check of the main benchmark finds 1.0 on Gaussian data).
    assert torch_row["codes_equal_min"] >= 0.9 and torch_row["codes_equal_mean"] >= 0.97
    assert torch_row["total_over_optq"] > 0 and torch_row["peak_mib_over_optq"] > 0
    # The same work gives the same quality: the per-layer errors agree to a few per cent.
    assert torch_row["mean_rel_err"] == pytest.approx(optq_row["mean_rel_err"], rel=0.05)
    threads = pd.read_json(out / "bench_model.json", typ="series")["threads"]
    assert threads and threads[0]["torch_1_thread_s"] > 0 and threads[0]["optq_s"] > 0


def test_torch_quantizer_on_one_layer(float32):
    """The driver's hook alone: torch GPTQ on one layer equals ptq.optq's codes and grid."""
    if why := peers.torch_missing():
        pytest.skip(why)
    import ptq
    from experiments.driver import make_options, quantize_layer

    rng = np.random.default_rng(0)
    X = rng.standard_normal((256, 96), dtype=np.float32)
    W = rng.standard_normal((96, 40), dtype=np.float32)
    grid = ptq.Grid.fit(W, 4, kind="asymmetric", per="neuron")
    o = make_options("optq", 4)
    res = whole_model.torch_quantizer(o, X, X, W, grid)
    assert res.Q.shape == (96, 40) and res.grid is grid
    codes, off, in_range = whole_model.grid_codes(res.Q, grid)
    assert in_range and off < 1e-4  # float32 step * (code - zero): a few ulps off the grid
    ref = quantize_layer(o, X, X, W, grid)
    assert np.mean(codes == np.asarray(ref.codes)) >= 0.99
    assert res.lam == pytest.approx(float(ref.lam), rel=1e-5)  # both: 0.01 mean(diag(X^T X))
    with pytest.raises(ValueError, match="torch GPTQ runs only"):
        whole_model.torch_quantizer(make_options("optq", 4, order="decreasing_norm"), X, X, W, grid)


def test_peak_rss_counts_an_allocation():
    seconds, peak, base = timing.peak_rss(lambda: np.ones(2**24).sum())  # 128 MiB of float64
    assert seconds > 0 and base > 0
    assert peak >= 100 * 2**20


def test_cli_choice():
    _, a = parse(["--only", "model", "--out", "/tmp/x"])
    assert a.only == "model"
