"""The INT8 / INT4 matmul benchmark runs at a tiny size and writes its columns (no timing is
asserted: the numbers live in figures/intmm.*); its integer paths compute what they claim."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from experiments.bench import intmm
from experiments.bench.__main__ import main
from ptq.pack import pack_bits

COLUMNS = ["model", "N", "n", "batch", "variant", "median_s", "best_s", "rounds", "weight_bytes",
           "rel_diff", "speedup", "time_saved_pct", "gflops"]

pytestmark = pytest.mark.usefixtures("float32")  # the benchmark's float32 path (tests/conftest.py)


def test_cli_writes_csv_and_figure(tmp_path):
    assert main(["--only", "intmm", "--shapes", "64x32", "--batches", "1", "4", "--repeats", "1",
                 "--min-time", "0", "--out", str(tmp_path)]) == 0
    for suffix in ("csv", "png", "pdf", "md", "json"):
        assert (tmp_path / f"intmm.{suffix}").exists(), suffix
    df = pd.read_csv(tmp_path / "intmm.csv")
    assert list(df.columns) == COLUMNS
    assert len(df) == 2 * len(intmm.VARIANTS)
    assert set(df.variant) == set(intmm.VARIANTS) and set(df.batch) == {1, 4}
    assert (df.median_s > 0).all() and (df.speedup > 0).all()
    base = df[df.variant == "float32"]
    assert (base.speedup == 1).all() and (base.rel_diff == 0).all()
    # 8-bit codes change the output by ~1%, 4-bit by ~10% (random W, per-column grids)
    assert (df[df.variant.str.startswith("int8")].rel_diff < 0.03).all()
    assert (df[df.variant.str.startswith("int4")].rel_diff < 0.3).all()
    assert "Seed 002" in (tmp_path / "intmm.md").read_text()


def test_unpack4_reads_gptq_words():
    codes = np.random.default_rng(0).integers(0, 16, (64, 48))
    np.testing.assert_array_equal(np.asarray(intmm.unpack4(jnp.asarray(pack_bits(codes, 4)))),
                                  codes)


def test_integer_paths_compute_the_dequantized_product():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((8, 64)).astype(np.float32)
    W = rng.standard_normal((64, 32)).astype(np.float32)
    q = intmm.weights(W)
    W4 = (q["codes"] - q["zero"]) * q["scale"].astype(np.float64)
    y4 = np.asarray(intmm.int4(X, q["qweight"], q["zero"], q["scale"]), np.float64)
    np.testing.assert_allclose(y4, X @ W4, rtol=1e-5, atol=1e-5)  # float32 products
    # int8: exact integer dot of the rounded operands, then the two scales
    Xq, sx = (np.asarray(a) for a in intmm._quantize_rows(jnp.asarray(X)))
    exact = (Xq.astype(np.int64) @ q["Wq"].astype(np.int64)) * sx * q["sw"]
    np.testing.assert_allclose(np.asarray(intmm.int8(X, q["Wq"], q["sw"])), exact, rtol=1e-6)
    exact4 = (Xq.astype(np.int64) @ (q["codes"] - q["zero"])) * sx * q["scale"]
    np.testing.assert_allclose(np.asarray(intmm.int4_int8(X, q["qweight"], q["zero"],
                                                          q["scale"])), exact4, rtol=1e-6)
