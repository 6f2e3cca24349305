"""Every config composes (lightning-hydra-template's tests/test_configs.py, STYLE.md 10)."""

from __future__ import annotations

import os

import pytest
from hydra.errors import ConfigCompositionException

from experiments import run as run_mod
from experiments import schema, sweep

CONF = run_mod.CONF_DIR


def options(group: str) -> list[str]:
    return sorted(f[:-5] for f in os.listdir(os.path.join(CONF, group)) if f.endswith(".yaml"))


@pytest.mark.parametrize("group", ["data", "algorithm", "grid"])
def test_every_group_option_composes_and_validates(compose_cfg, group, tmp_path):
    for option in options(group):
        extra = [f"data.path={tmp_path}/x.npz"] if option == "npz" else []
        cfg = compose_cfg([f"{group}={option}", *extra])
        spec = schema.validate(cfg)
        assert isinstance(spec, schema.Config)
        if group == "algorithm":
            assert spec.algorithm.name == option


@pytest.mark.parametrize("launcher", ["local", "slurm"])
def test_launchers_compose(compose_cfg, launcher):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], hydra=True)
    target = cfg.hydra.launcher._target_
    assert ("Joblib" if launcher == "local" else "Slurm") in target


@pytest.mark.parametrize("preset", sweep.presets())
@pytest.mark.parametrize("size", ["smoke", "default", "full"])
def test_every_preset_composes_at_every_size(compose_cfg, preset, size):
    cfg = compose_cfg([f"+experiment={preset}", f"size={size}"], hydra=True)
    schema.validate(cfg)
    pts = sweep.points(preset, size)
    assert len(pts) >= 1
    assert cfg.name == preset


@pytest.mark.parametrize("preset", sweep.presets())
def test_every_smoke_point_validates(preset):
    # Composing each point catches a sweep value of the wrong type or out of range.
    for cfg in sweep.configs(preset, "smoke"):
        schema.validate(cfg)


def test_run_id_ignores_where_records_go(compose_cfg):
    from omegaconf import OmegaConf

    from experiments import records

    a = OmegaConf.to_container(compose_cfg(["out_dir=/a"]), resolve=True)
    b = OmegaConf.to_container(compose_cfg(["out_dir=/b", "size=full"]), resolve=True)
    c = OmegaConf.to_container(compose_cfg(["grid.bits=3"]), resolve=True)
    assert records.run_id(a) == records.run_id(b)
    assert records.run_id(a) != records.run_id(c)


@pytest.mark.parametrize(
    "override, match",
    [
        ("algorithm=no_such_algorithm", "no_such_algorithm"),
        ("algorithm.order=sideways", "sideways"),
        ("grid.bits=four", "four"),
        ("data.no_such_key=1", "no_such_key"),
    ],
)
def test_bad_overrides_fail_at_composition(compose_cfg, override, match):
    with pytest.raises(ConfigCompositionException) as info:
        compose_cfg([override])
    text = str(info.value) + str(info.value.__cause__)
    assert match in text


@pytest.mark.parametrize(
    "override, match",
    [
        ("grid.bits=0", "grid.bits"),
        ("algorithm.lam=-1", "algorithm.lam"),
        ("algorithm.percdamp=-0.5", "algorithm.percdamp"),
        ("data.m=0", "data.m"),
        ("p=1.5", "`p`"),
    ],
)
def test_bad_values_fail_validation_with_the_key(compose_cfg, override, match):
    with pytest.raises(ValueError, match=match):
        schema.validate(compose_cfg([override]))
