"""Model adapters: what the one sequential driver (`experiments.driver`) needs of a model.

A model is the embedding, a stack of blocks and, inside each block, its linear layers in
forward order. An adapter writes each block's forward pass **once**, as a Python generator that
stops at every group of linear layers sharing one input::

    def block(self, p, h, batch):
        x = rms_norm(h, p["attn_norm"])
        yield ("q_proj", "k_proj", "v_proj"), x      # the input X of these three layers
        ctx = attention(x, p["q_proj"], p["k_proj"], p["v_proj"], ...)   # reads p after resuming
        yield ("o_proj",), ctx
        ...
        return h_next

At each ``yield (kinds, x)`` the driver may replace ``p[kind]`` by the quantized layer before it
resumes the generator, so everything after the yield runs with the quantized weights (the
partially quantized model of GPTQ's sequential mode); running the generator to its end without
touching ``p`` is the full-precision forward pass. ``x`` is the layer input in the model's own
layout (for example (B, L, N)); `Model.rows` flattens it to the (m, N) matrix the algorithms
take (non-padding tokens only).

Layout of a linear layer: ``p[kind] = (W, b)`` with ``W`` (N, n) features x neurons (PyTorch's
``nn.Linear.weight`` transposed, DESIGN.md) and ``b`` (n,) or None; the layer computes
``x @ W + b``.
"""

from __future__ import annotations

from typing import Any, Generator, NamedTuple, Protocol

import numpy as np

Stage = Generator[tuple[tuple[str, ...], Any], None, Any]


class Model(Protocol):
    """The protocol every adapter implements (`minilm.MiniLM`, `smollm2.SmolLM2`)."""

    name: str  # "minilm" | "smollm2": the key in records and file names
    kinds: tuple[str, ...]  # the linear layers of one block, in forward order
    params: dict  # {"blocks": [dict per block: kind -> (W, b), norms ...], ...}

    @property
    def n_blocks(self) -> int: ...

    def layer_name(self, block: int, kind: str) -> str:
        """The layer's name as the model's own checkpoint spells it."""

    def embed(self, params: dict, batch) -> Any:
        """The first block's input for a calibration or evaluation batch."""

    def block(self, p: dict, h, batch) -> Stage:
        """One block as a generator of ``(kinds, x)`` stops; returns the next block's input."""

    def rows(self, batch, x) -> np.ndarray:
        """``x`` in the model's layout as an (m, N) float32 matrix of real tokens."""


class Batch(NamedTuple):
    """A batch of token ids: (B, L) ids and a (B, L) mask (1 on tokens, 0 on padding)."""

    ids: np.ndarray
    mask: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.mask.sum())


def run_block(model: Model, p: dict, h, batch):
    """The block's forward pass with the weights in ``p`` as they are (no stop is acted on)."""
    stages = model.block(p, h, batch)
    try:
        while True:
            next(stages)
    except StopIteration as done:
        return done.value


__all__ = ["Batch", "Model", "Stage", "run_block"]
