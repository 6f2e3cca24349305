"""An independent float64 NumPy forward pass of a Llama causal LM (the tests' reference).

Written from the maths (not from the JAX adapter, which it never imports), for parameters in the
adapter's layout: ``{"embed": E (V, D), "blocks": [{"attn_norm", "ffn_norm": (D,),
"q_proj" ... "down_proj": (W (N, n), b or None)}], "norm": (D,)}``, the output embedding tied
to E. Per block::

    x = h / sqrt(mean(h^2) + eps) * g_attn
    q, k, v = x W_q, x W_k, x W_v;  RoPE on every head of q and k
    head j of q attends (causally, scale 1/sqrt(d)) with key/value head j // (H / H_kv)
    h1 = h + ctx W_o;  x2 = RMS(h1) g_ffn;  h2 = h1 + (silu(x2 W_gate) * (x2 W_up)) W_down

``rope="adjacent"`` rotates the pairs (z_2i, z_2i+1) by ``t * base^(-2i/d)`` (llama.cpp, the
GGUF weights); ``rope="half"`` the pairs (z_i, z_{i+d/2}) (Hugging Face's rotate_half).
"""

from __future__ import annotations

import numpy as np


def to_float64(params) -> dict:
    """The parameters as float64 NumPy arrays (same nesting; biases stay None)."""
    def lin(wb):
        W, b = wb
        return np.asarray(W, np.float64), None if b is None else np.asarray(b, np.float64)

    blocks = [{k: (lin(v) if isinstance(v, tuple) else np.asarray(v, np.float64))
               for k, v in p.items()} for p in params["blocks"]]
    return {"embed": np.asarray(params["embed"], np.float64), "blocks": blocks,
            "norm": np.asarray(params["norm"], np.float64)}


def rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def linear(x, wb):
    W, b = wb
    return x @ W if b is None else x @ W + b


def apply_rope(z, base, rope):
    """z (L, H, d) at positions 0..L-1."""
    L, _, d = z.shape
    half = d // 2
    angle = np.arange(L)[:, None, None] * base ** (-2.0 * np.arange(half) / d)  # (L, 1, d/2)
    c, s = np.cos(angle), np.sin(angle)
    out = np.empty_like(z)
    if rope == "adjacent":
        a, b = z[..., 0::2], z[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * c - b * s, a * s + b * c
    elif rope == "half":
        a, b = z[..., :half], z[..., half:]
        out[..., :half], out[..., half:] = a * c - b * s, a * s + b * c
    else:
        raise ValueError(f"rope must be 'adjacent' or 'half', got {rope!r}")
    return out


def attention(x, p, heads, kv_heads, head_dim, base, rope):
    """One sequence x (L, D) -> the concatenated heads' context (L, heads * head_dim)."""
    L = x.shape[0]
    q = apply_rope(linear(x, p["q_proj"]).reshape(L, heads, head_dim), base, rope)
    k = apply_rope(linear(x, p["k_proj"]).reshape(L, kv_heads, head_dim), base, rope)
    v = linear(x, p["v_proj"]).reshape(L, kv_heads, head_dim)
    group = heads // kv_heads
    future = np.triu(np.ones((L, L), bool), k=1)
    out = np.empty((L, heads, head_dim))
    for j in range(heads):
        s = q[:, j] @ k[:, j // group].T / np.sqrt(head_dim)
        s[future] = -np.inf
        w = np.exp(s - s.max(axis=1, keepdims=True))
        out[:, j] = (w / w.sum(axis=1, keepdims=True)) @ v[:, j // group]
    return out.reshape(L, heads * head_dim)


def forward(params, ids, *, heads, kv_heads, head_dim, base, eps, rope="adjacent"):
    """Logits (B, L, V) float64 for token ids (B, L); ``params`` from `to_float64`."""
    E = params["embed"]
    h = E[np.asarray(ids)]  # (B, L, D); each weight is read once for the whole batch
    for p in params["blocks"]:
        x = rms(h, p["attn_norm"], eps)
        ctx = np.stack([attention(xs, p, heads, kv_heads, head_dim, base, rope) for xs in x])
        h = h + linear(ctx, p["o_proj"])
        x2 = rms(h, p["ffn_norm"], eps)
        g = linear(x2, p["gate_proj"])
        silu = g * 0.5 * (1 + np.tanh(g / 2))  # g * sigmoid(g), without overflow
        h = h + linear(silu * linear(x2, p["up_proj"]), p["down_proj"])
    return rms(h, params["norm"], eps) @ E.T


def log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def nll(params, ids, **kw):
    """(B, L-1) float64 negative log-likelihood of token t+1 given tokens 0..t."""
    ids = np.asarray(ids)
    logp = log_softmax(forward(params, ids[:, :-1], **kw))
    return -np.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
