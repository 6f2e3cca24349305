"""``python -m experiments.bench``: time ptq against the peers and the machine limit.

    python -m experiments.bench                                   # the full run (figures/bench*)
    python -m experiments.bench --sizes 512 1024 --repeats 3 --peers torch
    python -m experiments.bench --sizes 128 256 --repeats 1 --peers brevitas --sweep-sizes \
        --theory-n 256 --check-n 128 --out /tmp/bench           # Brevitas' Qronos, small
    python -m experiments.bench --sizes 64 128 --repeats 1 --peers none --sweep-sizes 128 \
        --theory-n 128 --check-n 64 --out /tmp/bench
    python -m experiments.bench --only intmm     # INT8 / INT4 matmuls (figures/intmm.*)
    python -m experiments.bench --only intmm --shapes 384x384 --batches 1 16 --repeats 3
"""

from __future__ import annotations

import argparse
import logging
import sys

from experiments.bench import intmm, layer_sizes, model, options, report, theory_timing


def _shape(text: str) -> tuple[int, int]:
    N, n = text.lower().split("x")
    return int(N), int(n)


def parse(argv=None) -> tuple[options.Options, argparse.Namespace]:
    d = options.Options()
    p = argparse.ArgumentParser(prog="python -m experiments.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["gptq", "intmm", "model"], default="gptq",
                   help="gptq: the quantization benchmark (figures/bench*); intmm: INT8/INT4 "
                        "weight matmuls against float32 (figures/intmm*); model: SmolLM2 "
                        "quantized end to end against the torch GPTQ, and one 11008 x 4096 "
                        "layer (figures/bench_model*; its own sizes: python -m "
                        "experiments.bench.model --help)")
    p.add_argument("--shapes", type=_shape, nargs="+", default=list(intmm.SHAPES),
                   help="intmm: layer shapes NxN_out, e.g. 384x1536")
    p.add_argument("--batches", type=int, nargs="+", default=list(intmm.BATCHES),
                   help="intmm: rows m of X")
    p.add_argument("--sizes", type=int, nargs="+", default=list(d.sizes), help="values of N")
    p.add_argument("--repeats", type=int, default=None,
                   help=f"timed calls after warm-up ({d.repeats}); intmm: rounds "
                        f"({intmm.Options.repeats})")
    p.add_argument("--min-time", type=float, default=None,
                   help="repeat fast calls until their runs add up to this many seconds "
                        f"({d.min_time:g}); intmm: seconds per timed chunk "
                        f"({intmm.Options.min_time:g})")
    p.add_argument("--peers", nargs="+", default=list(d.peers),
                   choices=["torch", "qwix", "brevitas", "none"])
    p.add_argument("--qwix-max-n", type=int, default=d.qwix_max_n)
    p.add_argument("--qwix-repeats", type=int, default=d.qwix_repeats)
    p.add_argument("--qwix-budget", type=float, default=d.qwix_budget_s,
                   help="skip qwix at N when its predicted time (from the last N) exceeds this [s]")
    p.add_argument("--brevitas-max-n", type=int, default=d.brevitas_max_n)
    p.add_argument("--brevitas-repeats", type=int, default=d.brevitas_repeats)
    p.add_argument("--brevitas-budget", type=float, default=d.brevitas_budget_s,
                   help="skip Brevitas' Qronos at N when its predicted time exceeds this [s]")
    p.add_argument("--bits", type=int, default=d.bits)
    p.add_argument("--block-size", type=int, default=d.block_size)
    p.add_argument("--sweep-sizes", type=int, nargs="*", default=list(d.sweep_sizes))
    p.add_argument("--sweep-blocks", type=int, nargs="+", default=list(d.sweep_blocks))
    p.add_argument("--check-n", type=int, default=d.check_n,
                   help="size of the torch and Brevitas agreement checks; 0 skips them")
    p.add_argument("--theory-n", type=int, default=d.theory_n, help="0 skips the theory timing")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default="figures", help="output folder")
    p.add_argument("--stem", default="bench", help="file name stem")
    p.add_argument("--note", default="", help="a line for the report (e.g. machine state)")
    p.add_argument("--report-only", metavar="JSON", default=None,
                   help="measure nothing: re-derive and rewrite the outputs of a saved run")
    a = p.parse_args(argv)
    opt = options.Options(
        sizes=tuple(a.sizes), repeats=d.repeats if a.repeats is None else a.repeats,
        min_time=d.min_time if a.min_time is None else a.min_time,
        peers=tuple(x for x in a.peers if x != "none"), qwix_max_n=a.qwix_max_n,
        qwix_repeats=a.qwix_repeats, qwix_budget_s=a.qwix_budget,
        brevitas_max_n=a.brevitas_max_n, brevitas_repeats=a.brevitas_repeats,
        brevitas_budget_s=a.brevitas_budget, bits=a.bits,
        block_size=a.block_size, sweep_sizes=tuple(a.sweep_sizes),
        sweep_blocks=tuple(a.sweep_blocks), check_n=a.check_n, theory_n=a.theory_n or None,
        seed=a.seed,
    )
    return opt, a


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    opt, a = parse(argv)
    command = report.command_line("python -m experiments.bench", argv)
    note = a.note
    if a.only == "model":  # --bits, --block-size, --seed, --out and --note apply

        opt = model.Options(bits=a.bits, block_size=a.block_size, seed=a.seed)
        return model.cli(opt, a.out, command, note)
    if a.only == "intmm":
        d = intmm.Options()
        iopt = intmm.Options(shapes=tuple(a.shapes), batches=tuple(a.batches),
                             repeats=d.repeats if a.repeats is None else a.repeats,
                             min_time=d.min_time if a.min_time is None else a.min_time,
                             seed=a.seed)
        res = intmm.run(iopt, progress=lambda msg: print(msg, flush=True))
        paths = intmm.write(res, a.out, command)
        print(intmm.markdown(res, command))
        print("wrote " + ", ".join(paths))
        return 0
    if a.report_only:
        res, command, note = report.load_run(a.report_only, note)
        layer_sizes.derive(res["rows"], res["matmul"])
        # also fills the limits in on runs saved before them
        theory_timing.derive_theory(res["theory"])
    else:
        res = layer_sizes.run(opt, progress=lambda msg: print(msg, flush=True))
    paths = report.write(res, a.out, a.stem, command, note)
    print(report.markdown(res, command, note))
    print("wrote " + ", ".join(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
