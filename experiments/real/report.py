"""End-to-end table of the real model: held-out cosine and layer errors per algorithm and bits.

    python -m experiments.real.report --bits 2 3 4 5 6 7 8 --algorithms rtn optq qronos \
        --tokens 2048 --out figures/real_cosine.csv

One whole-encoder sequential run per (algorithm, bits), float32 (ptq's default), writing one
CSV row each: the mean and minimum held-out cosine, the wall time of the quantization, and
the mean relative layer error ``||X W - X_hat Q||_F / ||X W||_F`` over block 0 and over
blocks 1-5. Figures are built elsewhere from this CSV.
"""

from __future__ import annotations

import argparse
import csv
import logging
import sys
import time
from pathlib import Path

import numpy as np

from experiments.real import activations, sequential

FIELDS = ("algorithm", "variant", "percdamp", "bits", "tokens", "heldout", "cosine_mean",
          "cosine_min", "rel_err_block0", "rel_err_later", "quantize_s", "total_s")


def row(algorithm: str, bits: int, tokens: int, heldout: int | None, **options) -> dict:
    t0 = time.perf_counter()
    res = sequential.quantize_encoder(algorithm, bits, n_tokens=tokens, n_heldout=heldout,
                                      **options)
    total = time.perf_counter() - t0
    rel = np.array([r["rel_err"] for r in res.records])
    block = np.array([r["layer"] for r in res.records])
    variant = options.get("variant", "paper") if algorithm == "qronos" else ""
    return {
        "algorithm": algorithm, "variant": variant, "percdamp": options.get("percdamp", ""),
        "bits": bits, "tokens": tokens,
        "heldout": len(res.cosine), "cosine_mean": res.cosine_mean,
        "cosine_min": float(res.cosine.min()), "rel_err_block0": float(rel[block == 0].mean()),
        "rel_err_later": float(rel[block > 0].mean()), "quantize_s": res.seconds,
        "total_s": total,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[2, 3, 4, 5, 6, 7, 8])
    ap.add_argument("--algorithms", nargs="+", default=list(sequential.ALGORITHMS))
    ap.add_argument("--tokens", type=int, default=activations.DEFAULT_TOKENS)
    ap.add_argument("--heldout", type=int, default=activations.DEFAULT_HELDOUT)
    ap.add_argument("--variant", default="paper")
    ap.add_argument("--percdamp", type=float, default=None,
                    help="relative damping of every layer (default: ptq's 0.01)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    activations.full_precision(args.tokens)
    activations.heldout_embeddings(args.heldout)
    writer = csv.DictWriter(sys.stdout, FIELDS)
    writer.writeheader()
    rows = []
    for bits in args.bits:
        for alg in args.algorithms:
            opts = {"variant": args.variant} if alg == "qronos" else {}
            if args.percdamp is not None and alg != "rtn":
                opts["percdamp"] = args.percdamp
            r = row(alg, bits, args.tokens, args.heldout, **opts)
            rows.append(r)
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
            sys.stdout.flush()
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", newline="") as f:
            w = csv.DictWriter(f, FIELDS)
            w.writeheader()
            w.writerows(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
