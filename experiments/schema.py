"""Typed schemas of the Hydra configuration (registered in a ConfigStore).

Composition checks names and types: an unknown key, a string where a number belongs or an
unknown `order`/`rounding` fails when Hydra composes the config, with OmegaConf's message.
Ranges (bits >= 1, lam >= 0, ...) cannot be expressed in a schema, so `validate` converts the
composed config to these dataclasses, whose ``__post_init__`` raises a ``ValueError`` naming
the key, the expected value and the value received. `experiments.run` calls `validate` before
it loads data or writes anything, so a bad override never leaves a record behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict

from ptq import options  # NumPy-only: the names of orders, rounding modes and variants


class Family(str, Enum):
    gaussian = "gaussian"
    low_rank = "low_rank"
    heavy_tailed = "heavy_tailed"
    correlated = "correlated"
    npz = "npz"
    real = "real"  # one MiniLM layer (experiments.studies.minilm.layer_source)


class Mismatch(str, Enum):
    noise = "noise"  # X_hat = X + mismatch * rms(X) * G, G standard normal
    rounding = "rounding"  # X_hat = X rounded to a grid of step mismatch * rms(X)


class Method(str, Enum):
    rtn = "rtn"
    optq = "optq"
    qronos = "qronos"


def _choices(name: str, values: tuple[str, ...]) -> type[Enum]:
    """A str Enum whose members are the library's own names (one definition, in ptq.options)."""
    return Enum(name, {v: v for v in values}, type=str, module=__name__, qualname=name)


Rounding = _choices("Rounding", options.ROUNDINGS)
Variant = _choices("Variant", options.VARIANTS)
OrderName = _choices("OrderName", options.ORDERS)


class GridKind(str, Enum):
    symmetric = "symmetric"
    asymmetric = "asymmetric"


class Per(str, Enum):
    neuron = "neuron"
    layer = "layer"


class Precision(str, Enum):
    float64 = "float64"
    float32 = "float32"


class Size(str, Enum):
    smoke = "smoke"
    default = "default"
    full = "full"


def _require(ok: bool, key: str, expected: str, got: Any) -> None:
    if not ok:
        raise ValueError(f"config `{key}` must be {expected}; got {got!r}")


@dataclass
class DataConfig:
    """Where X (m, N), W (N, n) and the mismatched X_hat come from (`experiments.data`)."""

    family: Family = Family.gaussian
    m: int = 128  # samples (rows of X)
    N: int = 64  # features (columns of X, rows of W)
    n: int = 16  # neurons (columns of W)
    seed: int = 0  # seed of X, W and the mismatch draw
    rank: int = 8  # low_rank: rank of the signal part
    noise: float = 0.05  # low_rank: std of the full-rank noise added to the signal
    tail: float = 1.5  # heavy_tailed: Pareto shape of the column norms (smaller = heavier)
    rho: float = 0.9  # correlated: AR(1) correlation rho^|i-j| between features
    mismatch: float = 0.0  # size of X_hat - X relative to rms(X); 0 means X_hat = X
    mismatch_kind: Mismatch = Mismatch.noise
    path: Optional[str] = None  # npz: .npz with X [, X_hat, W] or .npy with X
    w_path: Optional[str] = None  # npz: optional .npy/.npz holding W (N, n)
    model: Optional[str] = None  # real: read by experiments.studies.minilm.layer_source
    layer: Optional[str] = None  # real: read by experiments.studies.minilm.layer_source
    extra: Dict[str, Any] = field(default_factory=dict)  # real: loader-specific options

    def __post_init__(self):
        for key in ("m", "N", "n"):
            v = getattr(self, key)
            _require(isinstance(v, int) and v >= 1, f"data.{key}", "an integer >= 1", v)
        _require(1 <= self.rank, "data.rank", "an integer >= 1", self.rank)
        _require(self.noise >= 0, "data.noise", "a number >= 0", self.noise)
        _require(self.tail > 0, "data.tail", "a number > 0", self.tail)
        _require(-1 < self.rho < 1, "data.rho", "a number in (-1, 1)", self.rho)
        _require(self.mismatch >= 0, "data.mismatch", "a number >= 0", self.mismatch)
        if self.family == Family.npz:
            _require(self.path is not None, "data.path", "a .npz or .npy file for family npz", None)


@dataclass
class AlgorithmConfig:
    """Which quantizer runs and its keyword arguments (passed as plain values to `ptq`)."""

    name: str = MISSING  # the preset name: rtn, optq, optq_stochastic, qronos, qronos_ls
    method: Method = Method.optq
    rounding: Rounding = Rounding.nearest
    variant: Variant = Variant.paper  # qronos only
    lam: Optional[float] = None  # absolute ridge; None with percdamp None means percdamp 0.01
    percdamp: Optional[float] = None
    order: OrderName = OrderName.natural
    order_seed: int = 0
    block_size: int = 128

    def __post_init__(self):
        if self.lam is not None:
            _require(self.lam >= 0, "algorithm.lam", "a number >= 0 or null", self.lam)
        if self.percdamp is not None:
            _require(self.percdamp >= 0, "algorithm.percdamp", "a number >= 0 or null",
                     self.percdamp)
        _require(
            self.lam is None or self.percdamp is None,
            "algorithm.lam / algorithm.percdamp", "at most one of the two set",
            (self.lam, self.percdamp),
        )
        _require(self.block_size >= 1, "algorithm.block_size", "an integer >= 1", self.block_size)
        _require(
            not (self.method == Method.rtn and self.rounding == Rounding.stochastic),
            "algorithm.rounding", "'nearest' for rtn", self.rounding.value,
        )


@dataclass
class GridConfig:
    """The alphabet: a b-bit grid fitted per neuron (or per layer, or per neuron and group of
    features, `group_size`), or a fixed step."""

    kind: GridKind = GridKind.symmetric
    bits: int = 4
    per: Per = Per.neuron
    mse: bool = False
    finite: bool = True  # False: keep the fitted step, drop the range (infinite alphabet)
    step: Optional[float] = None  # fixed step delta for every neuron (then `bits` is ignored)
    levels: Optional[int] = None  # with `step`: K levels, or null for the infinite alphabet
    # GPTQ's group-wise grids (`ptq.GroupGrid`): a b-bit grid per neuron and group of
    # `group_size` features, fitted inside the algorithm; null (or GPTQ's -1) = per channel.
    group_size: Optional[int] = None
    static_groups: bool = False  # groups fitted up front in original order (GPTQ's flag)

    def __post_init__(self):
        lo = 2 if self.kind == GridKind.symmetric else 1
        _require(
            isinstance(self.bits, int) and lo <= self.bits <= 24,
            "grid.bits", f"an integer in [{lo}, 24] for a {self.kind.value} grid", self.bits,
        )
        if self.step is not None:
            _require(self.step > 0, "grid.step", "a number > 0 or null", self.step)
        if self.levels is not None:
            _require(self.levels >= 1, "grid.levels", "an integer >= 1 or null", self.levels)
        if self.group_size == -1:  # GPTQ's spelling of per channel
            self.group_size = None
        if self.group_size is None:
            return
        _require(self.group_size >= 1, "grid.group_size",
                 "an integer >= 1, or null / -1 for per channel", self.group_size)
        # The group steps are fitted inside the algorithm, on the rows of each group: there
        # is no fixed step to give, no per-layer form, and the fit is the range (finite).
        why = "(the group steps are fitted inside the algorithm)"
        _require(self.step is None, "grid.step", f"null with grid.group_size {why}", self.step)
        _require(self.per == Per.neuron, "grid.per", f"'neuron' with grid.group_size {why}",
                 self.per.value)
        _require(self.finite, "grid.finite",
                 f"true with grid.group_size {why}, so the fitted range cannot be dropped",
                 self.finite)


@dataclass
class Config:
    data: DataConfig = MISSING
    algorithm: AlgorithmConfig = MISSING
    grid: GridConfig = MISSING
    name: str = "adhoc"  # experiment name: records go to {out_dir}
    seed: int = 0  # stochastic rounding key (jax.random.key(seed))
    p: float = 0.05  # failure probability of the high-probability bounds S2, S3, Q3
    precision: Precision = Precision.float64
    guidance: bool = False  # also record theory.lam_guidance for this layer and grid
    out_dir: str = "runs/${size}/${name}"
    size: Size = Size.default  # which entry of `sizes` the sweep uses
    sizes: Dict[str, Dict[str, str]] = field(default_factory=dict)  # size -> sweep params

    def __post_init__(self):
        _require(0 < self.p < 1, "p", "a probability in (0, 1)", self.p)


def register() -> None:
    """Store the schemas; conf/ files extend them through their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="data", name="data_schema", node=DataConfig)
    cs.store(group="algorithm", name="algorithm_schema", node=AlgorithmConfig)
    cs.store(group="grid", name="grid_schema", node=GridConfig)


def validate(cfg: DictConfig) -> Config:
    """Return the typed config, raising ``ValueError`` on any out-of-range value.

    ``OmegaConf.to_object`` instantiates the dataclasses, which runs their ``__post_init__``.
    """
    if "hydra" in cfg:  # a config composed with return_hydra_config=True
        cfg = cfg.copy()
        with open_dict(cfg):
            del cfg["hydra"]
    try:
        return OmegaConf.to_object(cfg)
    except ValueError:
        raise
    except Exception as exc:  # OmegaConf wraps errors raised in __post_init__
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ValueError):
            raise ValueError(str(cause)) from exc
        raise ValueError(f"invalid config: {exc}") from exc
