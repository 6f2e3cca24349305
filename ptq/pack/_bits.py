"""The GPTQ bit stream: b-bit codes packed into int32 words, and the bit widths it supports.

Along the packed axis the codes form one little-endian bit stream, code k occupying stream
bits ``b k .. b k + b - 1`` and word r holding stream bits ``32 r .. 32 r + 31`` (the layout
of `ptq.pack`'s docstring).
"""

from __future__ import annotations

import math

import numpy as np

BITS = (2, 3, 4, 8)
WORD = 32  # bits per packed word


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


def check_bits(bits) -> int:
    """``bits`` as an int, one of `BITS` (ValueError naming the argument otherwise)."""
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or bits not in BITS:
        raise ValueError(f"`bits` must be one of {BITS}; got {bits!r}")
    return int(bits)
