"""Run every figure's sweep, build every figure, print what was verified.

    python -m experiments.reproduce              # default size (minutes on 2 cores)
    python -m experiments.reproduce --full       # publication size
    python -m experiments.reproduce --only order mismatch --size smoke

Each sweep runs in this process through `experiments.sweep` (the function the Hydra app
calls, so records are identical to ``python -m experiments.run -m +experiment=<name>``);
records go to ``runs/<size>/<name>/``, so an interrupted reproduce resumes where it stopped.
Then each figure's builder reads those records into ``figures/``, and the summary table
(also ``figures/summary.csv``) lists per figure: runs, error records, violations of the
deterministic bounds (must be 0), the violation rate of the probability-(1-p) bounds (should
be at most p), the S1 check on means over seeds, and the median tightness measured/bound.
The last row, ``real``, is the real-model study (`experiments.studies.minilm`: whole-encoder
sequential runs of all-MiniLM-L6-v2, records in ``runs/<size>/real/``) and its three figures
``real_cosine``, ``real_gain`` and ``real_bounds``; the row ``lm`` is the causal LM study
(`experiments.studies.lm`: SmolLM2-135M, held-out perplexity, records in ``runs/<size>/lm/``) and
its
figures ``lm_perplexity``, ``lm_gain`` (and ``lm_bounds`` where the size has a bounds pass);
``lm_calibration`` (`experiments.studies.lm_calibration`: OPTQ and Qronos against calibration size
and
damping) has smoke and full sizes only and is left out of the default reproduce, and so is
``lm_strength`` (`experiments.studies.strength`: Qronos' correction strength, fixed and chosen
per layer; figure ``lm_strength``; its ``study`` size, the committed figure, is the study's own
command line); the row
``qat`` is PTQ against QAT on MiniLM with the output scales gamma and least squares
(`experiments.studies.qat`, sizes in ``conf/study/qat.yaml``, records in ``runs/<size>/qat/``) and
its
figure ``qat`` (``--size full`` has the longer QAT schedule); ``rate_distortion`` measures
every quantizer on every MiniLM layer against the layer's rate-distortion references
(`experiments.studies.rate_distortion`, records in ``runs/<size>/rate_distortion/``, figure
``rate_distortion``; its violations count the waterfilling bound B1' exceeded and the rows
below the Shannon lower bound by more than the entropy-power estimate's stated error);
``allocation`` gives MiniLM's layers mixed bits under an average-bits budget by seed 002's
formula, by the theory and uniformly, and scores each end to end (`experiments.studies.allocation`,
records in ``runs/<size>/allocation/``, figure ``allocation``; its violations count runs over
their budget and checkpoints whose per-layer bits or weights do not survive the round trip).
``rate_distortion`` and ``allocation`` run at default size only when named (``--only``):
with them the default reproduce would pass its 10-minute budget.
They need the model packages (``make install``) and are left out with ``--only`` naming
synthetic figures alone.
The exit status is 1 when a deterministic bound is violated or a run failed.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time

import numpy as np
import pandas as pd

from experiments import console_logging, enable_compile_cache, records, sweep
from experiments.figures import (
    bits,
    common,
    lam_guidance,
    lam_sweep,
    mismatch,
    order,
    stochastic,
    tightness,
)
from experiments.studies import (
    allocation,
    lm,
    lm_calibration,
    minilm,
    qat,
    rate_distortion,
    strength,
)

log = logging.getLogger("experiments.reproduce")
S1_RTOL = 1e-9  # S1 compares float64 means; only round-off slack
# The synthetic figures: preset (conf/experiment/<name>.yaml) -> its builder.
FIGURES = {"lam_sweep": lam_sweep.build, "order": order.build, "bits": bits.build,
           "stochastic": stochastic.build, "lam_guidance": lam_guidance.build,
           "mismatch": mismatch.build, "tightness": tightness.build}
# The whole-model studies (not Hydra presets), in the order they run: row name -> study.
STUDIES = {s.key: s for s in (minilm.STUDY, lm.STUDY, lm_calibration.STUDY, strength.STUDY,
                              strength.STUDY_MINILM,
                              qat.STUDY, rate_distortion.STUDY, allocation.STUDY)}


def study_sizes(name: str) -> set[str]:
    """The sizes a whole-model study defines (``lm_calibration`` and ``lm_strength`` have no
    default size)."""
    return set(STUDIES[name].sizes)


def in_default(name: str) -> bool:
    """Whether the plain default reproduce runs study ``name`` (its ``in_default_reproduce``,
    True unless the study says otherwise)."""
    return bool(getattr(STUDIES[name], "in_default_reproduce", True))


def summarize(folder: str) -> dict:
    """Counts, violations and tightness over the records of one sweep folder."""
    recs = [r for r in map(records.read, records.record_files([folder])) if r is not None]
    ok = [r for r in recs if r["status"] == "ok"]
    det_viol = prob_viol = prob_total = 0
    ratios: list[float] = []
    s1_groups: dict[str, list] = collections.defaultdict(list)
    p = None
    for r in ok:
        p = r["config"].get("p", p)
        for b in r["bounds"].values():
            if "values" not in b:
                det_viol += 1 if b.get("kind") == "deterministic" else 0  # a bound that failed
                continue
            if b["kind"] == "expectation":
                cfg = {k: v for k, v in r["config"].items() if k != "seed"}
                s1_groups[records.run_id(cfg)].append((r["measured"][b["measured"]], b["values"]))
                continue
            if not b["checked"]:
                continue
            meas = np.asarray(r["measured"][b["measured"]])
            vals = np.asarray(b["values"])
            ratios += list(meas / vals)
            if b["kind"] == "deterministic":
                det_viol += b["violations"]
            else:
                prob_viol += b["violations"]
                prob_total += len(vals)
    s1_viol = s1_checked = 0
    for draws in s1_groups.values():
        if len(draws) < 2:
            continue
        meas = np.asarray([d[0] for d in draws])
        rms = np.sqrt(np.mean(meas**2, axis=0))  # sqrt of the mean over seeds of err2_aug^2
        s1_viol += int(np.sum(rms > np.asarray(draws[0][1]) * (1 + S1_RTOL)))
        s1_checked += rms.size
    return {
        "runs": len(ok),
        "errors": len(recs) - len(ok),
        "violations": det_viol,
        "prob_violation_rate": prob_viol / prob_total if prob_total else np.nan,
        "p": p if prob_total else np.nan,
        "S1_violations": f"{s1_viol}/{s1_checked}" if s1_checked else "-",
        "median_tightness": float(np.median(ratios)) if ratios else np.nan,
    }


def study_row(name: str, size: str, folder: str, out_dir: str | None) -> dict:
    """Run a whole-model study, build its figures, and summarize it as one table row."""
    t0 = time.perf_counter()
    ran, summary = STUDIES[name].run_and_build(size, folder, out_dir)
    return {"figure": name, **summary, "S1_violations": "-", "ran_now": ran,
            "seconds": round(time.perf_counter() - t0, 1)}


def write_summary(table: pd.DataFrame, path: str) -> None:
    """Write the summary table, keeping the rows of figures not run this time (``--only``
    replaces its own rows and leaves the others' as they were), in the usual figure order."""
    if os.path.exists(path):
        old = pd.read_csv(path)
        table = pd.concat([old[~old["figure"].isin(table["figure"])], table], ignore_index=True)
    rank = {name: i for i, name in enumerate((*FIGURES, *STUDIES))}
    table = table.sort_values("figure", key=lambda s: s.map(rank).fillna(len(rank)), kind="stable")
    table.to_csv(path, index=False, float_format="%.4g")


def build_figure(name: str, folder: str, out_dir: str) -> None:
    FIGURES[name](common.load_ok(folder), out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every figure's sweep and build figures/.")
    parser.add_argument("--size", default="default", choices=["smoke", "default", "full"])
    parser.add_argument("--full", action="store_const", const="full", dest="size",
                        help="publication size (same as --size full)")
    parser.add_argument("--only", nargs="+", default=None,
                        help=f"figure names to run ({', '.join((*FIGURES, *STUDIES))})")
    parser.add_argument("--runs", default="runs", help="records root (runs/<size>/<figure>)")
    parser.add_argument("--out", default="figures", help="figure folder")
    parser.add_argument("--no-figures", action="store_true", help="run the sweeps only")
    args = parser.parse_args(argv)
    console_logging()
    logging.getLogger("experiments.run").setLevel(logging.WARNING)  # one line per run is noise
    enable_compile_cache()
    names = list(args.only or (*FIGURES, *STUDIES))
    unknown = sorted(set(names) - set(sweep.presets()) - set(STUDIES))
    if unknown:
        parser.error(f"no preset conf/experiment/<name>.yaml for {unknown}")
    missing = [n for n in names if n in STUDIES and args.size not in study_sizes(n)]
    if args.only and missing:
        parser.error(f"{missing} have no {args.size!r} size; sizes: "
                     f"{ {n: sorted(study_sizes(n)) for n in missing} }")
    for n in missing:
        log.info("%s: no %s size, left out (run it with --size full --only %s)", n, args.size, n)
        names.remove(n)
    if not args.only and args.size == "default":  # the 10-minute budget of `make reproduce`
        for n in [n for n in names if n in STUDIES and not in_default(n)]:
            log.info("%s: outside the default reproduce's time budget, left out (run it with "
                     "--only %s)", n, n)
            names.remove(n)
    t0 = time.perf_counter()
    rows = []
    for name in names:
        folder = os.path.join(args.runs, args.size, name)
        if name in STUDIES:
            rows.append(study_row(name, args.size, folder, None if args.no_figures else args.out))
            continue
        res = sweep.run_sweep(name, args.size, [f"out_dir={folder}"])
        if not args.no_figures:
            try:
                build_figure(name, folder, args.out)
            except Exception:
                log.exception("figure %s failed", name)
        rows.append({"figure": name, **summarize(folder), "ran_now": res.ran,
                     "seconds": round(res.seconds, 1)})
    table = pd.DataFrame(rows)
    os.makedirs(args.out, exist_ok=True)
    if not args.no_figures:
        write_summary(table.drop(columns=["ran_now", "seconds"]),
                      os.path.join(args.out, "summary.csv"))
    total = time.perf_counter() - t0
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"total {total:.0f}s; deterministic bound violations: {int(table.violations.sum())}")
    return int(table.violations.sum() > 0 or table.errors.sum() > 0)


if __name__ == "__main__":
    sys.exit(main())
