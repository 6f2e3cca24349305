"""Benchmark of `ptq.optq` / `ptq.qronos` against the peers and the machine limit (issue 6).

One command, one process: ``python -m experiments.bench`` (``--help`` for sizes, repeats,
peers). Modules: `timing` (timers, peak memory, matrix-product rate), `peers` (the canonical
PyTorch GPTQ written from the paper, qwix's GPTQ), `core` (the measurements, the limit),
`report` (CSV, Markdown, JSON, figure). The peers are optional extras (``.[bench]``).
"""

from experiments.bench.core import Options, run

__all__ = ["Options", "run"]
