"""Whole-model studies: one record per (pass, configuration, bits), for any model adapter.

A study is a model (`experiments.models`), the function that runs one configuration of it
through the sequential driver (`experiments.driver`) and scores the result on held-out
text, and its figures. Two passes, each one whole-model run per configuration and bit-width:

* ``practical``: GPTQ's asymmetric min-max grid per neuron, what practitioners deploy. The
  grid clips, so the no-clipping bounds do not apply; these runs give the end-to-end quality
  and the per-layer errors behind the Qronos gain.
* ``bounds``: the symmetric max-abs step of the same bit-width on the infinite alphabet
  ``step * Z`` (nothing clips), float64 (the exact algorithms the theorems are about), with
  every applicable bound of THEORY.md section 4 evaluated on every layer
  (`experiments.driver.theory_bounds`): violations and tightness.

One JSON record per run, written atomically; a recorded run is skipped, so an interrupted
study resumes, and a failed run is written as an ``error`` record with its traceback and the
study goes on. Records keep per-layer summaries only (a few KB per layer).

The studies built on `Study`: `experiments.studies.minilm` (MiniLM, folder ``real``),
`experiments.studies.lm`, `experiments.studies.lm_calibration` and
`experiments.studies.strength` (SmolLM2), and
`experiments.studies.qat`; `StudyCommand` alone: `experiments.studies.rate_distortion` and
`experiments.studies.allocation`. Sizes: ``conf/study/<key>.yaml`` (`load_sizes`).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from typing import Any, Callable, NamedTuple

import numpy as np
from omegaconf import OmegaConf

from experiments import console_logging, records
from experiments.driver import P_DEFAULT, theory_bounds
from experiments.measure import record_run

log = logging.getLogger(__name__)
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf",
                        "study")

# name -> driver options (the figures' legend names; colours in figures.style).
CONFIGS: dict[str, dict[str, Any]] = {
    "rtn": dict(algorithm="rtn"),
    "optq": dict(algorithm="optq"),
    "optq_decreasing": dict(algorithm="optq", order="decreasing_norm"),
    "optq_stochastic": dict(algorithm="optq", rounding="stochastic"),
    "qronos": dict(algorithm="qronos", variant="paper"),
    "qronos_ls": dict(algorithm="qronos", variant="ls_first"),
    "qronos_stochastic": dict(algorithm="qronos", variant="paper", rounding="stochastic"),
    # Qronos' least-squares-first form at correction strength a (0: OPTQ on X_hat, 0.5: QEP,
    # 1: qronos_ls, which leaves the strength at its default so its record ids stay as they
    # were), and a chosen per layer from the calibration data (ptq.select): at the damping of
    # percdamp, or together with the damping.
    "qronos_s025": dict(algorithm="qronos", variant="ls_first", strength=0.25),
    "qronos_s05": dict(algorithm="qronos", variant="ls_first", strength=0.5),
    "qronos_s075": dict(algorithm="qronos", variant="ls_first", strength=0.75),
    "qronos_auto": dict(algorithm="qronos", variant="ls_first", strength="auto"),
    "qronos_auto_lam": dict(algorithm="qronos", variant="ls_first", strength="auto", lam="auto"),
}
PASSES = {
    "practical": dict(grid="asymmetric", finite=True, precision="float32"),
    "bounds": dict(grid="symmetric", finite=False, precision="float64"),
}
# The driver options a record's config may carry (everything else describes the data).
OPTION_KEYS = ("grid", "finite", "order", "rounding", "variant", "strength", "lam", "seed",
               "percdamp", "group_size", "static_groups")


class Size(NamedTuple):
    bits: tuple[int, ...]  # bit-widths of the practical pass
    bounds_bits: tuple[int, ...]  # bit-widths of the bounds pass
    practical: tuple[str, ...]  # configurations (keys of CONFIGS) of each pass
    bounds: tuple[str, ...]
    data: dict[str, Any]  # the model's calibration and evaluation sizes, recorded as is
    # Overrides of the record config, each giving every configuration once more (data keys
    # such as calib, driver options such as percdamp); ({},) runs each configuration once.
    variants: tuple[dict[str, Any], ...] = ({},)


class Outcome(NamedTuple):
    """What running one configuration returns to the study."""

    quality: dict[str, Any]  # the held-out scores, merged into the record
    records: list  # the driver's per-layer records
    seconds: float  # wall time of the layer-by-layer quantization


def load_sizes(key: str, size_type: type, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The sizes of study ``key``: ``conf/study/<key>.yaml``'s ``sizes`` mapping, each a
    ``size_type`` (a NamedTuple; YAML lists become tuples, mappings stay dicts), with
    dotted overrides applied first (``sizes.full.bits=[3,4]``, OmegaConf's dot-list syntax)."""
    path = os.path.join(CONF_DIR, f"{key}.yaml")
    cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
    sizes = {}
    for name, fields in OmegaConf.to_container(cfg, resolve=True)["sizes"].items():
        unknown = sorted(set(fields) - set(size_type._fields))
        if unknown:
            raise ValueError(f"{path}: size {name!r} has unknown keys {unknown}; expected some "
                             f"of {size_type._fields}")
        sizes[name] = size_type(**{k: _tuples(v) for k, v in fields.items()})
    return sizes


def _tuples(value):
    """YAML lists as tuples (recursively), mappings as dicts."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def bound_summary(checked: dict[str, dict], measured: dict[str, np.ndarray]) -> dict[str, dict]:
    """Per bound of one layer: Frobenius norms over neurons of measurement and bound, and
    the check (violations, tightness)."""
    out = {}
    for b, v in checked.items():
        if "values" not in v:
            out[b] = {"error": v.get("error", "no values"), "kind": v.get("kind")}
            continue
        vals = np.asarray(v["values"], float)
        meas = np.asarray(measured[v["measured"]], float)
        ratio = meas / vals
        out[b] = {"kind": v["kind"], "measured": v["measured"], "checked": bool(v["checked"]),
                  "violations": int(v["violations"]),
                  "bound_fro": float(np.sqrt(np.sum(vals**2))),
                  "measured_fro": float(np.sqrt(np.sum(meas**2))),
                  "ratio_median": float(np.median(ratio)), "ratio_max": float(np.max(ratio))}
    return out


def bounds_hook(ctx) -> dict[str, Any]:
    """``on_layer`` of the bounds pass: every applicable bound, summarised per layer."""
    tb = theory_bounds(ctx)
    return {"clipped": tb["clipped"], "bounds": bound_summary(tb["bounds"], tb["measured"])}


def layer_row(r: dict) -> dict[str, Any]:
    """The part of one driver record that a study keeps."""
    row = {k: r[k] for k in ("name", "layer", "kind", "m", "N", "n", "lam", "seconds",
                             "rel_err", "input_mismatch")}
    row["err2_fro"] = float(np.sqrt(np.sum(np.asarray(r["err2"]) ** 2)))
    if "e_ls" in r:
        row["e_ls_fro"] = float(np.sqrt(np.sum(np.asarray(r["e_ls"]) ** 2)))
    # Qronos: the strength used and, chosen from the data, the evidence (driver.selection_record)
    for k in ("clipped", "bounds", "strength_used", "selection"):
        if k in r:
            row[k] = r[k]
    return row


class StudyCommand:
    """What `experiments.reproduce` and a study's command line need of a study: ``key``,
    ``sizes``, ``figures`` (``figures(records, out_dir)`` draws its figures: a builder of
    `experiments.figures`),
    ``label``, ``description``, ``run_study(size, folder)`` and ``summarize(folder, ids)``."""

    key: str
    sizes: dict
    figures: Callable[[list[dict], str], Any]
    label: str
    description: str

    @staticmethod
    def load(out_dir: str, ids: set[str] | None = None) -> list[dict[str, Any]]:
        """Every record of a study folder (`experiments.records.load_records`)."""
        return records.load_records(out_dir, ids)

    def size(self, name: str):
        """The size called ``name`` (ValueError naming the sizes there are otherwise)."""
        if name not in self.sizes:
            raise ValueError(f"`size` must be one of {sorted(self.sizes)}; got {name!r}")
        return self.sizes[name]

    def record_ids(self, size: str) -> set[str] | None:
        """The ids of the records ``size`` makes (None: every record of the folder)."""
        return None

    def runs_done(self, size: str, folder: str) -> int:
        """Run the study of ``size`` into ``folder``; how many runs were done now."""
        return self.run_study(size, folder)

    def run_and_build(self, size: str, folder: str,
                      out_dir: str | None) -> tuple[int, dict[str, Any]]:
        """The study of ``size`` into ``folder``, its figures into ``out_dir`` (None: none; a
        figure that fails is logged, the records stay), and `summarize`; returns (runs done
        now, summary). What `experiments.reproduce` and the study's command line both run."""
        ran = self.runs_done(size, folder)
        ids = self.record_ids(size)  # not a changed preset's leftovers
        if out_dir is not None:
            try:
                self.figures(self.load(folder, ids), out_dir)
            except Exception:
                log.exception("the %s figures failed", self.label)
        return ran, self.summarize(folder, ids)

    def main(self, argv: list[str] | None = None) -> int:
        parser = argparse.ArgumentParser(description=self.description)
        parser.add_argument("--size", default="default", choices=sorted(self.sizes))
        parser.add_argument("--runs", default="runs", help=f"records root (runs/<size>/"
                                                           f"{self.key})")
        parser.add_argument("--out", default="figures", help="figure folder")
        args = parser.parse_args(argv)
        console_logging()
        _, s = self.run_and_build(args.size, f"{args.runs}/{args.size}/{self.key}", args.out)
        print(s)
        return int(s["violations"] > 0 or s["errors"] > 0)


class Study(StudyCommand):
    """A whole-model study.

    Args:
      key: its folder under ``runs/<size>/`` and its row in `experiments.reproduce`.
      sizes: ``{"smoke" | "default" | "full": Size}``.
      execute: ``execute(cfg, options, on_layer) -> Outcome``: one whole-model run of the
        record config ``cfg`` with the driver options ``options`` (a dict for
        `experiments.driver.make_options`).
      figures: ``figures(records, out_dir)`` draws the study's figures (a ``build_all`` of
        `experiments.figures`).
      label: how progress lines name the study; quality: the record key they print.
    """

    def __init__(self, key: str, sizes: dict[str, Size],
                 execute: Callable[[dict, dict, Callable | None], Outcome],
                 figures: Callable[[list[dict], str], Any],
                 label: str, quality: str):
        self.key, self.sizes, self.execute = key, sizes, execute
        self.figures, self.label, self.quality = figures, label, quality
        self.description = f"Run the {label} study and its figures."

    def config(self, pass_: str, name: str, bits: int, size: Size, seed: int = 0,
               variant: dict[str, Any] | None = None) -> dict:
        """The record's config: everything that changes a number (hashed into the file name)."""
        return {"name": name, "pass": pass_, "bits": bits, **size.data, "seed": seed,
                **PASSES[pass_], **CONFIGS[name], **(variant or {})}

    def compute(self, cfg: dict[str, Any]) -> dict[str, Any]:
        """Run one configuration; the body of its record (raises on failure). Runs in the x64
        mode that `x64` gives."""
        options = {"algorithm": cfg["algorithm"], "bits": cfg["bits"],
                   **{k: cfg[k] for k in OPTION_KEYS if k in cfg}}
        hook = bounds_hook if cfg["pass"] == "bounds" else None
        out = self.execute(cfg, options, hook)
        return {**out.quality, "layers": [layer_row(r) for r in out.records],
                "wall_s": {"quantize": out.seconds}}

    def x64(self, cfg: dict[str, Any]) -> bool:
        """Whether run ``cfg`` computes in float64 (its ``precision``)."""
        return cfg["precision"] == "float64"

    def record_path(self, cfg: dict[str, Any], out_dir: str) -> str:
        return os.path.join(out_dir, f"{cfg['pass']}-{cfg['name']}-{cfg['bits']}b-"
                                     f"{records.run_id(cfg)}.json")

    def run_one(self, cfg: dict[str, Any], out_dir: str) -> dict[str, Any]:
        """Skip if recorded, else compute and write the record (an error record on failure):
        `experiments.measure.record_run`."""
        return record_run(self.record_path(cfg, out_dir), cfg, lambda: self.compute(cfg),
                          label=f"{self.label} {cfg['pass']} {cfg['name']} {cfg['bits']} bits",
                          x64=self.x64(cfg))

    def configs(self, size: str) -> list[dict[str, Any]]:
        s = self.size(size)
        bits = {"practical": s.bits, "bounds": s.bounds_bits}
        return [self.config(p, name, b, s, variant=v) for v in s.variants for p in PASSES
                for b in bits[p] for name in getattr(s, p)]

    def run_study(self, size: str, out_dir: str) -> tuple[int, float]:
        """Every configuration of ``size`` into ``out_dir``; returns (runs done now, seconds)."""
        todo = self.configs(size)
        t0 = time.perf_counter()
        ran = 0
        for i, cfg in enumerate(todo, 1):
            t1 = time.perf_counter()
            rec = self.run_one(cfg, out_dir)
            if rec.get("skipped"):
                continue
            ran += 1
            log.info("[%s %d/%d] %-8s %-17s %d bits: %s, %s %.4f (%.0fs)", self.key, i,
                     len(todo), cfg["pass"], cfg["name"], cfg["bits"], rec["status"],
                     self.quality, rec.get(self.quality, float("nan")),
                     time.perf_counter() - t1)
        return ran, time.perf_counter() - t0

    def record_ids(self, size: str) -> set[str]:
        return {records.run_id(c) for c in self.configs(size)}

    def runs_done(self, size: str, folder: str) -> int:
        return self.run_study(size, folder)[0]

    def summarize(self, out_dir: str, ids: set[str] | None = None) -> dict[str, Any]:
        """The reproduce table's row: runs, errors, violations of the deterministic bounds,
        the violation rate of the probability-(1-p) ones, and the median tightness (per layer,
        the median over neurons of measured / bound), over every checked layer of the bounds
        pass; with ``ids``, over those configurations' records only."""
        recs = self.load(out_dir, ids)
        ok = [r for r in recs if r["status"] == "ok"]
        det = prob = prob_n = 0
        ratios = []
        for r in ok:
            for layer in r["layers"]:
                for b in layer.get("bounds", {}).values():
                    if "violations" not in b:
                        det += b.get("kind") == "deterministic"  # a bound that failed
                        continue
                    if not b["checked"]:
                        continue
                    ratios.append(b["ratio_median"])
                    if b["kind"] == "deterministic":
                        det += b["violations"]
                    elif b["kind"] == "probability":
                        prob += b["violations"]
                        prob_n += layer["n"]
        return {"runs": len(ok), "errors": len(recs) - len(ok), "violations": det,
                "prob_violation_rate": prob / prob_n if prob_n else np.nan,
                "p": P_DEFAULT if prob_n else np.nan,
                "median_tightness": float(np.median(ratios)) if ratios else np.nan}
