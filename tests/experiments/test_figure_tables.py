"""Every synthetic figure's CSV against its records, recomputed here from the raw JSON.

The builders aggregate the pandas table of `records.load`; these tests recompute each plotted
number in plain Python from the JSON records (``record["measured"][k]``,
``record["bounds"][B]["values"]``, ``record["shapes"]``, ``record["config"]``), so a wrong
grouping, column, aggregate or filter in a builder fails here. Each CSV row is found by its
figure's grouping columns; every group of the records must appear exactly once, and every CSV
column must be a grouping column or a number checked against the records.

Two record sets: the smoke sweeps, where almost every group holds one run, and the same records
with a copy of each run (another id and rounding seed, errors scaled by 1.25, ``clipped``
flipped), so that every group pools two runs and the means, geometric means, extremes and run
counts over runs are exercised too.
"""

from __future__ import annotations

import copy
import csv
import math
import statistics
from collections import defaultdict
from typing import Any, Callable

import pytest

from experiments import records
from experiments.figures import FIGURES
from experiments.reproduce import build_figure

# style.save writes floats with "%.6g": six significant digits are off by at most half a unit
# in the sixth, 5e-6 relative; summing in another order changes a float64 mean by ~1e-16.
RTOL = 1e-5

Key = tuple
Expected = dict[Key, dict[str, float]]


def ok_records(folder: str) -> list[dict[str, Any]]:
    """The successful runs of a folder, read as JSON (figures use only these)."""
    recs = [records.read(f) for f in records.record_files([folder])]
    return [r for r in recs if r is not None and r.get("status") == "ok"]


def by(recs: list[dict], key: Callable[[dict], Key]) -> dict[Key, list[dict]]:
    groups: dict[Key, list[dict]] = defaultdict(list)
    for r in recs:
        groups[key(r)].append(r)
    return groups


def cfg(r: dict, path: str) -> Any:
    """A config value by its dotted path, ``cfg(r, "algorithm.name")``."""
    v = r["config"]
    for part in path.split("."):
        v = v[part]
    return v


def measured(rs: list[dict], k: str) -> list[float]:
    """Every neuron's value of a measured quantity over the runs."""
    return [v for r in rs for v in r["measured"][k]]


def bound(rs: list[dict], b: str) -> list[float]:
    """Every neuron's value of bound ``b`` over the runs that have it."""
    return [v for r in rs if "values" in r["bounds"].get(b, {}) for v in r["bounds"][b]["values"]]


def mean(values: list[float]) -> float:
    """Mean of the values that are numbers; NaN when none are (a bound that never applied)."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def runs(rs: list[dict]) -> int:
    return len({r["id"] for r in rs})


def expected_lam_sweep(recs: list[dict]) -> tuple[tuple[str, ...], Expected]:
    """Per (m, N, lam): means over neurons and runs of the plain and augmented error, B1, B2."""
    groups = by(recs, lambda r: (r["shapes"]["m"], r["shapes"]["N"], r["lam"]))
    return ("m", "N", "lam"), {
        key: {"err2": mean(measured(rs, "err2_self")), "err2_aug": mean(measured(rs, "err2_aug")),
              "B1": mean(bound(rs, "B1")), "B2": mean(bound(rs, "B2")), "runs": runs(rs)}
        for key, rs in groups.items()}


def expected_order(recs: list[dict]) -> tuple[tuple[str, ...], Expected]:
    """Per (m, N, order): over runs of each run's neuron mean, the geometric mean, min and max."""
    groups = by(recs, lambda r: (r["shapes"]["m"], r["shapes"]["N"], cfg(r, "algorithm.order")))
    out: Expected = {}
    for key, rs in groups.items():
        row: dict[str, float] = {"runs": runs(rs)}
        for name, of in (("err2_aug", lambda r: measured([r], "err2_aug")),
                         ("B1", lambda r: bound([r], "B1")), ("B2", lambda r: bound([r], "B2"))):
            per_run = [mean(of(r)) for r in rs]
            row |= {name: statistics.geometric_mean(per_run), f"{name}_min": min(per_run),
                    f"{name}_max": max(per_run)}
        out[key] = row
    return ("m", "N", "order"), out


def expected_bits(recs: list[dict]) -> tuple[tuple[str, ...], Expected]:
    """Per (algorithm, finite grid, bits): mean error, B1, B2 (NaN for RTN), runs, clipped runs."""
    groups = by(recs, lambda r: (cfg(r, "algorithm.name"), bool(cfg(r, "grid.finite")),
                                 cfg(r, "grid.bits")))
    return ("algorithm", "finite", "bits"), {
        key: {"err2": mean(measured(rs, "err2")), "B1": mean(bound(rs, "B1")),
              "B2": mean(bound(rs, "B2")), "runs": runs(rs),
              "clipped_runs": sum(bool(r["clipped"]) for r in rs)}
        for key, rs in groups.items()}


def none_to_nan(v: Any) -> Any:
    """JSON null (a guidance step or lam that does not exist) as NaN, in a value or a list."""
    if isinstance(v, list):
        return [math.nan if x is None else x for x in v]
    return math.nan if v is None else v


def seed_free(rs: list[dict], get: Callable[[dict], list[float]], what: str) -> list[float]:
    """A value a figure reads from one run as that of all its runs (S2 for every rounding seed,
    the guidance for every lam of a layer): checks that every run holds it and returns it."""
    values = [none_to_nan(get(r)) for r in rs]
    for v in values[1:]:
        assert v == pytest.approx(values[0], rel=1e-12, nan_ok=True), f"{what} differs"
    return values[0]


def expected_stochastic(recs: list[dict]) -> tuple[tuple[str, ...], Expected]:
    """Per (algorithm, seed, neuron) of stochastic and deterministic OPTQ: the inf-norm error,
    the alphabet used, S2 (and the error / S2), and the K of S3 and of B3."""
    sto = [r for r in recs if cfg(r, "algorithm.name") == "optq_stochastic"]
    det = [r for r in recs if cfg(r, "algorithm.name") == "optq"]
    S2 = seed_free(sto, lambda r: r["bounds"]["S2"]["values"], "S2")
    K_S3 = seed_free(sto, lambda r: r["bounds"]["S3"]["extra"]["levels"], "S3's K")
    K_B3 = (seed_free(det, lambda r: r["bounds"]["B3"]["extra"]["levels"], "B3's K") if det
            else [math.nan] * len(S2))
    out: Expected = {}
    for r in sto + det:
        for j, (errinf, k_used) in enumerate(zip(r["measured"]["errinf_self"],
                                                 r["measured"]["k_used"])):
            out[(cfg(r, "algorithm.name"), r["config"]["seed"], j)] = {
                "errinf": errinf, "k_used": k_used, "S2": S2[j], "K_S3": K_S3[j],
                "K_B3": K_B3[j], "ratio_S2": errinf / S2[j]}
    assert len(out) == sum(len(r["measured"]["errinf_self"]) for r in sto + det), "key clash"
    return ("algorithm", "seed", "neuron"), out


def expected_lam_guidance(recs: list[dict]) -> tuple[tuple[str, ...], Expected]:
    """The first data seed's sweep per lam (mean error and B1, max growth beyond ||w||_inf in
    steps, measured and B3's), then the guidance curve the records store for that layer."""
    seed = min(cfg(r, "data.seed") for r in recs)
    layer = [r for r in recs if cfg(r, "data.seed") == seed]
    g = {k: seed_free(layer, lambda r, k=k: r["guidance"][k], f"guidance {k}")
         for k in ("lams", "total", "growth", "lam")}
    blank = {"guidance_bound_rms": math.nan, "guidance_growth": math.nan, "chosen_lam": math.nan}
    out: Expected = {}
    for (lam,), rs in by(layer, lambda r: (r["lam"],)).items():
        # growth in units of the run's own step, record["step"] (the builder divides w_max by
        # w_max_over_step instead)
        growth = [(w - w_inf) / step for r in rs for w, w_inf, step in
                  zip(r["measured"]["w_max"], r["measured"]["w_inf"], r["step"])]
        growth_B3 = [(b3 - w_inf) / step for r in rs for b3, w_inf, step in
                     zip(r["bounds"]["B3"]["values"], r["measured"]["w_inf"], r["step"])]
        out[("sweep", lam)] = {"err2_aug": mean(measured(rs, "err2_aug")),
                               "B1": mean(bound(rs, "B1")), "growth": max(growth),
                               "growth_B3": max(growth_B3), "runs": runs(rs),
                               "data_seed": seed} | blank
    n = layer[0]["shapes"]["n"]
    sweep_only = dict.fromkeys(("err2_aug", "B1", "growth", "growth_B3", "runs", "data_seed"),
                               math.nan)
    for lam, total, growth in zip(g["lams"], g["total"], g["growth"]):
        # the stored total is the root of the sum over neurons; plotted as the rms over neurons
        out[("guidance", lam)] = sweep_only | {"guidance_bound_rms": total / math.sqrt(n),
                                               "guidance_growth": growth, "chosen_lam": g["lam"]}
    return ("curve", "lam"), out


def expected_mismatch(recs: list[dict]) -> tuple[tuple[str, ...], Expected]:
    """Per (algorithm, mismatch): mean layer error, Q1, Q2, the floor E_LS (lam = 0; zero where
    a run has no mismatch and so records none), runs."""
    groups = by(recs, lambda r: (cfg(r, "algorithm.name"), cfg(r, "data.mismatch")))
    floor = lambda r: r["measured"].get("e_ls0", [0.0] * r["shapes"]["n"])  # noqa: E731
    return ("algorithm", "mismatch"), {
        key: {"err2": mean(measured(rs, "err2")), "Q1": mean(bound(rs, "Q1")),
              "Q2": mean(bound(rs, "Q2")), "floor": mean([v for r in rs for v in floor(r)]),
              "runs": runs(rs)}
        for key, rs in groups.items()}


# The bounds of the tightness figure (its docstring): S1, an expectation, is not drawn.
TIGHTNESS_BOUNDS = ("B1", "B2", "B3", "Q1", "Q2", "Q3", "S2", "S3")


def describe(values: list[float]) -> dict[str, float]:
    """pandas' ``describe``: count, mean, sample std, min, quartiles (linear interpolation, which
    is statistics' "inclusive" method) and max."""
    values = sorted(values)
    q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"count": len(values), "mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else math.nan,
            "min": values[0], "25%": q[0], "50%": q[1], "75%": q[2], "max": values[-1]}


def expected_tightness(recs: list[dict]) -> tuple[tuple[str, ...], Expected]:
    """Per (bound, family, algorithm): the distribution of measured / bound over the neurons of
    the runs where the bound was checked (a bound of zero gives no ratio)."""
    ratios: dict[Key, list[float]] = defaultdict(list)
    for r in recs:
        for b in TIGHTNESS_BOUNDS:
            spec = r["bounds"].get(b, {})
            if "values" not in spec or not spec["checked"]:
                continue
            key = (b, cfg(r, "data.family"), cfg(r, "algorithm.name"))
            ratios[key] += [m / v for m, v in zip(r["measured"][spec["measured"]], spec["values"])
                            if v > 0]
    return ("bound", "family", "algorithm"), {k: describe(v) for k, v in ratios.items() if v}


EXPECTED = {"lam_sweep": expected_lam_sweep, "order": expected_order, "bits": expected_bits,
            "stochastic": expected_stochastic, "lam_guidance": expected_lam_guidance,
            "mismatch": expected_mismatch, "tightness": expected_tightness}


def same_key(cell: str, value: Any) -> bool:
    """A label or flag as written; a number (m, lam, mismatch ...) to the CSV's precision."""
    if isinstance(value, (bool, str)):
        return cell == str(value)
    return math.isclose(float(cell), value, rel_tol=RTOL)


def same_number(cell: str, value: float) -> bool:
    """An empty cell is pandas' NaN; otherwise equal to RTOL (infinities equal themselves)."""
    if value is None or math.isnan(value):
        return cell == ""
    return cell != "" and math.isclose(float(cell), value, rel_tol=RTOL)


def check_csv(path, keys: tuple[str, ...], expected: Expected) -> None:
    """Each expected group is exactly one CSV row, with every other column equal to RTOL."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    numbers = set().union(*(set(v) for v in expected.values()))
    assert set(rows[0]) == set(keys) | numbers, "a CSV column is neither a group key nor checked"
    assert len(rows) == len(expected), f"{len(rows)} CSV rows for {len(expected)} groups"
    for key, values in expected.items():
        match = [row for row in rows if all(same_key(row[k], v) for k, v in zip(keys, key))]
        assert len(match) == 1, f"group {dict(zip(keys, key))}: {len(match)} CSV rows"
        bad = {c: (match[0][c], v) for c, v in values.items() if not same_number(match[0][c], v)}
        assert not bad, f"group {dict(zip(keys, key))}: (CSV, records) differ in {bad}"


@pytest.fixture(scope="module")
def replicated_runs(smoke_runs, tmp_path_factory):
    """The smoke records plus a copy of every run with another id and rounding seed, its errors
    scaled by 1.25 and ``clipped`` flipped: each group then pools two different runs. Bounds,
    steps and data seeds are kept, so every figure's premises (S2 the same for every seed, one
    guidance per layer) still hold."""
    root, _ = smoke_runs
    out = tmp_path_factory.mktemp("replicated")
    for name in FIGURES:
        for r in ok_records(str(root / name)):
            twin = copy.deepcopy(r)
            twin["id"] = r["id"][::-1]
            twin["seed"] = twin["config"]["seed"] = r["config"]["seed"] + 1000
            twin["clipped"] = not r["clipped"]
            for k, v in twin["measured"].items():
                if k.startswith(("err", "e_ls")):
                    twin["measured"][k] = [1.25 * x for x in v]
            for rec in (r, twin):
                path = out / name / f"{cfg(rec, 'algorithm.name')}-{rec['id']}.json"
                records.write_atomic(str(path), rec)
    return out


@pytest.mark.parametrize("name", FIGURES)
@pytest.mark.parametrize("which", ["smoke", "replicated"])
def test_figure_csv_matches_its_records(request, smoke_runs, tmp_path, name, which):
    root = smoke_runs[0] if which == "smoke" else request.getfixturevalue("replicated_runs")
    folder = str(root / name)
    build_figure(name, folder, str(tmp_path))
    keys, expected = EXPECTED[name](ok_records(folder))
    assert expected, f"no groups in the records of {name}"
    check_csv(tmp_path / f"{name}.csv", keys, expected)
