"""One layer's GPTQ tensors: `pack` codes and group tables into them, `unpack`, `convert`
between the v1 and v2 zero-point conventions, `dequantize`, and the checks of their values."""

from __future__ import annotations

import logging
from typing import Literal, NamedTuple

import numpy as np

from ptq.pack._bits import WORD, check_bits, pack_bits, unpack_bits

FORMATS = ("gptq", "gptq_v2")
Format = Literal["gptq", "gptq_v2"]
FLOAT16_REL = 2.0**-11  # unit roundoff of float16: |fp16(s) - s| / s for normal s

log = logging.getLogger("ptq.pack")  # the public module's name, as before the split


class PackedLayer(NamedTuple):
    """One layer in the GPTQ checkpoint layout (see `ptq.pack`)."""

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
      with the float16 scales (relative change <= 2^-11 per weight, see `ptq.pack`).
    """
    bits = check_bits(bits)
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}; got {format!r}")
    maxq = 2**bits - 1
    codes = integer_array("codes", codes, 2, name)
    N, n = codes.shape
    for arg, size in (("N (codes.shape[0], input features)", N),
                      ("n (codes.shape[1], output neurons)", n)):
        if size % WORD:
            raise ValueError(f"layer {name!r}: {arg} must be a multiple of 32 for the GPTQ "
                             f"layout (AutoGPTQ allocates size // 32 * bits words); got {size}")
    check_range("codes", codes, 0, maxq, name)
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
        check_range("zeros", z, 0, maxq, name)
        stored = z
    G = s.shape[0]
    if g_idx is None:
        if G != 1:
            raise ValueError(f"layer {name!r}: `g_idx` is needed with G = {G} groups; got None")
        g = np.zeros(N, np.int32)
    else:
        g = integer_array("g_idx", g_idx, 1, name)
        if g.shape != (N,):
            raise ValueError(f"layer {name!r}: `g_idx` must have shape ({N},); got {g.shape}")
        check_range("g_idx", g, 0, G - 1, name)
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
    bits = check_bits(layer.bits)
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


def integer_array(arg: str, a, ndim: int, name: str) -> np.ndarray:
    """``a`` as a NumPy integer array of ``ndim`` dimensions (ValueError naming ``arg``)."""
    a = np.asarray(a)
    if a.ndim != ndim or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"layer {name!r}: `{arg}` must be a {ndim}-D integer array; got shape "
                         f"{a.shape}, dtype {a.dtype}")
    return a


def check_range(arg: str, a: np.ndarray, lo: int, hi: int, name: str) -> None:
    """Every entry of ``a`` in ``[lo, hi]`` (ValueError with the first offending index)."""
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
    check_range("zeros", z, 1, 2**bits, name)


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
