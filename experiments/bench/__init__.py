"""Benchmark of `ptq.optq` / `ptq.qronos` against the peers and the machine limit (issue 6).

One command, one process: ``python -m experiments.bench`` (``--help`` for sizes, repeats,
peers). Modules: `timing` (timers, peak memory, matrix-product rate), `peers` (the canonical
PyTorch GPTQ written from the paper, qwix's GPTQ, Brevitas' Qronos), `options` (what a run
measures, its data), `layer_sizes` (the layer-size benchmark, the limit, the run),
`peer_timing` (the peers at each size), `agreement` (the same-work checks), `theory_timing`
(the theory bounds' times), `flops` (the counted flops), `report` (CSV, Markdown, JSON,
figure); `intmm` (INT8 / INT4 matmuls) and `model` (a whole model, `whole_model`, and one
large layer, `large_layer`, written by `model_report`) are benchmarks of their own. The peers
are optional extras (``.[bench]``).
"""

from experiments.bench.layer_sizes import run
from experiments.bench.options import Options

__all__ = ["Options", "run"]
