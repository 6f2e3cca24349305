"""The BERT encoder of all-MiniLM-L6-v2 in JAX, cut at the inputs of its 36 linear layers.

Forward pass (Devlin et al., arXiv:1810.04805; the Hugging Face ``BertModel`` in eval mode,
then sentence-transformers' mean pooling and Normalize), for token ids ``ids`` (B, L) with
attention mask ``mask`` (B, L) (1 on tokens, 0 on padding):

    h_0 = LN(E_word[ids] + E_pos[0..L-1] + E_type[0])
    per block l = 0..5, with h = h_l:
      X_qkv = h                                    (input of query, key, value)
      Q, K, V = h W_q + b_q, h W_k + b_k, h W_v + b_v, split into 12 heads of 32
      A = softmax(Q K^T / sqrt(32) + bias),  bias = finfo.min on padded keys
      X_attn_out = A V  (heads concatenated)       (input of attention.output.dense)
      X_intermediate = h1 = LN(X_attn_out W_o + b_o + h)
      X_output = a = gelu(h1 W_i + b_i)            (exact erf GELU)
      h_{l+1} = LN(a W_2 + b_2 + h1)
    e = sum_i mask_i h_6,i / sum_i mask_i;   e / max(||e||, 1e-12) if Normalize

``LN(x) = gamma * (x - mean) / sqrt(var + eps) + beta`` over the last axis (biased variance).
Dropout is the identity (eval mode). Weights are ``W`` (N, n), transposed from PyTorch.

Each block is written as four stages (`attention`, `attn_residual`, `ffn_act`,
`ffn_residual`) so that a caller can quantize the layers of a block one after another and
recompute only what follows. The arithmetic runs in the dtype of the parameters (float32),
whatever JAX's x64 mode, so the activations are those a float32 deployment computes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.models.minilm.weights import KINDS, Config


class Trace(NamedTuple):
    """What `trace` returns; padded arrays, rows (B, L)."""

    hidden: list  # 7 arrays (B, L, D): h_0 (embeddings) .. h_6 (last hidden state)
    inputs: list  # per block, a dict kind -> (B, L, N) input of that linear layer
    embedding: jax.Array  # (B, D) sentence embedding (pooled, normalized if the model does)


def layer_norm(x, ln, eps):
    gamma, beta = ln
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mu), axis=-1, keepdims=True)
    return gamma * (x - mu) * jax.lax.rsqrt(var + eps) + beta


def embed(emb, ids, eps):
    """``h_0``: word + absolute position + token type 0 embeddings, then layer norm."""
    L = ids.shape[1]
    x = emb["word"][ids] + emb["position"][:L][None] + emb["token_type"][0][None, None]
    return layer_norm(x, emb["ln"], eps)


def attention(h, mask, q, k, v, heads: int):
    """The context ``A V`` (B, L, D): the input of attention.output.dense.

    ``q``, ``k``, ``v`` are ``(W (D, D), b (D,))``. Padded keys get the bias
    ``finfo(dtype).min`` (as transformers' eager attention), so they carry zero weight.
    """
    B, L, D = h.shape
    dh = D // heads

    def split(wb):
        W, b = wb
        return (h @ W + b).reshape(B, L, heads, dh)

    Q, K, V = split(q), split(k), split(v)
    scores = jnp.einsum("bqhd,bkhd->bhqk", Q, K) / jnp.sqrt(jnp.asarray(dh, h.dtype))
    bias = jnp.where(mask[:, None, None, :] > 0, 0.0, jnp.finfo(h.dtype).min).astype(h.dtype)
    probs = jax.nn.softmax(scores + bias, axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", probs, V).reshape(B, L, D)


def attn_residual(ctx, h, out, ln, eps):
    """``h1 = LN(ctx W_o + b_o + h)``: the input of intermediate.dense."""
    W, b = out
    return layer_norm(ctx @ W + b + h, ln, eps)


def ffn_act(h1, inter):
    """``a = gelu(h1 W_i + b_i)`` with the exact (erf) GELU: the input of output.dense."""
    W, b = inter
    return jax.nn.gelu(h1 @ W + b, approximate=False)


def ffn_residual(a, h1, out, ln, eps):
    """``h_{l+1} = LN(a W_2 + b_2 + h1)``: the next block's input."""
    W, b = out
    return layer_norm(a @ W + b + h1, ln, eps)


def pool(h, mask, normalize: bool):
    """Mean over non-padding tokens; divided by its norm when the model has Normalize."""
    m = mask.astype(h.dtype)[..., None]
    e = jnp.sum(h * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1e-9)
    if normalize:  # torch.nn.functional.normalize(p=2, eps=1e-12)
        e = e / jnp.maximum(jnp.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    return e


def block(p, h, mask, config: Config):
    """One encoder block; returns ``(h_next, inputs)`` with the input of each linear layer."""
    ctx = attention(h, mask, p["query"], p["key"], p["value"], config.heads)
    h1 = attn_residual(ctx, h, p["attn_out"], p["ln_attn"], config.eps)
    a = ffn_act(h1, p["intermediate"])
    h2 = ffn_residual(a, h1, p["output"], p["ln_out"], config.eps)
    inputs = {"query": h, "key": h, "value": h, "attn_out": ctx, "intermediate": h1, "output": a}
    return h2, inputs


def trace(params, ids, mask, config: Config) -> Trace:
    """Full forward pass keeping every hidden state and every linear layer's input.

    Args:
      params: `experiments.models.minilm.weights.Model.params` (NumPy or JAX arrays).
      ids: (B, L) int token ids, ``L <= max_positions``. mask: (B, L) 1 on tokens, 0 on pad.
    """
    return _trace(params, jnp.asarray(ids), jnp.asarray(mask), config)


def _trace_impl(params, ids, mask, config):
    h = embed(params["embeddings"], ids, config.eps)
    hidden, inputs = [h], []
    for p in params["layers"]:
        h, x = block(p, h, mask, config)
        hidden.append(h)
        inputs.append(x)
    return Trace(hidden, inputs, pool(h, mask, config.normalize and config.mean_pooling))


_trace = jax.jit(_trace_impl, static_argnums=3)


def encode(params, ids, mask, config: Config) -> jax.Array:
    """Sentence embeddings (B, D) of the model (mean pooling, then Normalize if present)."""
    return _encode(params, jnp.asarray(ids), jnp.asarray(mask), config)


_encode = jax.jit(lambda p, i, m, c: _trace_impl(p, i, m, c).embedding, static_argnums=3)


def to_device(params):
    """Parameters as JAX arrays (keeps their float32 dtype even with x64 on)."""
    return jax.tree_util.tree_map(jnp.asarray, params)


def token_rows(mask) -> np.ndarray:
    """Flat indices (into B*L) of the non-padding tokens, in (sequence, position) order."""
    return np.flatnonzero(np.asarray(mask).reshape(-1))


def gather(x, rows) -> jax.Array:
    """The rows of ``x`` (B, L, N) at the non-padding tokens: (m, N)."""
    return jnp.reshape(x, (-1, x.shape[-1]))[rows]


__all__ = [
    "KINDS", "Trace", "attention", "attn_residual", "block", "embed", "encode", "ffn_act",
    "ffn_residual", "gather", "layer_norm", "pool", "to_device", "token_rows", "trace",
]
