"""The benchmark runs end to end at tiny sizes and writes well-formed outputs.

No timing assertions (speed lives in the benchmark's committed output): the checks are on
shapes, finiteness, the files written, and the ptq-vs-torch and ptq-vs-Brevitas agreements
that make the comparisons ones of the same work. The peers are optional extras and are
skipped with the reason when not installed.
"""

from __future__ import annotations

import json
import math
import re

import jax
import pandas as pd
import pytest

from experiments.bench import (
    Options,
    flops,
    layer_sizes,
    peer_timing,
    peers,
    report,
    run,
    selection,
)
from experiments.bench.__main__ import main

SIZES = (64, 128)
TIMES = ["optq_s", "optq_from_h_s", "kernel_s", "gram_s", "chol_s", "qronos_s", "limit_s",
         "optq_first_s", "compile_pieces_s", "rate_gflops", "optq_decreasing_norm_s",
         "optq_random_s"]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """One run through the command line, without peers, in float32 as the benchmark means."""
    out = tmp_path_factory.mktemp("bench")
    x64 = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    try:
        argv = ["--sizes", *map(str, SIZES), "--repeats", "1", "--min-time", "0",
                "--peers", "none", "--sweep-sizes", "128", "--sweep-blocks", "32", "128",
                "--check-n", "64", "--theory-n", "128", "--out", str(out), "--stem", "b"]
        assert main(argv) == 0
    finally:
        jax.config.update("jax_enable_x64", x64)
    return out


def test_files_written(cli_run):
    for suffix in (".csv", "_sweep.csv", "_matmul.csv", "_agreement.csv", "_theory.csv", ".md",
                   ".json", ".png", ".pdf"):
        path = cli_run / f"b{suffix}"
        assert path.exists(), path
    assert (cli_run / "b.png").stat().st_size > 1000  # a real image, not an empty file


def test_main_table_well_formed(cli_run):
    df = pd.read_csv(cli_run / "b.csv")
    assert list(df["N"]) == list(SIZES)
    assert (df["m"] == 2 * df["N"]).all() and (df["n"] == df["N"]).all()
    assert (df["dtype"] == "float32").all()
    for col in TIMES:
        assert df[col].map(math.isfinite).all() and (df[col] > 0).all(), col
    # The limit is the Cholesky time plus counted flops at the rate: it exceeds the former.
    assert (df["limit_s"] > df["chol_s"]).all()
    assert (df["limit_flops"] == df["n"] * df["N"] ** 2 + df["m"] * df["N"] ** 2).all()
    assert (df["optq_over_limit"] == df["optq_s"] / df["limit_s"]).all()
    for order in layer_sizes.OTHER_ORDERS:
        assert (df[f"optq_{order}_over_natural"] == df[f"optq_{order}_s"] / df["optq_s"]).all()
    # No peers were asked for: no peer columns.
    assert not any(c.startswith(("torch", "qwix", "brevitas")) for c in df.columns)


def test_markdown_and_sweep(cli_run):
    text = (cli_run / "b.md").read_text()
    for heading in ("## Time", "## Processing order", "## Compile time", "## Peak memory",
                    "## Matrix-product rate", "## Block size sweep", "## Theory bounds",
                    "Environment: backend"):
        assert heading in text, heading
    sweep = pd.read_csv(cli_run / "b_sweep.csv")
    assert sorted(sweep["block_size"]) == [32, 128]
    assert (sweep["kernel_s"] > 0).all()
    theory = pd.read_csv(cli_run / "b_theory.csv")
    assert {"optq_l2_bound", "qronos_l2_bound(factors)", "run: OPTQ (factorise + B1 + B2 + B3)",
            "run: Qronos (factorise(X_hat) + Q1)"} <= set(theory["function"])
    assert (theory["seconds"] >= 0).all()


def test_theory_limits(cli_run):
    """Every timed theory row has its flop count, float64 limit and ratio to it."""
    theory = pd.read_csv(cli_run / "b_theory.csv")
    assert set(theory["function"]) == set(flops.THEORY)
    for col in ("gflop", "limit64_s", "over_limit64", "rate64_gflops"):
        assert theory[col].map(math.isfinite).all() and (theory[col] > 0).all(), col
    # The limit is seconds / ratio, and the rate comes from the matmul row, whose own ratio
    # is 1 by construction (float rounding only).
    assert (abs(theory["limit64_s"] * theory["over_limit64"] - theory["seconds"])
            <= 1e-12 + 1e-9 * theory["seconds"]).all()
    mm = theory[theory["function"] == "float64 matmul (N, N) x (N, N)"].iloc[0]
    assert mm["over_limit64"] == pytest.approx(1.0, rel=1e-12)
    text = (cli_run / "b.md").read_text()
    assert "float64 limit [s]" in text and "ratio to limit" in text and "/ quantization" in text


def _formula_value(formula: str, m: int, N: int, n: int) -> float:
    """Evaluate a count such as ``m N^2 + N^3/3 + 2mN`` (juxtaposition = product)."""
    total = 0.0
    for term in formula.replace(" ", "").split("+"):
        num, body, div = re.fullmatch(r"(\d*)([mNn^\d]*?)(?:/(\d+))?", term).groups()
        value = float(num or 1) / float(div or 1)
        for sym, power in re.findall(r"([mNn])(?:\^(\d+))?", body):
            value *= {"m": m, "N": N, "n": n}[sym] ** int(power or 1)
        total += value
    return total


@pytest.mark.parametrize("name", sorted(flops.THEORY))
def test_flop_formulas_match_counts(name):
    """The formula printed in the report is the count used (at shapes that separate terms)."""
    count = flops.THEORY[name]
    for m, N, n in ((6, 3, 2), (40, 16, 7), (8192, 4096, 4096)):
        assert count.flops(m, N, n) == pytest.approx(_formula_value(count.formula, m, N, n),
                                                     rel=1e-12), (m, N, n)


def test_report_only_fills_theory_limits_of_old_runs(cli_run, tmp_path):
    """A run saved before the limits existed (no counts, no Brevitas keys) re-renders with
    them: they are derived from its measured seconds alone."""
    res = json.loads((cli_run / "b.json").read_text())
    res.pop("brevitas_agreement")
    for row in res["theory"]:
        for key in ("m", "n", "gflop", "flops_formula", "rate64_gflops", "limit64_s",
                    "over_limit64"):
            row.pop(key)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(res))
    assert main(["--report-only", str(old), "--out", str(tmp_path), "--stem", "o"]) == 0
    new = pd.read_csv(tmp_path / "o_theory.csv")
    ref = pd.read_csv(cli_run / "b_theory.csv")
    assert list(new["limit64_s"]) == pytest.approx(list(ref["limit64_s"]), rel=1e-12)


def test_skipped_peer_is_reported(monkeypatch, float32):
    monkeypatch.setattr(peers, "torch_missing", lambda: "torch is not installed (test)")
    opt = Options(sizes=(64,), repeats=1, min_time=0.0, peers=("torch",), sweep_sizes=(),
                       check_n=64, theory_n=None)
    res = run(opt)
    assert res["skipped"]["torch"] == "torch is not installed (test)"
    assert "torch_s" not in res["rows"][0] and res["agreement"] == []
    assert "torch is not installed (test)" in report.markdown(res, "cmd", "")


def test_torch_peer_and_agreement(tmp_path, float32):
    if why := peers.torch_missing():
        pytest.skip(why)
    opt = Options(sizes=(64,), repeats=1, min_time=0.0, peers=("torch",), sweep_sizes=(),
                       check_n=64, theory_n=None)
    res = run(opt)
    paths = report.write(res, str(tmp_path), "t", "cmd")
    assert all(tmp_path.joinpath(p.split("/")[-1]).exists() for p in paths)
    for row in res["rows"]:
        assert row["torch_s"] > 0 and row["torch_gram_s"] > 0 and row["torch_factor_s"] > 0
        assert math.isfinite(row["torch_over_optq"])
    by_dtype = {a["dtype"]: a for a in res["agreement"]}
    assert set(by_dtype) == {"float32", "float64"}
    # Same grid: both fit min-max per neuron; scale differs by float rounding only
    # (a few ulps of the dtype), the integer zero points not at all.
    assert by_dtype["float64"]["grid_scale_max_rel_diff"] < 1e-13
    assert by_dtype["float32"]["grid_scale_max_rel_diff"] < 1e-5
    assert by_dtype["float64"]["grid_zero_max_diff"] == 0
    # Same algorithm: in float64 a code can only flip where a value lies within ~1e-12 of a
    # rounding boundary (probability ~0 on Gaussian data); 1% slack for such a flip cascading
    # through the rest of its neuron.
    assert by_dtype["float64"]["codes_equal_frac"] >= 0.99
    assert by_dtype["float64"]["err_rel_diff"] < 1e-2


@pytest.mark.slow
def test_qwix_peer(float32):
    if why := peers.qwix_missing():
        pytest.skip(why)
    opt = Options(sizes=(64,), repeats=1, min_time=0.0, peers=("qwix",), sweep_sizes=(),
                       check_n=0, theory_n=None)
    row = run(opt)["rows"][0]
    assert row["qwix_s"] > 0 and row["qwix_first_s"] > 0 and math.isfinite(row["qwix_over_optq"])


@pytest.mark.parametrize("peer", ["qwix", "brevitas"])
def test_slow_peer_skip_rules(float32, peer):
    """Above the peer's max_n, or predicted over its budget, it is skipped with the reason
    (nothing is run)."""
    opt = Options(**{f"{peer}_max_n": 100, f"{peer}_budget_s": 1.0})
    measure = getattr(peer_timing, f"measure_{peer}")
    row: dict = {}
    measure(128, {}, opt, row, [])
    assert row[f"{peer}_note"].startswith(f"skipped: N > {peer}_max_n")
    row = {}
    measure(64, {}, opt, row, [(32, 10.0, 1.0)])
    assert row[f"{peer}_note"].startswith("skipped: predicted")


def test_brevitas_peer_and_agreement(tmp_path, float32):
    """Brevitas' Qronos is timed, reported, and does the same work as ptq.qronos "paper"."""
    if why := peers.brevitas_missing():
        pytest.skip(why)
    opt = Options(sizes=(64,), repeats=1, min_time=0.0, peers=("brevitas",),
                       sweep_sizes=(), check_n=64, theory_n=None)
    res = run(opt)
    row = res["rows"][0]
    assert row["brevitas_qronos_s"] > 0 and row["brevitas_update_s"] > 0
    assert math.isfinite(row["brevitas_over_qronos"])
    report.write(res, str(tmp_path), "t", "cmd")
    text = (tmp_path / "t.md").read_text()
    assert "## Same work: ptq.qronos vs Brevitas' Qronos" in text and "brevitas / qronos" in text
    assert (tmp_path / "t_brevitas_agreement.csv").exists()
    rows = {(a["dtype"], a["ptq_variant"]): a for a in res["brevitas_agreement"]}
    assert set(rows) == {(d, v) for d in ("float32", "float64") for v in ("paper", "ls_first")}
    for dtype, ulp in (("float32", 1e-6), ("float64", 1e-14)):
        paper = rows[dtype, "paper"]
        # Same grid: min-max per neuron in both; the scales differ by float rounding only.
        assert paper["grid_scale_max_rel_diff"] < ulp and paper["grid_zero_max_diff"] == 0
        # ptq's z_1 keeps lam where Brevitas' drops it: a relative O(lam / ||x_hat_1||^2)
        # change to a correction that is itself small, which moves no code on this data;
        # in float32 a code may still flip at a rounding boundary (1% slack, as for torch).
        if dtype == "float64":
            assert paper["codes_equal_frac"] == 1.0
            assert paper["err_rel_diff"] < 1e-12  # same codes, same Q: rounding of the norm
        else:
            assert paper["codes_equal_frac"] >= 0.99
            assert paper["err_rel_diff"] < 1e-3
        # The other variant rounds wt_1 at step 1: some first codes differ, and the errors.
        ls_first = rows[dtype, "ls_first"]
        assert ls_first["first_codes_equal_frac"] < 1.0
        assert ls_first["codes_equal_frac"] < paper["codes_equal_frac"]


def test_report_only_rederives_a_saved_run(cli_run, tmp_path):
    """``--report-only`` measures nothing: the measured columns come back unchanged."""
    assert main(["--report-only", str(cli_run / "b.json"), "--out", str(tmp_path),
                 "--stem", "r"]) == 0
    old, new = pd.read_csv(cli_run / "b.csv"), pd.read_csv(tmp_path / "r.csv")
    for col in ("optq_s", "qronos_s", "chol_s", "limit_s", "optq_over_limit"):
        assert (old[col] == new[col]).all(), col
    assert "Command: `python -m experiments.bench --sizes" in (tmp_path / "r.md").read_text()


def test_selection_benchmark_small(tmp_path):
    """The selection-cost benchmark runs end to end on a small layer and writes its row."""
    out = tmp_path / "sel.csv"
    assert selection.main(["--N", "64", "--m", "256", "--sequences", "8", "--repeats", "1",
                           "--out", str(out)]) == 0
    row = pd.read_csv(out).iloc[0]
    assert row.N == 64 and row.n == 64 and row.m == 256
    assert row.qronos_ls_s > 0 and row.select_s > 0 and row.qronos_auto_s > 0
    assert row.auto_over_qronos == pytest.approx(row.qronos_auto_s / row.qronos_ls_s)
