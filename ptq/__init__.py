"""provable-ptq: OPTQ (GPTQ), stochastic OPTQ and Qronos in JAX.

Public API::

    ptq.Grid                         alphabets and rounding (symmetric, asymmetric, fit);
                                     step/zero per layer (), neuron (n,) or weight (N, n)
    ptq.GroupGrid(bits, kind, group_size, static=False, mse=False)
                                     GPTQ's group-wise grids, fitted inside the algorithms
    ptq.optq(X, W, grid, ...)        OPTQ / stochastic OPTQ                -> ptq.Result
    ptq.qronos(X, X_hat, W, grid, ...)  Qronos, variants "paper" and "ls_first" -> ptq.Result;
                                     ls_first at a correction strength in [0, 1] or "auto"
    ptq.select                       strength and lam chosen from held-out calibration
                                     sequences (what strength="auto" / lam="auto" run)
    ptq.rtn(W, grid)                 round to nearest                      -> ptq.RTNResult
    ptq.optq_waterfill(X, W, rate=)  OPTQ with steps c / r_t (reverse waterfilling), c set
                                     by the codes' entropy              -> ptq.WaterfillResult
    ptq.rate                         entropy-coded rate of codes (NumPy only)
    ptq.reference                    slow float64 NumPy oracle (least-squares definitions)
    ptq.options                      order / lam resolution shared with `theory` (NumPy only)
    ptq.pack                         GPTQ v1 packed checkpoints: pack / unpack, safetensors
                                     + quantize_config.json (NumPy only)       -> ptq.PackedLayer

The JAX modules are imported on first use (PEP 562), so that `theory`, which is NumPy-only,
can import `ptq.options` (one shared definition of orders and lam) without loading JAX, and a
packed checkpoint can be read (`ptq.pack`) without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "Grid": "ptq.grid",
    "GroupGrid": "ptq.grid",
    "optq": "ptq._optq",
    "qronos": "ptq._qronos",
    "rtn": "ptq._rtn",
    "Result": "ptq.result",
    "RTNResult": "ptq._rtn",
    "optq_waterfill": "ptq._waterfill",
    "WaterfillResult": "ptq._waterfill",
    "PackedLayer": "ptq.pack",
    "QuantizeConfig": "ptq.pack",
}
_SUBMODULES = ("options", "reference", "grid", "kernel", "pack", "rate", "result", "inputs", "gram",
               "gather", "definiteness", "select")

__all__ = ["Grid", "GroupGrid", "optq", "qronos", "rtn", "Result", "RTNResult", "options",
           "reference", "pack", "PackedLayer", "QuantizeConfig", "optq_waterfill",
           "WaterfillResult", "rate", "select"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"ptq.{name}")
    else:
        raise AttributeError(f"module 'ptq' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


if TYPE_CHECKING:  # static analysers and IDEs see the eager names
    from ptq import options, pack, rate, reference
    from ptq._optq import optq
    from ptq._qronos import qronos
    from ptq._rtn import RTNResult, rtn
    from ptq._waterfill import WaterfillResult, optq_waterfill
    from ptq.grid import Grid, GroupGrid
    from ptq.pack import PackedLayer, QuantizeConfig
    from ptq.result import Result
