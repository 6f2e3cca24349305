"""The research harness around `ptq` and `theory`, in layers (top to bottom; the import contract
in pyproject.toml checks that no module imports a layer above its own):

* entry points: `reproduce` (every sweep, every study, every figure, the summary table),
  `bench` (the benchmark), `sweep` (a preset's sweep in-process) and `run` (the Hydra app: one
  run = one record);
* `studies`: one module per whole-model study, each a ``STUDY`` with sizes in
  ``conf/study/<key>.yaml``;
* `figures`: one builder per figure, reading records only;
* the framework: `study` (passes, records and resumption of a whole-model study), `driver`
  (the model-agnostic sequential driver), `measure` (the one measurement layer: grids,
  algorithm dispatch, measurements, the record cycle), `bounds` (which theory bound applies and
  its check), `data` (synthetic and file layers), `timing` (time and memory), `schema` (typed
  configs) and `records` (atomic records and aggregation);
* `models`: one package per model (`minilm`, `smollm2`): reader, forward pass, text.
"""

import logging
import os


def console_logging(level: int = logging.INFO) -> None:
    """The command lines' logging: plain messages on stderr, library chatter (JAX, absl,
    matplotlib) only from warnings up."""
    logging.basicConfig(level=level, format="%(message)s")
    for noisy in ("jax", "absl", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def enable_compile_cache() -> None:
    """Persist JAX's compiled programs across processes (the same shapes reuse them), in
    ``$PTQ_JAX_CACHE`` (default ``~/.cache/provable-ptq/jax``); `experiments.reproduce` and the
    test suite turn it on."""
    import jax

    path = os.environ.get("PTQ_JAX_CACHE", os.path.expanduser("~/.cache/provable-ptq/jax"))
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
