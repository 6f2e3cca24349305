"""Checkpoint files: ``model.safetensors`` and AutoGPTQ's ``quantize_config.json``
(`QuantizeConfig`, with GPTQModel's per-layer ``dynamic`` overrides); `save` and `load`."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Mapping, NamedTuple

import numpy as np

from ptq.pack._bits import check_bits
from ptq.pack._layer import FORMATS, PackedLayer, check_packed

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "quantize_config.json"
TENSORS = ("qweight", "qzeros", "scales", "g_idx")


@dataclasses.dataclass(frozen=True)
class QuantizeConfig:
    """The fields of AutoGPTQ's ``quantize_config.json`` (group_size -1 = per channel)."""

    bits: int
    group_size: int = -1
    desc_act: bool = False  # act_order: features processed by decreasing Hessian diagonal
    sym: bool = False
    static_groups: bool = False
    damp_percent: float = 0.01
    true_sequential: bool = True
    quant_method: str = "gptq"
    checkpoint_format: str = "gptq"
    # GPTQModel's per-layer overrides: regex -> {field: value} (see `for_layer`); None: none
    dynamic: Mapping[str, Mapping] | None = None

    def __post_init__(self):
        check_bits(self.bits)
        if self.dynamic is not None:
            _check_dynamic(self.dynamic)
        if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or not (
                self.group_size == -1 or self.group_size >= 1):
            raise ValueError(f"`group_size` must be -1 (per channel) or an integer >= 1; got "
                             f"{self.group_size!r}")
        if self.checkpoint_format not in FORMATS:
            raise ValueError(f"`checkpoint_format` must be one of {FORMATS}; got "
                             f"{self.checkpoint_format!r}")
        if self.quant_method != "gptq":
            raise ValueError(f"`quant_method` must be 'gptq'; got {self.quant_method!r}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.dynamic is None:  # the plain AutoGPTQ file, as before overrides existed
            del d["dynamic"]
        else:
            d["dynamic"] = {k: dict(v) for k, v in self.dynamic.items()}
        return d

    def for_layer(self, name: str) -> "QuantizeConfig | None":
        """The config that applies to layer ``name`` under ``dynamic`` (GPTQModel's rules).

        Rules are tried in order: a key ``"-:<regex>"`` that matches excludes the layer (None:
        it is not quantized); any other key, ``"+:<regex>"`` or ``"<regex>"``, that matches
        gives the layer this config with the rule's fields (``bits``, ``group_size``, ``sym``,
        ``desc_act``) replaced; the first match wins, and no match leaves the config as is.
        Matching is `re.match` (anchored at the start of the name, not at its end).
        """
        for key, fields in (self.dynamic or {}).items():
            if key.startswith("-:"):
                if re.match(key[2:], name):
                    return None
            elif re.match(key.removeprefix("+:"), name):
                return dataclasses.replace(self, dynamic=None, **fields)
        return dataclasses.replace(self, dynamic=None)

    @classmethod
    def from_dict(cls, d: Mapping) -> "QuantizeConfig":
        """From a parsed ``quantize_config.json``; keys other than the fields are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        if "bits" not in d:
            raise ValueError(f"{CONFIG_FILE} must have 'bits'; got keys {sorted(d)}")
        return cls(**{k: v for k, v in d.items() if k in names})


class Checkpoint(NamedTuple):
    layers: dict  # name -> PackedLayer
    tensors: dict  # every other tensor of the file, name -> np.ndarray, as saved
    config: QuantizeConfig


def save(directory, layers: Mapping[str, PackedLayer], config: QuantizeConfig, *,
         tensors: Mapping[str, np.ndarray] | None = None) -> Path:
    """Write ``<directory>/model.safetensors`` and ``quantize_config.json``; returns the folder.

    Args:
      layers: layer name (e.g. "model.layers.0.self_attn.q_proj") -> `PackedLayer`; stored as
        ``<name>.qweight``, ``.qzeros``, ``.scales``, ``.g_idx``.
      config: `QuantizeConfig`; every layer must have its bits, its checkpoint_format and, for
        a group_size g, G = ceil(N / g) groups (1 for per channel).
      tensors: every other tensor (embeddings, norms, biases), written as given.
    """
    from safetensors.numpy import save_file

    if not isinstance(config, QuantizeConfig):
        raise ValueError(f"`config` must be a QuantizeConfig; got {type(config).__name__}")
    out: dict[str, np.ndarray] = {}
    for name, layer in layers.items():
        check_packed(layer, name)
        c = config.for_layer(name)
        if c is None:
            raise ValueError(f"layer {name!r} is packed but `config.dynamic` excludes it")
        N, _ = layer.shape
        G = 1 if c.group_size == -1 else -(-N // c.group_size)
        if (layer.bits, layer.format, layer.scales.shape[0]) != (
                c.bits, c.checkpoint_format, G):
            raise ValueError(
                f"layer {name!r}: has bits {layer.bits}, format {layer.format!r}, "
                f"{layer.scales.shape[0]} groups; the config needs bits {c.bits}, format "
                f"{c.checkpoint_format!r}, {G} groups (group_size {c.group_size})")
        out.update({f"{name}.{t}": np.ascontiguousarray(getattr(layer, t)) for t in TENSORS})
    for key, value in (tensors or {}).items():
        if key in out:
            raise ValueError(f"`tensors` key {key!r} collides with a packed layer's tensor")
        out[key] = np.ascontiguousarray(value)
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(out, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return folder


def load(directory) -> Checkpoint:
    """Read a folder written by `save` (or any GPTQ v1 / v2 checkpoint with these names)."""
    from safetensors.numpy import load_file

    folder = Path(directory)
    for f in (WEIGHTS_FILE, CONFIG_FILE):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{folder / f} is missing: `directory` must hold "
                                    f"{WEIGHTS_FILE} and {CONFIG_FILE}")
    config = QuantizeConfig.from_dict(json.loads((folder / CONFIG_FILE).read_text()))
    flat = load_file(str(folder / WEIGHTS_FILE))
    names = [k[: -len(".qweight")] for k in flat if k.endswith(".qweight")]
    layers = {}
    for name in names:
        missing = [t for t in TENSORS if f"{name}.{t}" not in flat]
        if missing:
            raise ValueError(f"layer {name!r}: {folder / WEIGHTS_FILE} lacks {missing}")
        c = config.for_layer(name)
        if c is None:
            raise ValueError(f"layer {name!r}: {folder / WEIGHTS_FILE} holds it packed but the "
                             f"config's `dynamic` excludes it")
        layer = PackedLayer(*(flat.pop(f"{name}.{t}") for t in TENSORS), c.bits,
                            c.checkpoint_format)
        check_packed(layer, name)
        layers[name] = layer
    return Checkpoint(layers, flat, config)


DYNAMIC_FIELDS = ("bits", "group_size", "sym", "desc_act")


def _check_dynamic(dynamic) -> None:
    """Each rule: a string regex (optionally ``+:`` / ``-:``) -> a mapping of override fields."""
    if not isinstance(dynamic, Mapping):
        raise ValueError(f"`dynamic` must be a mapping regex -> overrides; got "
                         f"{type(dynamic).__name__}")
    for key, fields in dynamic.items():
        if not isinstance(key, str):
            raise ValueError(f"`dynamic` keys must be regex strings; got {key!r}")
        try:
            re.compile(key[2:] if key.startswith(("+:", "-:")) else key)
        except re.error as err:
            raise ValueError(f"`dynamic` key {key!r} is not a regular expression: {err}") from None
        if not isinstance(fields, Mapping) or set(fields) - set(DYNAMIC_FIELDS):
            raise ValueError(f"`dynamic[{key!r}]` must be a mapping with keys among "
                             f"{DYNAMIC_FIELDS}; got {fields!r}")
        if "bits" in fields:
            check_bits(fields["bits"])
