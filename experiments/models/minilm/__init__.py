"""all-MiniLM-L6-v2 (a 6-block BERT encoder) as a model adapter of the sequential driver.

The forward pass is `experiments.models.minilm.bert`'s four stages per block; this adapter only says
where the driver stops (the inputs of query/key/value, attention.output.dense,
intermediate.dense and output.dense) and how an activation (B, L, N) becomes the (m, N)
matrix of its non-padding tokens, rows in (sequence, position) order.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from experiments.models import Stage
from experiments.models.minilm import activations, bert
from experiments.models.minilm.weights import KINDS, layer_name


@partial(jax.jit, static_argnums=(5,))
def _attention(h, mask, q, k, v, heads):
    return bert.attention(h, mask, q, k, v, heads)


_attn_residual = jax.jit(bert.attn_residual, static_argnums=(4,))
_ffn_act = jax.jit(bert.ffn_act)
_ffn_residual = jax.jit(bert.ffn_residual, static_argnums=(4,))
_embed = jax.jit(bert.embed, static_argnums=(2,))


class MiniLM:
    """The verified encoder (`activations.model()`); ``params["blocks"]`` are its 6 blocks."""

    name = "minilm"
    kinds = KINDS

    def __init__(self):
        loaded = activations.model()
        self.config = loaded.config
        self.params = {"embeddings": loaded.params["embeddings"],
                       "blocks": loaded.params["layers"]}

    @property
    def n_blocks(self) -> int:
        return self.config.layers

    def layer_name(self, block: int, kind: str) -> str:
        return layer_name(block, kind)

    def embed(self, params, batch):
        return _embed(params["embeddings"], jnp.asarray(batch.ids), self.config.eps)

    def block(self, p, h, batch) -> Stage:
        c = self.config
        yield ("query", "key", "value"), h
        ctx = _attention(h, jnp.asarray(batch.mask), p["query"], p["key"], p["value"], c.heads)
        yield ("attn_out",), ctx
        h1 = _attn_residual(ctx, h, p["attn_out"], p["ln_attn"], c.eps)
        yield ("intermediate",), h1
        a = _ffn_act(h1, p["intermediate"])
        yield ("output",), a
        return _ffn_residual(a, h1, p["output"], p["ln_out"], c.eps)

    def rows(self, batch, x) -> np.ndarray:
        return np.asarray(bert.gather(x, bert.token_rows(batch.mask)))
