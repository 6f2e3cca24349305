"""The forward pass of SmolLM2 (the Llama of `experiments.models.smollm2`'s docstring): the jitted
stages, the block as a generator of the driver's stops (`stages`), logits, the NLL and the
held-out perplexity. float32 arithmetic whatever JAX's x64 mode.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from experiments.models import Stage
from experiments.models.smollm2.reader import STOPS, Config, load


def _linear(x, wb):
    W, b = wb
    y = x @ W.astype(jnp.float32)
    return y if b is None else y + b.astype(jnp.float32)


def _rms(x, g, eps):
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps) * g.astype(
        jnp.float32)


@jax.jit
def _embed(E, ids):
    return E.astype(jnp.float32)[ids]


rms_norm = jax.jit(_rms, static_argnames="eps")


def rope_tables(L: int, head_dim: int, base: float):
    """cos, sin (L, head_dim / 2) of the angles ``t * base^(-2i/head_dim)`` (float64 -> f32)."""
    theta = np.arange(L)[:, None] * base ** (-np.arange(0, head_dim, 2) / head_dim)
    return np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)


def rope(z, cos, sin):
    """Rotate the adjacent pairs (z_2i, z_2i+1) of the last axis; z (B, L, H, d)."""
    z1, z2 = z[..., 0::2], z[..., 1::2]
    c, s = cos[:, None, :], sin[:, None, :]
    return jnp.stack([z1 * c - z2 * s, z1 * s + z2 * c], axis=-1).reshape(z.shape)


@functools.partial(jax.jit, static_argnames="config")
def attention(x, q, k, v, config: Config):
    """``ctx`` (B, L, D): causal grouped-query attention with RoPE, the input of o_proj."""
    B, L, _ = x.shape
    d, G = config.head_dim, config.kv_heads
    R = config.heads // G  # query heads per key/value head
    cos, sin = rope_tables(L, d, config.rope_base)
    Q = rope(_linear(x, q).reshape(B, L, G * R, d), cos, sin).reshape(B, L, G, R, d)
    K = rope(_linear(x, k).reshape(B, L, G, d), cos, sin)
    V = _linear(x, v).reshape(B, L, G, d)
    scores = jnp.einsum("bqgrd,bkgd->bgrqk", Q, K) * np.float32(1 / math.sqrt(d))
    causal = np.tril(np.ones((L, L), dtype=bool))
    scores = jnp.where(causal, scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1)
    return jnp.einsum("bgrqk,bkgd->bqgrd", probs, V).reshape(B, L, G * R * d)


@functools.partial(jax.jit, static_argnames="eps")
def attn_residual(h, ctx, o, g, eps):
    """``h1 = h + ctx W_o`` and ``x2 = RMS(h1) g_ffn`` (the input of gate_proj, up_proj)."""
    h1 = h + _linear(ctx, o)
    return h1, _rms(h1, g, eps)


@jax.jit
def ffn_act(x2, gate, up):
    """``a = silu(x2 W_gate) * (x2 W_up)``: the input of down_proj."""
    return jax.nn.silu(_linear(x2, gate)) * _linear(x2, up)


@jax.jit
def ffn_residual(h1, a, down):
    """``h_{l+1} = h1 + a W_down``."""
    return h1 + _linear(a, down)


@functools.partial(jax.jit, static_argnames="eps")
def head(h, g, E, eps):
    """``logits = RMS(h) g_out E^T`` (B, L, V), the output embedding tied to the input one."""
    return _rms(h, g, eps) @ E.astype(jnp.float32).T


def stages(p: dict, h, config: Config) -> Stage:
    """One block as a generator of ``(kinds, x)`` stops (see `experiments.models`)."""
    x = rms_norm(h, p["attn_norm"], eps=config.eps)
    yield STOPS[0], x
    ctx = attention(x, p["q_proj"], p["k_proj"], p["v_proj"], config)
    yield STOPS[1], ctx
    h1, x2 = attn_residual(h, ctx, p["o_proj"], p["ffn_norm"], eps=config.eps)
    yield STOPS[2], x2
    a = ffn_act(x2, p["gate_proj"], p["up_proj"])
    yield STOPS[3], a
    return ffn_residual(h1, a, p["down_proj"])


def _run(gen: Stage):
    try:
        while True:
            next(gen)
    except StopIteration as done:
        return done.value


def _forward(params, ids, config: Config):
    h = _embed(params["embed"], ids)
    for p in params["blocks"]:
        h = _run(stages(p, h, config))
    return head(h, params["norm"], params["embed"], eps=config.eps)


_logits = jax.jit(_forward, static_argnames="config")


@functools.partial(jax.jit, static_argnames="config")
def _nll(params, ids, config: Config):
    logp = jax.nn.log_softmax(_forward(params, ids[:, :-1], config), axis=-1)
    return -jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]


# ---------------------------------------------------------------------------------------------
# Public entry points


def _check_ids(ids, config: Config, *, min_len: int = 1, name: str = "ids") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 2 or ids.shape[0] < 1 or not min_len <= ids.shape[1] <= config.context:
        raise ValueError(f"{name} must be a (B, L) array with B >= 1 and {min_len} <= L <= "
                         f"{config.context}, got shape {ids.shape}")
    if not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= config.vocab:
        raise ValueError(f"{name} must lie in [0, {config.vocab}), got values in "
                         f"[{ids.min()}, {ids.max()}]")
    return ids.astype(np.int32)


def logits(params, ids, config: Config | None = None) -> jax.Array:
    """The full forward pass (jitted): (B, L, V) float32 next-token logits."""
    config = load().config if config is None else config
    return _logits(params, _check_ids(ids, config), config=config)


def nll(params, ids, config: Config | None = None) -> jax.Array:
    """(B, L-1) float32 negative log-likelihood of token t+1 given tokens 0..t."""
    config = load().config if config is None else config
    return _nll(params, _check_ids(ids, config, min_len=2), config=config)


def perplexity(params, windows, *, batch_size: int = 4, progress: bool = False,
               config: Config | None = None) -> tuple[float, int, float]:
    """Perplexity over non-overlapping context windows (k, L), each scored on its own.

    Returns ``(exp(mean_nll), n_tokens, mean_nll)`` with the mean over all k (L-1) predicted
    tokens, accumulated in float64. The last batch is padded (with its first window, its
    scores dropped) so that every batch has one shape and compiles once.
    """


    config = load().config if config is None else config
    windows = _check_ids(windows, config, min_len=2, name="windows")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    k = len(windows)
    bs = min(batch_size, k)
    total = 0.0
    for start in tqdm(range(0, k, bs), disable=not progress, desc="perplexity", unit="batch"):
        chunk = windows[start:start + bs]
        n = len(chunk)
        if n < bs:
            chunk = np.concatenate([chunk, np.repeat(chunk[:1], bs - n, axis=0)])
        total += float(np.asarray(_nll(params, chunk, config=config), np.float64)[:n].sum())
    n_tokens = k * (windows.shape[1] - 1)
    mean = total / n_tokens
    return math.exp(mean), n_tokens, mean
