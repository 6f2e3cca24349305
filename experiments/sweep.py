"""Run an experiment preset's sweep in-process, exactly as `python -m experiments.run -m` would.

The points are the cartesian product of the preset's ``hydra.sweeper.params`` (the entry of
its ``sizes`` chosen by ``size``), expanded by Hydra's own BasicSweeper, and each point's
config (Hydra's composition, see `configs`) is passed to `experiments.run.run`, the function
the Hydra app calls. One
process runs every point, so JAX compiles each kernel shape once for the whole sweep (the
joblib launcher would compile it again in each worker).

    python -m experiments.sweep order --size smoke
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import time
from typing import Any, Iterator, NamedTuple

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from experiments import run as run_mod

log = logging.getLogger(__name__)


class SweepResult(NamedTuple):
    preset: str
    out_dir: str
    ran: int  # runs computed now
    skipped: int  # runs whose record already existed
    errors: int  # runs that wrote an error record
    seconds: float


def _initialized() -> Any:
    """A Hydra config context on conf/ (reusing one that is already open)."""
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    return initialize_config_dir(config_dir=run_mod.CONF_DIR, version_base="1.3")


def base_overrides(preset: str, size: str, extra: list[str] | None = None) -> list[str]:
    return [f"+experiment={preset}", f"size={size}", *(extra or [])]


def points(preset: str, size: str, extra: list[str] | None = None) -> list[list[str]]:
    """The override lists of every run of the sweep (Hydra's BasicSweeper expansion)."""
    with _initialized():
        cfg = compose("config", overrides=base_overrides(preset, size, extra),
                      return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params, resolve=True) or {}
    # A sweep parameter fixed on the command line replaces the preset's list, as in Hydra.
    fixed = {o.split("=", 1)[0] for o in (extra or [])}
    sweep = [f"{k}={v}" for k, v in params.items() if k not in fixed]
    if not sweep:
        return [[]]
    parsed = OverridesParser.create().parse_overrides(sweep)
    return [p for batch in BasicSweeper.split_arguments(parsed, None) for p in batch]


def config_groups() -> frozenset[str]:
    """The config groups under conf/ (``algorithm``, ``data``, ``hydra/launcher``, ...)."""
    out = set()
    for root, dirs, _ in os.walk(run_mod.CONF_DIR):
        rel = os.path.relpath(root, run_mod.CONF_DIR)
        out.update(d if rel == "." else f"{rel}/{d}".replace(os.sep, "/") for d in dirs)
    return frozenset(out)


def configs(preset: str, size: str, extra: list[str] | None = None) -> Iterator[DictConfig]:
    """Every composed run config of the sweep, in order.

    Hydra composes once per distinct choice of config groups among the points (``algorithm=
    qronos``, ``data=low_rank``); a point's plain value overrides (``lam=0.1``, ``seed=7``,
    ``grid.bits=3``) are then set on a copy of that composition, as Hydra sets command-line
    values after the defaults list: the same config, without composing the whole tree once
    per point (about 0.1 s each, most of a small sweep's time). A point with any other kind
    of override (``+key``, ``~key``, ``++key``) is composed in full.
    `tests/experiments/test_sweeps.py` checks both ways give equal configs for every preset.
    """
    pts = points(preset, size, extra)
    base = base_overrides(preset, size, extra)
    groups = config_groups()
    parser = OverridesParser.create()
    composed: dict[tuple[str, ...], DictConfig] = {}
    with _initialized():
        for point in pts:
            parsed = parser.parse_overrides(point)
            if any(o.is_add() or o.is_delete() or o.is_force_add() for o in parsed):
                yield compose("config", overrides=base + point)
                continue
            choice = tuple(s for s, o in zip(point, parsed) if o.key_or_group in groups)
            if choice not in composed:
                composed[choice] = compose("config", overrides=base + list(choice))
            cfg = copy.deepcopy(composed[choice])
            for o in parsed:
                if o.key_or_group not in groups:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
            yield cfg


def composed_configs(preset: str, size: str,
                     extra: list[str] | None = None) -> Iterator[DictConfig]:
    """`configs` the slow way: Hydra composes every point in full (the reference)."""
    pts = points(preset, size, extra)
    with _initialized():
        for point in pts:
            yield compose("config", overrides=base_overrides(preset, size, extra) + point)


def run_sweep(preset: str, size: str = "default", extra: list[str] | None = None, *,
              progress: bool = True) -> SweepResult:
    """Run every point of the sweep that has no ``ok`` record yet; returns the counts.

    A bad point (a ValueError from validation or data loading) stops the sweep: it is a
    mistake in the preset or the overrides, not a run failure. A run that fails while
    computing has already written its error record and the sweep continues.
    """
    t0 = time.perf_counter()
    cfgs = list(configs(preset, size, extra))
    out_dir = cfgs[0].out_dir if cfgs else ""
    ran = skipped = errors = 0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(cfgs), desc=f"{preset:>13}", unit="run", leave=True)
    try:
        for cfg in cfgs:
            record = run_mod.run(cfg)
            if record.get("skipped"):
                skipped += 1
            elif record["status"] == "ok":
                ran += 1
            else:
                errors += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    log.info("%s: %d ran, %d skipped, %d errors in %.1fs -> %s", preset, ran, skipped, errors,
             seconds, out_dir)
    return SweepResult(preset, os.path.abspath(out_dir), ran, skipped, errors, seconds)


def presets() -> list[str]:
    """The experiment presets in conf/experiment (one per figure)."""
    folder = os.path.join(run_mod.CONF_DIR, "experiment")
    return sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run one experiment preset's sweep in-process.")
    parser.add_argument("preset", choices=presets())
    parser.add_argument("--size", default="default", choices=["smoke", "default", "full"])
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. out_dir=/tmp/x")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_sweep(args.preset, args.size, args.overrides)


if __name__ == "__main__":
    main()
