"""Packed checkpoints in the GPTQ v1 format (AutoGPTQ / GPTQModel), pure NumPy.

A quantized linear layer ``X @ W`` (W is (N, n), features x neurons: PyTorch's
``nn.Linear.weight`` transposed) is stored as four tensors, b = ``bits`` in {2, 3, 4, 8}::

    qweight  int32 (N b / 32, n)   the codes c[j, i] in [0, 2^b - 1], packed along the features
    qzeros   int32 (G, n b / 32)   the zero points, stored as zero - 1 (v1), packed along neurons
    scales   float16 (G, n)        the step of each group and neuron
    g_idx    int32 (N,)            the group of each input feature

and the layer's weights are ``W_hat[j, i] = scales[g_idx[j], i] * (c[j, i] - zero[g_idx[j], i])``.
Per channel is G = 1 (g_idx all 0); groups of ``group_size`` features have G = ceil(N /
group_size) and, without act_order, ``g_idx[j] = j // group_size``.

Bit layout (as AutoGPTQ's ``QuantLinear.pack`` in ``qlinear_cuda_old.py`` and GPTQModel's
``pack_original`` write it): along the packed axis the codes form one little-endian bit stream,
code k occupying stream bits ``b k .. b k + b - 1`` and word r holding stream bits
``32 r .. 32 r + 31`` (bit 0 = least significant). Hence 4-bit codes of inputs 8r..8r+7 sit in
bits 4j..4j+3 of row r, 8-bit four per word, 2-bit sixteen per word, and 3-bit codes come in
runs of 32 per 3 words with two codes straddling words: in each run, word 0 holds codes 0..9 at
bits 3k and the low 2 bits of code 10 at bits 30-31, word 1 the high bit of code 10 at bit 0,
codes 11..20 at bits 3k+1 and the low bit of code 21 at bit 31, word 2 the high 2 bits of code
21 at bits 0-1 and codes 22..31 at bits 3k+2. Words are written as uint32 and reinterpreted as
int32 (two's complement), as AutoGPTQ's ``astype(np.int32)``.

Decisions, stated:

* N and n must be multiples of 32 (ValueError otherwise). AutoGPTQ allocates ``N // 32 * b``
  rows and ``n // 32 * b`` zero columns, so other sizes do not load there; nothing is padded
  (GPTQModel's padding of in_features is disabled in its kernels).
* The v1 convention ``stored = zero - 1`` (masked to b bits; a v1 loader adds 1 back) stores
  zero points 1..2^b. A zero point 0 -- GPTQ's asymmetric min-max grid, ``zero = round(-min(w,
  0) / scale)``, gives it wherever a group's most negative weight is above -scale/2 (it happens
  in MiniLM at 4 bits per channel) -- would be stored as -1 and read back as 2^b, a shift of
  2^b steps of the whole group (AutoGPTQ's packer, OR-ing the uint32 of -1 into the word, also
  sets every higher zero point of that word to 2^b - 1). So `pack` raises a ValueError naming
  the layer, group and neuron; ``format="gptq_v2"`` (GPTQModel's v2, ``checkpoint_format
  "gptq_v2"``: zero points stored as they are, 0..2^b - 1) stores it, and `convert` moves a
  layer between the two when its zero points allow.
* Symmetric grids of this project have signed codes k in [-K, K], K = 2^(b-1) - 1, zero 0;
  `from_grid` maps them to GPTQ's sym=True convention: codes k + 2^(b-1), zero 2^(b-1).
* Scales are rounded to float16 (round to nearest even): for a scale in float16's normal range
  [2^-14, 65504] the relative change, and so that of every dequantized weight, is at most
  2^-11 = 4.9e-4 (measured: 4.88e-4 at most over 200,000 random scales spanning that range,
  tests/ptq/test_pack.py). A scale that rounds to 0 or to infinity is a ValueError; a subnormal one
  (below 2^-14, relative error up to 2^-24 / scale) is logged as a warning.

Unpacking returns exactly the codes, zero points and g_idx that were packed.

Files (`save` / `load`): one safetensors file, keys ``<layer>.qweight``, ``.qzeros``,
``.scales``, ``.g_idx`` per layer plus any other tensors as given, and ``quantize_config.json``
(bits, group_size, desc_act, sym, static_groups, damp_percent, true_sequential, quant_method
"gptq", checkpoint_format, and ``dynamic`` where layers differ: GPTQModel's per-layer
overrides, `QuantizeConfig.for_layer`, which `save` checks each layer against and `load` reads
each layer's bits from).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
from pathlib import Path
from typing import Literal, Mapping, NamedTuple

import numpy as np

BITS = (2, 3, 4, 8)
WORD = 32  # bits per packed word
FORMATS = ("gptq", "gptq_v2")
Format = Literal["gptq", "gptq_v2"]
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "quantize_config.json"
TENSORS = ("qweight", "qzeros", "scales", "g_idx")
FLOAT16_REL = 2.0**-11  # unit roundoff of float16: |fp16(s) - s| / s for normal s

log = logging.getLogger(__name__)


class PackedLayer(NamedTuple):
    """One layer in the GPTQ checkpoint layout (see the module docstring)."""

    qweight: np.ndarray  # (N bits / 32, n) int32: codes packed along the input features
    qzeros: np.ndarray  # (G, n bits / 32) int32: zero points (v1: zero - 1) packed along n
    scales: np.ndarray  # (G, n) float16
    g_idx: np.ndarray  # (N,) int32: group of each input feature
    bits: int
    format: str = "gptq"

    @property
    def shape(self) -> tuple[int, int]:
        """``(N, n)``: input features, output neurons."""
        return self.g_idx.shape[0], self.scales.shape[1]


class Unpacked(NamedTuple):
    codes: np.ndarray  # (N, n) int32 in [0, 2^bits - 1]
    zeros: np.ndarray  # (G, n) int32 zero points
    scales: np.ndarray  # (G, n) float16
    g_idx: np.ndarray  # (N,) int32


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
        _check_bits(self.bits)
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


# ------------------------------------------------------------------------------- bit streams
def _run(bits: int) -> tuple[int, int]:
    """(values, words) of the shortest run that fills whole words: 32/g values in b/g words."""
    g = math.gcd(bits, WORD)
    return WORD // g, bits // g


def pack_bits(values, bits: int) -> np.ndarray:
    """Pack unsigned ``values`` (L, ...) < 2^bits along axis 0 into (L bits / 32, ...) int32.

    Value k occupies bits ``bits*k .. bits*k + bits - 1`` of the little-endian stream of words;
    L must be a multiple of 32 / gcd(bits, 32).
    """
    v = np.asarray(values)
    per, words = _run(bits)
    if not np.issubdtype(v.dtype, np.integer) or v.size and (v.min() < 0 or v.max() >= 2**bits):
        raise ValueError(f"`values` must be integers in [0, {2**bits - 1}]; got dtype {v.dtype}"
                         + (f", range [{v.min()}, {v.max()}]" if v.size else ""))
    if v.shape[0] % per:
        raise ValueError(f"`values` must have a multiple of {per} rows to pack {bits}-bit "
                         f"codes into whole words; got {v.shape[0]}")
    v = v.astype(np.uint64).reshape((v.shape[0] // per, per) + v.shape[1:])
    out = np.zeros((v.shape[0], words) + v.shape[2:], np.uint64)
    for k in range(per):
        word, off = divmod(bits * k, WORD)
        out[:, word] |= (v[:, k] << np.uint64(off)) & np.uint64(0xFFFFFFFF)
        if off + bits > WORD:  # the code straddles two words (3 bits: codes 10 and 21)
            out[:, word + 1] |= v[:, k] >> np.uint64(WORD - off)
    out = out.reshape((-1,) + v.shape[2:]).astype(np.uint32)
    return out.view(np.int32)


def unpack_bits(words, bits: int) -> np.ndarray:
    """Inverse of `pack_bits`: int32 words (R, ...) -> int32 values (R 32 / bits, ...)."""
    w = np.asarray(words)
    per, nw = _run(bits)
    if w.shape[0] % nw:
        raise ValueError(f"`words` must have a multiple of {nw} rows for {bits}-bit codes; got "
                         f"{w.shape[0]}")
    w = w.astype(np.int32).view(np.uint32).astype(np.uint64)
    w = w.reshape((w.shape[0] // nw, nw) + w.shape[1:])
    mask = np.uint64(2**bits - 1)
    out = np.empty((w.shape[0], per) + w.shape[2:], np.uint64)
    for k in range(per):
        word, off = divmod(bits * k, WORD)
        x = w[:, word] >> np.uint64(off)
        if off + bits > WORD:
            x |= w[:, word + 1] << np.uint64(WORD - off)
        out[:, k] = x & mask
    return out.reshape((-1,) + w.shape[2:]).astype(np.int32)


# ------------------------------------------------------------------------------- layers
def pack(codes, scales, zeros, g_idx=None, *, bits: int, name: str = "layer",
         format: Format = "gptq") -> PackedLayer:
    """Pack one layer's integer codes and group tables into the GPTQ tensors.

    Args:
      codes: (N, n) integers in [0, 2^bits - 1]; N (input features) and n (output neurons)
        multiples of 32.
      scales: (G, n) positive steps (or (n,) for per channel, G = 1); rounded to float16.
      zeros: (G, n) (or (n,)) integer-valued zero points: 1..2^bits for "gptq" (v1, stored
        as zero - 1), 0..2^bits - 1 for "gptq_v2".
      g_idx: (N,) group of each input feature in [0, G); None means all 0 and needs G = 1.
      bits: 2, 3, 4 or 8. name: the layer's name, used in error messages.
      format: "gptq" (v1, AutoGPTQ) or "gptq_v2" (GPTQModel, zero points stored as they are).

    Returns:
      `PackedLayer`. ``dequantize(pack(...))`` is ``scales[g_idx] * (codes - zeros[g_idx])``
      with the float16 scales (relative change <= 2^-11 per weight, see the module docstring).
    """
    bits = _check_bits(bits)
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}; got {format!r}")
    maxq = 2**bits - 1
    codes = _integers("codes", codes, 2, name)
    N, n = codes.shape
    for arg, size in (("N (codes.shape[0], input features)", N),
                      ("n (codes.shape[1], output neurons)", n)):
        if size % WORD:
            raise ValueError(f"layer {name!r}: {arg} must be a multiple of 32 for the GPTQ "
                             f"layout (AutoGPTQ allocates size // 32 * bits words); got {size}")
    _in_range("codes", codes, 0, maxq, name)
    s = np.asarray(scales)
    s = s[None] if s.ndim == 1 else s
    if s.ndim != 2 or s.shape[1] != n or s.shape[0] < 1:
        raise ValueError(f"layer {name!r}: `scales` must have shape (G, {n}) or ({n},); got "
                         f"{np.shape(scales)}")
    if not np.issubdtype(s.dtype, np.floating) or not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError(f"layer {name!r}: `scales` must be finite positive floats; got dtype "
                         f"{s.dtype}, minimum {np.min(s)!r}")
    s16 = _to_float16(s, name)
    z = np.asarray(zeros)
    z = z[None] if z.ndim == 1 else z
    if z.shape != s.shape:
        raise ValueError(f"layer {name!r}: `zeros` must have the shape of `scales` {s.shape}; "
                         f"got {np.shape(zeros)}")
    if not np.all(z == np.round(z)):
        raise ValueError(f"layer {name!r}: `zeros` must be integer-valued (codes)")
    z = z.astype(np.int64)
    if format == "gptq":
        _check_v1_zeros(z, bits, name)
        stored = z - 1
    else:
        _in_range("zeros", z, 0, maxq, name)
        stored = z
    G = s.shape[0]
    if g_idx is None:
        if G != 1:
            raise ValueError(f"layer {name!r}: `g_idx` is needed with G = {G} groups; got None")
        g = np.zeros(N, np.int32)
    else:
        g = _integers("g_idx", g_idx, 1, name)
        if g.shape != (N,):
            raise ValueError(f"layer {name!r}: `g_idx` must have shape ({N},); got {g.shape}")
        _in_range("g_idx", g, 0, G - 1, name)
        g = g.astype(np.int32)
    return PackedLayer(pack_bits(codes, bits), pack_bits(stored.T, bits).T.copy(), s16, g, bits,
                       format)


def unpack(layer: PackedLayer) -> Unpacked:
    """The codes (N, n), zero points (G, n), float16 scales and g_idx of a packed layer."""
    check_packed(layer)
    codes = unpack_bits(layer.qweight, layer.bits)
    stored = unpack_bits(layer.qzeros.T, layer.bits).T
    zeros = stored + 1 if layer.format == "gptq" else stored
    return Unpacked(codes, np.ascontiguousarray(zeros, np.int32), layer.scales, layer.g_idx)


def convert(layer: PackedLayer, format: Format, *, name: str = "layer") -> PackedLayer:
    """The same layer with its zero points stored as ``format`` ("gptq" v1 or "gptq_v2")
    requires; to v1 it raises as `pack` does when a zero point is 0."""
    if layer.format == format:
        return layer
    u = unpack(layer)
    return pack(u.codes, u.scales, u.zeros, u.g_idx, bits=layer.bits, name=name, format=format)


def dequantize(layer: PackedLayer | Unpacked, dtype=np.float32) -> np.ndarray:
    """``W_hat = scales[g_idx] * (codes - zeros[g_idx])``, (N, n), computed in ``dtype``.

    In float32 the float16 scale and the integer difference are exact, so each weight is one
    rounded product: ``fp16(scale) * (c - z)`` to float32 precision.
    """
    u = unpack(layer) if isinstance(layer, PackedLayer) else layer
    s = u.scales.astype(dtype)[u.g_idx]
    return s * (u.codes - u.zeros[u.g_idx]).astype(dtype)


def check_packed(layer: PackedLayer, name: str = "layer") -> None:
    """Shapes and dtypes of a packed layer agree with each other (ValueError otherwise)."""
    bits = _check_bits(layer.bits)
    if layer.format not in FORMATS:
        raise ValueError(f"layer {name!r}: format must be one of {FORMATS}; got {layer.format!r}")
    expect = {"qweight": np.int32, "qzeros": np.int32, "scales": np.float16, "g_idx": np.int32}
    for field, dtype in expect.items():
        a = getattr(layer, field)
        if not isinstance(a, np.ndarray) or a.dtype != dtype:
            raise ValueError(f"layer {name!r}: `{field}` must be a {np.dtype(dtype).name} NumPy "
                             f"array; got {type(a).__name__} {getattr(a, 'dtype', '')}")
    N, (G, n) = layer.g_idx.shape[0], layer.scales.shape
    shapes = {"qweight": (N * bits // WORD, n), "qzeros": (G, n * bits // WORD),
              "g_idx": (N,)}
    for field, shape in shapes.items():
        if getattr(layer, field).shape != shape or N % WORD or n % WORD:
            raise ValueError(
                f"layer {name!r}: inconsistent shapes: N = {N} (g_idx), G, n = {G}, {n} "
                f"(scales) need {field} {shape} with N, n multiples of 32; got "
                f"{getattr(layer, field).shape}")


# ------------------------------------------------------------------------------- from grids
def grid_bits(grid) -> tuple[int, bool]:
    """``(bits, sym)`` of a finite `ptq.Grid` (read through NumPy; JAX is not imported).

    Asymmetric: codes [0, 2^b - 1]. Symmetric: zero 0 and codes [-K, K], K = 2^(b-1) - 1.
    """
    qmin, qmax = float(np.asarray(grid.qmin)), float(np.asarray(grid.qmax))
    if not (math.isfinite(qmin) and math.isfinite(qmax)):
        raise ValueError("`grid` is an infinite alphabet (no code range): only finite grids "
                         f"pack; got qmin {qmin}, qmax {qmax}")
    if qmin == 0 and math.log2(qmax + 1).is_integer():
        return _check_bits(int(math.log2(qmax + 1))), False
    if qmin == -qmax and np.all(np.asarray(grid.zero) == 0) and math.log2(qmax + 1).is_integer():
        return _check_bits(int(math.log2(qmax + 1)) + 1), True
    raise ValueError("`grid` must be GPTQ's asymmetric grid (codes [0, 2^b - 1]) or a b-bit "
                     f"symmetric one (zero 0, codes [-(2^(b-1) - 1), 2^(b-1) - 1]); got qmin "
                     f"{qmin}, qmax {qmax}")


def signed_to_unsigned(k, bits: int):
    """Symmetric codes k in [-K, K] (zero 0) -> GPTQ sym=True codes ``k + 2^(b-1)``, zero
    ``2^(b-1)`` (the same values: ``delta (k + 2^(b-1) - 2^(b-1)) = delta k``)."""
    half = 2 ** (_check_bits(bits) - 1)
    return np.asarray(k).astype(np.int64) + half, half


def from_grid(codes, grid, *, g_idx=None, name: str = "layer",
              format: Format = "gptq") -> PackedLayer:
    """Pack ``codes`` (a ptq result's ``codes``, ``Q = step * (codes - zero)``) on ``grid``.

    ``grid.step`` / ``grid.zero`` may be scalars (per layer), (n,) (per neuron, G = 1), (G, n)
    group tables with ``g_idx`` (N,), or (N, n) per-feature tables (each feature's row is its
    group's step, as a group-wise `ptq.Grid`), compressed with `group_table` and ``g_idx``.
    A symmetric grid is shifted to GPTQ's sym=True convention (`signed_to_unsigned`).
    """
    bits, sym = grid_bits(grid)
    codes = _integers("codes", codes, 2, name)
    N, n = codes.shape
    step, zero = np.broadcast_arrays(np.asarray(grid.step), np.asarray(grid.zero))
    if step.ndim <= 1:
        step, zero = (np.broadcast_to(a, (n,))[None] for a in (step, zero))
    elif step.shape == (N, n):  # per feature: one row per input feature, compress to groups
        if g_idx is None:
            raise ValueError(f"layer {name!r}: a per-feature grid ({N}, {n}) needs `g_idx`, "
                             "the group of each input feature; got None")
        step, zero = group_table(step, zero, g_idx, name=name)
    if sym:
        codes, half = signed_to_unsigned(codes, bits)
        zero = zero + half
    return pack(codes, step, zero, g_idx, bits=bits, name=name, format=format)


def group_table(step, zero, g_idx, *, name: str = "layer") -> tuple[np.ndarray, np.ndarray]:
    """Per-feature tables (N, n) -> group tables (G, n), G = max(g_idx) + 1.

    Every feature of group g must carry the same step and zero row (ValueError otherwise,
    naming the group), and every group must have a feature.
    """
    step, zero = np.asarray(step), np.asarray(zero)
    g = _integers("g_idx", g_idx, 1, name)
    if step.ndim != 2 or zero.shape != step.shape or g.shape != step.shape[:1]:
        raise ValueError(f"layer {name!r}: `step`, `zero` must be (N, n) and `g_idx` (N,); got "
                         f"{step.shape}, {zero.shape}, {g.shape}")
    _in_range("g_idx", g, 0, step.shape[0] - 1, name)
    G = int(g.max()) + 1
    first = np.full(G, -1)
    first[g[::-1]] = np.arange(len(g))[::-1]  # the first feature of each group
    empty = np.flatnonzero(first < 0)
    if empty.size:
        raise ValueError(f"layer {name!r}: groups {empty[:5].tolist()} have no feature in "
                         "`g_idx`")
    S, Z = step[first], zero[first]
    bad = np.flatnonzero(np.any((step != S[g]) | (zero != Z[g]), axis=1))
    if bad.size:
        j = int(bad[0])
        raise ValueError(f"layer {name!r}: feature {j} is in group {int(g[j])} but its step or "
                         "zero differs from the group's first feature")
    return S, Z


def group_index(N: int, group_size: int | None) -> np.ndarray:
    """GPTQ's g_idx without act_order (or with static groups): ``j // group_size``."""
    if group_size is None or group_size == -1:
        return np.zeros(N, np.int32)
    return (np.arange(N) // group_size).astype(np.int32)


# ------------------------------------------------------------------------------- files
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


# ------------------------------------------------------------------------------- checks
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
            _check_bits(fields["bits"])


def _check_bits(bits) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in BITS:
        raise ValueError(f"`bits` must be one of {BITS}; got {bits!r}")
    return int(bits)


def _integers(arg: str, a, ndim: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"layer {name!r}: `{arg}` must be a {ndim}-D integer array; got shape "
                         f"{a.shape}, dtype {a.dtype}")
    return a


def _in_range(arg: str, a: np.ndarray, lo: int, hi: int, name: str) -> None:
    bad = np.argwhere((a < lo) | (a > hi))
    if bad.size:
        at = tuple(int(i) for i in bad[0])
        raise ValueError(f"layer {name!r}: `{arg}` must lie in [{lo}, {hi}]; got {a[at]} at "
                         f"index {at} ({len(bad)} entries outside)")


def _check_v1_zeros(z: np.ndarray, bits: int, name: str) -> None:
    zero0 = np.argwhere(z == 0)
    if zero0.size:
        g, i = (int(v) for v in zero0[0])
        raise ValueError(
            f"layer {name!r}: group {g}, neuron {i} has zero point 0 ({len(zero0)} such "
            f"entries; GPTQ's min-max grid gives it where the group's most negative weight is "
            f"above -scale/2). The GPTQ v1 format stores zero - 1 = -1, which a v1 loader "
            f"reads back as 2^{bits} = {2**bits} (mask, then +1), shifting the group by "
            f"{2**bits} steps; pack with "
            "format='gptq_v2' (zero points stored as they are) or use a symmetric grid")
    _in_range("zeros", z, 1, 2**bits, name)


def _to_float16(s: np.ndarray, name: str) -> np.ndarray:
    with np.errstate(over="ignore", under="ignore"):
        s16 = s.astype(np.float16)
    bad = ~np.isfinite(s16) | (s16 <= 0)
    if bad.any():
        at = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(f"layer {name!r}: scale {s[at]!r} at {at} is not representable in "
                         "float16 (it rounds to 0 or infinity; float16 spans 6e-8 .. 65504)")
    small = s16 < np.float16(2.0**-14)
    if small.any():
        log.warning("layer %r: %d scales below 2^-14 are float16 subnormals (relative error up "
                    "to %.2g)", name, int(small.sum()), float(2.0**-24 / s[small].min()))
    return s16


__all__ = [
    "BITS", "CONFIG_FILE", "FLOAT16_REL", "FORMATS", "WEIGHTS_FILE", "Checkpoint",
    "PackedLayer", "QuantizeConfig", "Unpacked", "check_packed", "convert", "dequantize",
    "from_grid",
    "grid_bits", "group_index", "group_table", "load", "pack", "pack_bits", "save",
    "signed_to_unsigned", "unpack", "unpack_bits",
]
