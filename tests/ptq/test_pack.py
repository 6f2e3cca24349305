"""ptq.pack: GPTQ v1 packing against an independent unpacker, files, grids and errors.

The reference unpacker below is written from the format description (AutoGPTQ's
``qlinear_cuda_old.py`` / GPTQModel's ``pack_original``): along the packed axis, code k of a
b-bit layer is stream bits ``b k .. b k + b - 1`` and word r holds stream bits ``32 r ..
32 r + 31``, bit 0 least significant. It reads one bit at a time with Python integers, so it
shares nothing with the vectorised shifts of `ptq.pack`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import NamedTuple

import numpy as np
import pytest

import ptq
from ptq import pack as pk

# A weight dequantized with float16 scales differs from the float32 one by the scale's relative
# rounding, at most 2^-11 (float16's unit roundoff, scales in its normal range), plus two
# float32 roundings of the products (2^-24 each): the tolerance is that sum.
REL_TOL = 2.0**-11 + 2.0**-23


def ref_read(words, bits: int, count: int) -> list[int]:
    """``count`` b-bit codes from one column of words, bit by bit."""
    words = [int(w) & 0xFFFFFFFF for w in words]
    out = []
    for k in range(count):
        v = 0
        for b in range(bits):
            s = bits * k + b
            v |= ((words[s // 32] >> (s % 32)) & 1) << b
        out.append(v)
    return out


def ref_unpack(layer: pk.PackedLayer):
    """Codes (N, n), zero points (G, n) of a v1 layer (stored zero - 1, so +1 back)."""
    N, n = layer.shape
    G = layer.scales.shape[0]
    codes = np.array([ref_read(layer.qweight[:, i], layer.bits, N) for i in range(n)]).T
    stored = np.array([ref_read(layer.qzeros[g], layer.bits, n) for g in range(G)])
    return codes, stored + 1


def random_layer(rng, N, n, G, bits):
    codes = rng.integers(0, 2**bits, (N, n))
    scales = np.exp(rng.uniform(np.log(1e-4), np.log(1e2), (G, n)))  # float16 normal range
    zeros = rng.integers(1, 2**bits + 1, (G, n))  # what v1 stores: 1 .. 2^b
    g_idx = rng.permutation(np.arange(N) % G) if G > 1 else None  # every group has features
    return codes, scales, zeros, g_idx


CASES = [(bits, N, n, G) for bits in pk.BITS for (N, n, G) in
         [(32, 32, 1), (64, 96, 1), (96, 64, 3), (128, 32, 4)]]


@pytest.mark.parametrize("bits,N,n,G", CASES)
def test_round_trip_against_independent_unpacker(bits, N, n, G):
    rng = np.random.default_rng(bits * 1000 + N + n + G)
    codes, scales, zeros, g_idx = random_layer(rng, N, n, G, bits)
    layer = pk.pack(codes, scales, zeros, g_idx, bits=bits)
    assert layer.qweight.dtype == np.int32 and layer.qweight.shape == (N * bits // 32, n)
    assert layer.qzeros.dtype == np.int32 and layer.qzeros.shape == (G, n * bits // 32)
    assert layer.scales.dtype == np.float16 and layer.scales.shape == (G, n)
    assert layer.g_idx.dtype == np.int32 and layer.g_idx.shape == (N,)
    ref_codes, ref_zeros = ref_unpack(layer)
    np.testing.assert_array_equal(ref_codes, codes)
    np.testing.assert_array_equal(ref_zeros, zeros)
    u = pk.unpack(layer)
    np.testing.assert_array_equal(u.codes, codes)
    np.testing.assert_array_equal(u.zeros, zeros)
    np.testing.assert_array_equal(u.g_idx, np.zeros(N) if g_idx is None else g_idx)
    # dequantized == float64 truth up to the float16 rounding of the scales
    g = u.g_idx
    truth = scales[g] * (codes - zeros[g])
    W_hat = pk.dequantize(layer)
    nz = truth != 0
    rel = np.abs(W_hat[nz] - truth[nz]) / np.abs(truth[nz])
    assert rel.max() <= REL_TOL
    assert np.all(W_hat[~nz] == 0)


def test_float16_rounding_measured():
    """The measured relative change of a scale is float16's unit roundoff, not less."""
    s = np.exp(np.random.default_rng(0).uniform(np.log(2.0**-14), np.log(6e4), 200_000))
    rel = np.abs(s.astype(np.float16).astype(np.float64) - s) / s
    assert 0.99 * pk.FLOAT16_REL < rel.max() <= pk.FLOAT16_REL


def test_layout_as_published():
    """Literal words: 4-bit codes 0..7 are 0x76543210; 8-bit four per word; 2-bit sixteen;
    3-bit code 10 straddles words 0/1 (bits 30-31, then bit 0) and code 21 words 1/2."""
    col = lambda v: np.asarray(v)[:, None]  # noqa: E731
    assert pk.pack_bits(col(np.arange(8)), 4)[0, 0] == 0x76543210
    assert pk.pack_bits(col([1, 2, 3, 255]), 8)[0, 0] == np.uint32(0xFF030201).view(np.int32)
    assert pk.pack_bits(col([3] + [0] * 15), 2)[0, 0] == 3
    assert pk.pack_bits(col([0] * 15 + [3]), 2)[0, 0] == np.uint32(3 << 30).view(np.int32)
    c = np.zeros(32, int)
    c[10] = 0b101  # low 2 bits 01 -> word 0 bits 30-31; high bit 1 -> word 1 bit 0
    c[21] = 0b110  # low bit 0 -> word 1 bit 31; high 2 bits 11 -> word 2 bits 0-1
    c[0], c[11], c[22] = 7, 7, 7  # first codes of each word: bits 0-2, 1-3, 2-4
    w = pk.pack_bits(col(c), 3)[:, 0].view(np.uint32)
    assert w[0] == (1 << 30) | 0b111
    assert w[1] == 1 | (0b111 << 1)
    assert w[2] == 0b11 | (0b111 << 2)


def test_v1_zero_minus_one_stored():
    """qzeros holds zero - 1: zero points 1 (stored 0) and 2^b (stored 2^b - 1) both fit."""
    rng = np.random.default_rng(1)
    codes = rng.integers(0, 16, (32, 32))
    zeros = np.where(np.arange(32) % 2 == 0, 1, 16)[None]
    layer = pk.pack(codes, np.ones((1, 32)), zeros, bits=4)
    assert ref_read(layer.qzeros[0], 4, 32) == [0, 15] * 16
    np.testing.assert_array_equal(pk.unpack(layer).zeros, zeros)


def test_zero_point_zero_is_refused_in_v1_and_stored_in_v2():
    rng = np.random.default_rng(2)
    codes = rng.integers(0, 16, (64, 32))
    zeros = rng.integers(1, 16, (2, 32))
    zeros[1, 5] = 0
    g_idx = np.arange(64) // 32
    with pytest.raises(ValueError, match=r"'blk.q': group 1, neuron 5 has zero point 0.*2\^4"):
        pk.pack(codes, np.ones((2, 32)), zeros, g_idx, bits=4, name="blk.q")
    layer = pk.pack(codes, np.ones((2, 32)), zeros, g_idx, bits=4, format="gptq_v2")
    assert ref_read(layer.qzeros[1], 4, 32) == list(zeros[1])  # v2: stored as they are
    np.testing.assert_array_equal(pk.unpack(layer).zeros, zeros)


def test_convert_between_v1_and_v2():
    codes, scales, zeros, g_idx = random_layer(np.random.default_rng(7), 64, 32, 2, 3)
    zeros = np.minimum(zeros, 7)  # v2 stores 0 .. 2^b - 1
    v1 = pk.pack(codes, scales, zeros, g_idx, bits=3)
    v2 = pk.convert(v1, "gptq_v2")
    assert v2.format == "gptq_v2" and not np.array_equal(v2.qzeros, v1.qzeros)
    np.testing.assert_array_equal(v2.qweight, v1.qweight)
    back = pk.convert(v2, "gptq")
    for field in pk.TENSORS:
        np.testing.assert_array_equal(getattr(back, field), getattr(v1, field))
    zeros[0, 3] = 0
    with pytest.raises(ValueError, match="'q': group 0, neuron 3 has zero point 0"):
        pk.convert(pk.pack(codes, scales, zeros, g_idx, bits=3, format="gptq_v2"), "gptq",
                   name="q")


# ---------------------------------------------------------------------------------- grids
class FakeGrid(NamedTuple):  # what from_grid reads of a ptq.Grid (duck-typed, NumPy)
    step: np.ndarray
    zero: np.ndarray
    qmin: float
    qmax: float


@pytest.mark.parametrize("bits", pk.BITS)
def test_symmetric_codes_map_to_gptq_sym(bits):
    """k in [-K, K] with zero 0 -> codes k + 2^(b-1), zero 2^(b-1): the same weights."""
    rng = np.random.default_rng(bits)
    K = 2 ** (bits - 1) - 1
    k = rng.integers(-K, K + 1, (32, 64))
    step = rng.uniform(0.01, 0.1, 64)
    layer = pk.from_grid(k, FakeGrid(step, np.zeros(64), -K, K))
    u = pk.unpack(layer)
    np.testing.assert_array_equal(u.codes, k + 2 ** (bits - 1))
    assert np.all(u.zeros == 2 ** (bits - 1))
    assert pk.grid_bits(FakeGrid(step, np.zeros(64), -K, K)) == (bits, True)
    np.testing.assert_allclose(pk.dequantize(layer), step * k, rtol=REL_TOL, atol=0)


def test_per_feature_group_grid_with_random_g_idx():
    """A group-wise grid as (N, n) per-feature tables (act_order: groups scattered over the
    features) is compressed to (G, n) with g_idx and dequantizes to the same weights."""
    rng = np.random.default_rng(3)
    N, n, G = 96, 32, 3
    g_idx = rng.permutation(np.arange(N) // 32)
    S = rng.uniform(0.01, 0.1, (G, n))
    Z = rng.integers(1, 8, (G, n)).astype(float)
    codes = rng.integers(0, 8, (N, n))
    grid = FakeGrid(S[g_idx], Z[g_idx], 0.0, 7.0)
    layer = pk.from_grid(codes, grid, g_idx=g_idx)
    np.testing.assert_array_equal(layer.scales, S.astype(np.float16))
    np.testing.assert_array_equal(pk.unpack(layer).zeros, Z)
    np.testing.assert_array_equal(layer.g_idx, g_idx)
    np.testing.assert_allclose(pk.dequantize(layer), S[g_idx] * (codes - Z[g_idx]), rtol=REL_TOL)
    bad = S[g_idx].copy()
    bad[np.flatnonzero(g_idx == 2)[1], 0] *= 2
    with pytest.raises(ValueError, match="feature .* is in group 2"):
        pk.from_grid(codes, FakeGrid(bad, Z[g_idx], 0.0, 7.0), g_idx=g_idx)
    with pytest.raises(ValueError, match="needs `g_idx`"):
        pk.from_grid(codes, grid)


def test_optq_result_end_to_end(float32):
    """ptq.optq on a random layer, per-channel asymmetric 4-bit grid: pack, unpack, compare."""
    rng = np.random.default_rng(4)
    N, n = 64, 32
    X = rng.standard_normal((256, N)).astype(np.float32)
    W = rng.standard_normal((N, n)).astype(np.float32)
    grid = ptq.Grid.fit(W, 4, kind="asymmetric")
    res = ptq.optq(X, W, grid)
    layer = pk.from_grid(res.codes, grid, name="layer0")
    assert pk.grid_bits(grid) == (4, False)
    u = pk.unpack(layer)
    np.testing.assert_array_equal(u.codes, np.asarray(res.codes))
    np.testing.assert_array_equal(u.zeros[0], np.asarray(grid.zero))
    Q = np.asarray(res.Q)
    W_hat = pk.dequantize(layer)
    assert W_hat.dtype == np.float32
    nz = Q != 0
    assert np.max(np.abs(W_hat[nz] - Q[nz]) / np.abs(Q[nz])) <= REL_TOL
    assert np.all(W_hat[~nz] == 0)


@pytest.mark.parametrize("static", [False, True])
def test_group_wise_optq_end_to_end(float32, static):
    """Groups of 32 with act_order: the result's realised grid and g_idx pack, unpack to its
    codes and group tables, and dequantize to its Q (runs once ptq has group-wise grids)."""
    if not hasattr(ptq, "GroupGrid"):
        pytest.skip("ptq.GroupGrid (group-wise grids) is not in ptq yet")
    rng = np.random.default_rng(8)
    X = rng.standard_normal((256, 96)).astype(np.float32)
    W = rng.standard_normal((96, 32)).astype(np.float32)
    res = ptq.optq(X, W, ptq.GroupGrid(4, "asymmetric", 32, static=static),
                   order="decreasing_norm")
    layer = pk.from_grid(res.codes, res.grid, g_idx=res.g_idx)
    u = pk.unpack(layer)
    assert layer.scales.shape == (3, 32)
    np.testing.assert_array_equal(u.codes, np.asarray(res.codes))
    np.testing.assert_array_equal(u.zeros, np.asarray(res.zeros))
    np.testing.assert_array_equal(u.g_idx, np.asarray(res.g_idx))
    np.testing.assert_array_equal(layer.scales, np.asarray(res.scales).astype(np.float16))
    Q = np.asarray(res.Q)
    nz = Q != 0
    assert np.max(np.abs(pk.dequantize(layer)[nz] - Q[nz]) / np.abs(Q[nz])) <= REL_TOL


def test_infinite_grid_is_refused():
    with pytest.raises(ValueError, match="infinite alphabet"):
        pk.from_grid(np.zeros((32, 32), int), FakeGrid(np.ones(32), np.zeros(32), -np.inf,
                                                       np.inf))


# ---------------------------------------------------------------------------------- files
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    layers = {}
    for i, (N, n) in enumerate([(64, 32), (32, 96)]):
        codes, scales, zeros, g_idx = random_layer(rng, N, n, N // 32, 4)
        layers[f"model.layers.{i}.mlp.up_proj"] = pk.pack(codes, scales, zeros, g_idx, bits=4)
    tensors = {"model.layers.0.mlp.up_proj.bias": rng.standard_normal(32).astype(np.float16),
               "model.embed_tokens.weight": rng.standard_normal((10, 32)).astype(np.float32)}
    config = pk.QuantizeConfig(bits=4, group_size=32, desc_act=True, sym=False)
    pk.save(tmp_path / "ckpt", layers, config, tensors=tensors)
    meta = json.loads((tmp_path / "ckpt" / "quantize_config.json").read_text())
    assert meta == {"bits": 4, "group_size": 32, "desc_act": True, "sym": False,
                    "static_groups": False, "damp_percent": 0.01, "true_sequential": True,
                    "quant_method": "gptq", "checkpoint_format": "gptq"}
    ck = pk.load(tmp_path / "ckpt")
    assert ck.config == config
    assert set(ck.layers) == set(layers) and set(ck.tensors) == set(tensors)
    for name, layer in layers.items():
        for field in pk.TENSORS:
            a, b = getattr(ck.layers[name], field), getattr(layer, field)
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a, b)
    for key, value in tensors.items():
        assert ck.tensors[key].dtype == value.dtype
        np.testing.assert_array_equal(ck.tensors[key], value)
    from safetensors.numpy import load_file

    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert "model.layers.1.mlp.up_proj.qzeros" in keys


def test_save_checks_config(tmp_path):
    codes, scales, zeros, g_idx = random_layer(np.random.default_rng(6), 64, 32, 2, 4)
    layers = {"a": pk.pack(codes, scales, zeros, g_idx, bits=4)}
    with pytest.raises(ValueError, match=r"'a': has bits 4.*needs bits 8"):
        pk.save(tmp_path, layers, pk.QuantizeConfig(bits=8, group_size=32))
    with pytest.raises(ValueError, match=r"2 groups.*1 groups \(group_size -1\)"):
        pk.save(tmp_path, layers, pk.QuantizeConfig(bits=4))
    with pytest.raises(ValueError, match="collides"):
        pk.save(tmp_path, layers, pk.QuantizeConfig(bits=4, group_size=32),
                tensors={"a.qweight": np.zeros(1)})
    with pytest.raises(FileNotFoundError, match="quantize_config.json"):
        pk.load(tmp_path / "nothing")


def test_dynamic_overrides_round_trip_mixed_bits(tmp_path):
    # a mixed-precision checkpoint: base 3 bits, block 0 at 8, the MLPs at 2 (GPTQModel rules)
    rng = np.random.default_rng(8)
    bits = {"model.layers.0.mlp.up_proj": 8, "model.layers.0.self_attn.q_proj": 8,
            "model.layers.1.mlp.up_proj": 2, "model.layers.1.self_attn.q_proj": 3}
    layers = {}
    for name, b in bits.items():
        codes, scales, zeros, _ = random_layer(rng, 64, 32, 1, b)
        layers[name] = pk.pack(codes, scales, zeros, bits=b)
    dynamic = {r"+:model\.layers\.0\.": {"bits": 8}, r".*mlp": {"bits": 2},
               r"-:lm_head": {}}
    config = pk.QuantizeConfig(bits=3, dynamic=dynamic)
    assert {n: config.for_layer(n).bits for n in bits} == bits  # first match wins
    assert config.for_layer("lm_head") is None
    pk.save(tmp_path / "ckpt", layers, config)
    meta = json.loads((tmp_path / "ckpt" / "quantize_config.json").read_text())
    assert meta["bits"] == 3 and meta["dynamic"] == dynamic
    ck = pk.load(tmp_path / "ckpt")
    assert ck.config == config
    for name, layer in layers.items():
        assert ck.layers[name].bits == bits[name]
        np.testing.assert_array_equal(pk.unpack(ck.layers[name]).codes, pk.unpack(layer).codes)
    # a layer at other bits than its rule says, or packed while excluded, is refused
    with pytest.raises(ValueError, match=r"'model.layers.0.mlp.up_proj': has bits 8.*needs bits 3"):
        pk.save(tmp_path / "bad", layers, pk.QuantizeConfig(bits=3, dynamic={"+:x": {"bits": 8}}))
    with pytest.raises(ValueError, match="excludes it"):
        pk.save(tmp_path / "bad", layers, pk.QuantizeConfig(bits=3, dynamic={"-:model": {}}))


@pytest.mark.parametrize("dynamic, match", [
    ({"+:a": {"bits": 5}}, "`bits` must be one of"),
    ({"+:a": {"scale": 2}}, r"`dynamic\['\+:a'\]` must be a mapping with keys among"),
    ({"+:(": {"bits": 4}}, "is not a regular expression"),
    ([("a", {})], "`dynamic` must be a mapping"),
])
def test_dynamic_errors(dynamic, match):
    with pytest.raises(ValueError, match=match):
        pk.QuantizeConfig(bits=4, dynamic=dynamic)


def test_import_is_numpy_only():
    code = ("import sys, ptq, ptq.pack; ptq.PackedLayer; ptq.pack.QuantizeConfig(bits=4); "
            "assert 'jax' not in sys.modules, 'jax imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,match", [
    (dict(codes=np.zeros((40, 32), int)), r"N \(codes.shape\[0\], input features\) must be a "
                                          r"multiple of 32.*got 40"),
    (dict(codes=np.zeros((32, 48), int), scales=np.ones(48), zeros=np.ones(48)),
     r"n \(codes.shape\[1\], output neurons\) must be a multiple of 32.*got 48"),
    (dict(codes=np.full((32, 32), 16)), r"`codes` must lie in \[0, 15\]; got 16 at index"),
    (dict(codes=np.zeros((32, 32))), "`codes` must be a 2-D integer array"),
    (dict(bits=5), r"`bits` must be one of \(2, 3, 4, 8\); got 5"),
    (dict(scales=np.ones((2, 32)), zeros=np.ones((2, 32))), "`g_idx` is needed with G = 2"),
    (dict(g_idx=np.ones(32, int)), r"`g_idx` must lie in \[0, 0\]"),
    (dict(g_idx=np.zeros(31, int)), r"`g_idx` must have shape \(32,\)"),
    (dict(zeros=np.ones(31)), r"`zeros` must have the shape of `scales` \(1, 32\)"),
    (dict(zeros=np.full(32, 1.5)), "`zeros` must be integer-valued"),
    (dict(zeros=np.full(32, 17)), r"`zeros` must lie in \[1, 16\]"),
    (dict(scales=-np.ones(32)), "`scales` must be finite positive floats"),
    (dict(scales=np.full(32, 1e6)), "not representable in float16"),
    (dict(scales=np.full(32, 1e-9)), "not representable in float16"),
    (dict(scales=np.ones(33)), r"`scales` must have shape \(G, 32\)"),
    (dict(format="awq"), "`format` must be one of"),
])
def test_errors_name_the_argument(kwargs, match):
    args = dict(codes=np.zeros((32, 32), int), scales=np.ones(32), zeros=np.ones(32), g_idx=None,
                bits=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        pk.pack(args.pop("codes"), args.pop("scales"), args.pop("zeros"), args.pop("g_idx"),
                **args)


def test_pack_bits_errors():
    with pytest.raises(ValueError, match=r"`values` must be integers in \[0, 15\]"):
        pk.pack_bits(np.full((8, 1), -1), 4)
    with pytest.raises(ValueError, match="multiple of 32 rows to pack 3-bit"):
        pk.pack_bits(np.zeros((16, 1), int), 3)
    with pytest.raises(ValueError, match="multiple of 3 rows for 3-bit"):
        pk.unpack_bits(np.zeros((2, 1), np.int32), 3)


def test_config_errors():
    with pytest.raises(ValueError, match="`group_size` must be -1"):
        pk.QuantizeConfig(bits=4, group_size=0)
    with pytest.raises(ValueError, match="`bits` must be one of"):
        pk.QuantizeConfig(bits=6)
    with pytest.raises(ValueError, match="`checkpoint_format`"):
        pk.QuantizeConfig(bits=4, checkpoint_format="awq")
