"""Full-precision activations of the real model, computed once per process and cached.

* `model()`: the verified weights as JAX float32 arrays (one load per process).
* `full_precision(n_tokens)`: the calibration batch and the input X (m, N) of each of the 36
  linear layers under the full-precision model, non-padding tokens only, rows in
  (sequence, position) order; m = n_tokens exactly.
* `heldout_embeddings(n_sequences)`: full-precision sentence embeddings of held-out text.
* `encode_sequences(params, seqs)`: sentence embeddings of many sequences, length-bucketed so
  little compute goes to padding.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import numpy as np

from experiments.models.minilm import bert, text, weights

DEFAULT_TOKENS = 2048
DEFAULT_HELDOUT = 64  # held-out sequences for the end-to-end cosine (about 4.4k tokens)


class Loaded(NamedTuple):
    config: weights.Config
    params: dict  # JAX float32 arrays, layout of weights.Model.params
    tokens: text.Tokens


class FullPrecision(NamedTuple):
    batch: text.Batch  # the calibration batch, exactly n_tokens non-padding tokens
    rows: np.ndarray  # (m,) flat indices of the tokens in the padded (B*L) layout
    inputs: dict  # layer name -> X (m, N) float32 NumPy, input under the full-precision model
    outputs: dict  # layer name -> (m, n) float32 NumPy, the layer's output X W + b


@functools.lru_cache(maxsize=1)
def model() -> Loaded:
    """Load (and SHA-check) the weights and the committed token ids once per process."""
    m = weights.load()
    return Loaded(m.config, bert.to_device(m.params), text.load_tokens())


@functools.lru_cache(maxsize=2)
def full_precision(n_tokens: int = DEFAULT_TOKENS) -> FullPrecision:
    """Inputs and outputs of every linear layer under the full-precision model.

    q, k and v share one input array (the block input). Outputs are taken from the same
    forward pass (``X W + b`` computed there), so a test can check the layout independently.
    """
    loaded = model()
    batch = text.calibration_batch(n_tokens, loaded.tokens)
    rows = bert.token_rows(batch.mask)
    tr = bert.trace(loaded.params, batch.ids, batch.mask, loaded.config)
    inputs, outputs = {}, {}
    for i, (x, p) in enumerate(zip(tr.inputs, loaded.params["layers"])):
        block_in = np.asarray(bert.gather(x["query"], rows))
        for kind in weights.KINDS:
            name = weights.layer_name(i, kind)
            X = block_in if kind in ("query", "key", "value") else np.asarray(
                bert.gather(x[kind], rows))
            inputs[name] = X
            W, b = p[kind]
            outputs[name] = np.asarray(_affine(X, W, b))
    return FullPrecision(batch, rows, inputs, outputs)


@jax.jit
def _affine(X, W, b):
    return X @ W + b


def encode_sequences(params, seqs: list, config: weights.Config, *, chunk: int = 16,
                     multiple: int = 32) -> np.ndarray:
    """Sentence embeddings (len(seqs), D), in the order of ``seqs``.

    Sequences are sorted by length and encoded ``chunk`` at a time, each chunk padded to a
    multiple of ``multiple`` tokens (few compiled shapes, little padding). Padding does not
    change a sequence's embedding (masked keys, masked pooling).
    """
    order = np.argsort([len(s) for s in seqs], kind="stable")
    out = np.empty((len(seqs), config.hidden), np.float32)
    for i in range(0, len(seqs), chunk):
        idx = order[i: i + chunk]
        group = [seqs[j] for j in idx]
        L = -(-max(len(s) for s in group) // multiple) * multiple
        # Pad the chunk to a fixed batch size too, with one-token dummy rows, then drop them.
        group += [group[0][:1]] * (chunk - len(group))
        b = text.pad(group, config.pad_id)
        ids = np.full((chunk, L), config.pad_id, np.int32)
        mask = np.zeros((chunk, L), np.int32)
        ids[:, : b.ids.shape[1]] = b.ids
        mask[:, : b.mask.shape[1]] = b.mask
        out[idx] = np.asarray(bert.encode(params, ids, mask, config))[: len(idx)]
    return out


@functools.lru_cache(maxsize=2)
def heldout_embeddings(n_sequences: int | None = DEFAULT_HELDOUT) -> np.ndarray:
    """Full-precision sentence embeddings of the first ``n_sequences`` held-out sequences."""
    loaded = model()
    return encode_sequences(loaded.params, heldout_sequences(n_sequences), loaded.config)


def heldout_sequences(n_sequences: int | None = DEFAULT_HELDOUT) -> list:
    seqs = model().tokens.heldout
    if n_sequences is None:
        return seqs
    if isinstance(n_sequences, bool) or not 1 <= n_sequences <= len(seqs):
        raise ValueError(f"`n_sequences` must be in [1, {len(seqs)}] or None; got {n_sequences!r}")
    return seqs[:n_sequences]
