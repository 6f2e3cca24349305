"""Scale: a whole model quantized end to end, and one large layer (issue 15, part 4).

    python -m experiments.bench --only model         # figures/bench_model.{md,csv,json}
    python -m experiments.bench.model --calib 1 --length 128 --blocks 2 --layer-N 512 \
        --layer-n 256 --heldout 1 --out /tmp/bm      # a small run, every flag of its own

(a) **Whole model.** SmolLM2-135M (`experiments.models.smollm2`), every one of its 210 linear
layers in forward order through the project's one sequential driver
(`experiments.driver.quantize_model`), at the LM study's default calibration
(`experiments.studies.lm.SIZES["default"]`: 4 windows of 512 tokens, m = 2048 rows per layer), 4
bits,
GPTQ's per-neuron min-max grid, natural order, percdamp 0.01. Three methods on the same batch:

* ``optq``: ``ptq.optq`` per layer (GPTQ: ``Q = OPTQ(X_hat, W)``);
* ``qronos``: ``ptq.qronos`` per layer (``X`` and ``X_hat``);
* ``torch``: the canonical PyTorch GPTQ (`peers.torch_gptq`, ``H = X_hat^T X_hat`` formed in
  torch) as the driver's ``quantizer``: the same driver, forward passes, captured inputs and
  grid, only each layer's quantization done by the reference code (`torch_quantizer`), with
  one torch thread (``torch_threads``): at these widths its per-column updates are too small
  to split, and on a shared 2-core machine two OpenMP threads wait on each other (one
  576 x 576 layer: 0.08 s with one thread, 2-3 s with two while another process held a core);
  `threads_check` measures both settings on SmolLM2's layer shapes in every run.

Each method first runs on the first block alone (a warm-up that compiles every jitted shape:
the forward stages, the quantizer, the measurement; reported as "warm-up"), then on the whole
model once. The wall time of that run is split with timestamps taken at the driver's two
hooks: **quantizer** = the driver's own per-layer ``seconds`` (the quantizer call and the wait
for its ``Q``), **measure** = the driver's per-layer error measurement (from the quantizer's
return to the ``on_layer`` hook), **check** = the hook itself (the on-grid check and, for
torch, ``ptq.optq`` on the same inputs to compare codes: excluded from the total), and
**forward** = the rest: the two copies' forward passes and the capture of X and X_hat.
Peak memory: the process's resident high-water mark during the run (Linux ``VmHWM``, reset
through ``/proc/self/clear_refs`` just before, so sampling misses nothing and no thread runs
beside the timed code) minus the resident size before it (the loaded model and the batch).
The held-out perplexity of each quantized model (the study's 8 windows of 512 tokens, not
timed) shows that the three did the same work.

(b) **One large layer**: N = 11008 (the Llama-7B MLP down-projection's input width), n = 4096,
m = 2N = 22016 rows (the benchmark's m = 2N, so X^T X has full rank as with a real
calibration set of more tokens than features; X and X_hat are 0.97 GB each in float32, H and
the other N x N matrices 0.48 GB each, which leaves room on a 24 GB machine), synthetic data as
`options.make_data` (standard normal X and W, ``X_hat = X + 0.1 noise``), float32, 4-bit
per-neuron min-max grid, block size 128: ``ptq.optq`` and ``ptq.qronos`` each called twice,
the first call (compilation included) and a second one (with the peak memory above the inputs).
"""

# The parts (this docstring is the --help text): `whole_model` (a), `large_layer` (b),
# `model_report` (the tables and files); here the options, the run and the command line.

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import sys

from experiments import timing
from experiments.bench import peers
from experiments.bench.large_layer import large_layer
from experiments.bench.model_report import markdown, write
from experiments.bench.report import command_line, load_run
from experiments.bench.whole_model import METHODS, run_model, threads_check
from experiments.studies import lm


def _lm_default(key: str) -> int:
    return lm.SIZES["default"].data[key]


@dataclasses.dataclass(frozen=True)
class Options:
    """What ``--only model`` measures; None calibration sizes mean the LM study's default."""

    calib: int | None = None  # calibration windows (LM default: 4)
    length: int | None = None  # tokens per window (LM default: 512)
    heldout: int | None = None  # held-out windows scored (LM default: 8); 0 skips perplexity
    blocks: int | None = None  # the first blocks only (tests); None: all 30
    methods: tuple[str, ...] = METHODS
    warmup: bool = True  # each method first on block 0 alone (compiles every shape)
    check: bool = True  # torch: compare each layer's codes with ptq.optq on the same inputs
    # torch's intra-op threads in the whole-model run (None: torch's default, 2 here). One:
    # the GPTQ loop's per-column updates are (n, <= 128) at these widths, too small to split,
    # and on a shared machine two OpenMP threads wait on each other (see `threads_check`).
    torch_threads: int | None = 1
    threads_shapes: tuple[tuple[int, int], ...] = ((576, 576), (1536, 576))  # () skips it
    bits: int = 4
    block_size: int = 128
    layer_N: int = 11008  # (b): Llama-7B down_proj input width
    layer_n: int = 4096
    layer_m: int | None = None  # None: 2 N
    layer_algorithms: tuple[str, ...] = ("optq", "qronos")  # () skips part (b)
    seed: int = 0

    def resolved(self) -> Options:
        return dataclasses.replace(
            self, calib=self.calib or _lm_default("calib"),
            length=self.length or _lm_default("length"),
            heldout=_lm_default("heldout") if self.heldout is None else self.heldout,
            layer_m=self.layer_m or 2 * self.layer_N)


# ----------------------------------------------------------------------------- run
def run(opt: Options, progress=lambda msg: None) -> dict:
    """Both parts: ``{"env", "options", "model", "layers", "threads", "large", "skipped"}``
    (``model``: one row per method; ``layers``: one per method and layer; ``threads``:
    `threads_check`; ``large``: one row per algorithm of part (b))."""
    opt = opt.resolved()
    env = timing.environment()
    skipped = {}
    methods = opt.methods
    if "torch" in methods and (why := peers.torch_missing()):
        skipped["torch"] = why
        methods = tuple(m for m in methods if m != "torch")
    if "torch" in methods:
        import torch

        env.update(torch=torch.__version__, torch_threads=str(torch.get_num_threads()))
    progress(f"environment: {env}")
    opt = dataclasses.replace(opt, methods=methods)
    model_rows, layers = run_model(opt, progress) if methods else ([], [])
    threads = []
    if "torch" in methods and opt.threads_shapes:
        threads = threads_check(opt.threads_shapes, opt.calib * opt.length, bits=opt.bits,
                                block_size=opt.block_size, seed=opt.seed)
        progress(f"torch threads: {threads}")
    large = large_layer(opt.layer_N, opt.layer_n, opt.layer_m, opt.layer_algorithms,
                        bits=opt.bits, block_size=opt.block_size, seed=opt.seed,
                        progress=progress) if opt.layer_algorithms else []
    env["process_maxrss_mib"] = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}"
    env["load_avg_1m_end"] = f"{os.getloadavg()[0]:.2f}"
    return {"env": env, "options": dataclasses.asdict(opt), "model": model_rows,
            "layers": layers, "threads": threads, "large": large, "skipped": skipped}


def cli(opt: Options, out: str, command: str, note: str = "", stem: str = "bench_model") -> int:
    res = run(opt, progress=lambda msg: print(msg, flush=True))
    return _write_and_print(res, out, command, note, stem)


def _write_and_print(res: dict, out: str, command: str, note: str, stem: str) -> int:
    paths = write(res, out, command, note, stem)
    print(markdown(res, command, note))
    print("wrote " + ", ".join(paths))
    return 0


def main(argv=None) -> int:
    d = Options()
    p = argparse.ArgumentParser(prog="python -m experiments.bench.model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=None, help="calibration windows (LM default)")
    p.add_argument("--length", type=int, default=None, help="tokens per window (LM default)")
    p.add_argument("--heldout", type=int, default=None, help="held-out windows; 0: none")
    p.add_argument("--blocks", type=int, default=None, help="only the first blocks")
    p.add_argument("--methods", nargs="*", default=list(d.methods), choices=METHODS)
    p.add_argument("--no-check", action="store_true", help="no torch-vs-ptq code comparison")
    p.add_argument("--no-warmup", action="store_true", help="no one-block warm-up run")
    p.add_argument("--torch-threads", type=int, default=d.torch_threads,
                   help="torch's threads in the whole-model run; 0: torch's default")
    p.add_argument("--threads-shapes", nargs="*", default=[f"{N}x{n}" for N, n in
                                                            d.threads_shapes],
                   help="layer shapes NxN_out of the torch threads check (none: skip it)")
    p.add_argument("--layer-N", type=int, default=d.layer_N)
    p.add_argument("--layer-n", type=int, default=d.layer_n)
    p.add_argument("--layer-m", type=int, default=None, help="rows of the large layer (2N)")
    p.add_argument("--layer-algorithms", nargs="*", default=list(d.layer_algorithms),
                   choices=["optq", "qronos"])
    p.add_argument("--bits", type=int, default=d.bits)
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default="figures")
    p.add_argument("--stem", default="bench_model")
    p.add_argument("--note", default="")
    p.add_argument("--report-only", metavar="JSON", default=None,
                   help="measure nothing: rewrite the outputs of a saved run")
    a = p.parse_args(argv)
    if a.report_only:
        res, command, note = load_run(a.report_only, a.note)
        return _write_and_print(res, a.out, command, note, a.stem)
    opt = Options(calib=a.calib, length=a.length, heldout=a.heldout, blocks=a.blocks,
                  methods=tuple(a.methods), check=not a.no_check, warmup=not a.no_warmup,
                  torch_threads=a.torch_threads or None,
                  threads_shapes=tuple(tuple(map(int, x.lower().split("x")))
                                       for x in a.threads_shapes), bits=a.bits,
                  block_size=a.block_size, layer_N=a.layer_N, layer_n=a.layer_n,
                  layer_m=a.layer_m, layer_algorithms=tuple(a.layer_algorithms), seed=a.seed)
    command = command_line("python -m experiments.bench.model", argv)
    return cli(opt, a.out, command, a.note, a.stem)


__all__ = ["Options", "cli", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
