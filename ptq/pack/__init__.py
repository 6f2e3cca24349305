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

The code, one responsibility a module: `ptq.pack._bits` (the bit stream), `._layer` (one
layer's tensors and their checks), `._grids` (from a `ptq.Grid` and its codes), `._files`
(`QuantizeConfig`, `save`, `load`); every public name is imported from here.
"""

from __future__ import annotations

from ptq.pack._bits import BITS, WORD, pack_bits, unpack_bits
from ptq.pack._files import (
    CONFIG_FILE,
    DYNAMIC_FIELDS,
    TENSORS,
    WEIGHTS_FILE,
    Checkpoint,
    QuantizeConfig,
    load,
    save,
)
from ptq.pack._grids import from_grid, grid_bits, group_index, group_table, signed_to_unsigned
from ptq.pack._layer import (
    FLOAT16_REL,
    FORMATS,
    Format,
    PackedLayer,
    Unpacked,
    check_packed,
    convert,
    dequantize,
    pack,
    unpack,
)

__all__ = [
    "BITS", "CONFIG_FILE", "DYNAMIC_FIELDS", "FLOAT16_REL", "FORMATS", "TENSORS", "WEIGHTS_FILE",
    "WORD", "Checkpoint", "Format", "PackedLayer", "QuantizeConfig", "Unpacked", "check_packed",
    "convert", "dequantize", "from_grid", "grid_bits", "group_index", "group_table", "load",
    "pack", "pack_bits", "save", "signed_to_unsigned", "unpack", "unpack_bits",
]
