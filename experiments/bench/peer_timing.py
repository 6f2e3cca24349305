"""The peers timed at each size N of the layer-size benchmark, one row per N filled in place.

The canonical PyTorch GPTQ (`measure_torch`: from X, its ``X^T X`` and its factorisations),
qwix's GPTQ eagerly (`measure_qwix`) and Brevitas' Qronos (`measure_brevitas`); the two slow
ones are skipped above a size or a predicted time (`skip_reason`). The peers themselves are in
`experiments.bench.peers`.
"""

from __future__ import annotations

import statistics

import jax
import numpy as np

from experiments import timing
from experiments.bench import peers
from experiments.bench.options import Options, timer


def measure_torch(N: int, state: dict, opt: Options, row: dict) -> None:
    import torch

    X, W = state["X"], state["W"]
    Xt, Wt = peers.to_torch(X), peers.to_torch(np.ascontiguousarray(W.T))
    scale, zero = peers.torch_minmax_params(Wt, opt.bits)
    B = state["B"]

    def total():
        return peers.torch_gptq(Wt, peers.torch_gram(Xt), scale, zero, bits=opt.bits, blocksize=B).Q

    t = timer(opt)(total)
    row.update(torch_s=t.median, torch_best_s=t.best, torch_first_s=t.first)
    row["torch_gram_s"] = timer(opt)(lambda: peers.torch_gram(Xt)).median
    row["torch_from_h_s"] = row["torch_s"] - row["torch_gram_s"]
    H = peers.torch_gram(Xt)
    row["torch_factor_s"] = timer(opt)(lambda: peers.torch_factor(H.clone(), 0.01)).median
    row["torch_peak_mb"] = timing.peak_memory(total) / 2**20
    row["torch_threads"] = torch.get_num_threads()


def skip_reason(peer: str, N: int, max_n: int, repeats: int, budget_s: float,
                history: list) -> str | None:
    """Why a slow peer is skipped at N (above ``max_n``, or its time predicted from the last
    size over ``budget_s``), or None. ``history`` holds ``(N, first, steady)`` per size run."""
    if N > max_n:
        return f"skipped: N > {peer}_max_n = {max_n}"
    if history:  # predicted from the last size: first call and loop both grow ~4x per doubling
        N0, first0, steady0 = history[-1]
        predicted = (N / N0) ** 2 * (first0 + repeats * steady0)
        if predicted > budget_s:
            return f"skipped: predicted {predicted:.0f} s > {peer}_budget_s = {budget_s:g}"
    return None


def measure_qwix(N: int, state: dict, opt: Options, row: dict, history: list) -> None:
    """qwix eagerly; skipped (reason in ``row['qwix_note']``) above ``qwix_max_n`` or budget."""
    why = skip_reason("qwix", N, opt.qwix_max_n, opt.qwix_repeats, opt.qwix_budget_s, history)
    if why:
        row["qwix_note"] = why
        return
    run = peers.qwix_runner(opt.bits)
    Wr, Xd = jax.device_put(np.ascontiguousarray(state["W"].T)), jax.device_put(state["X"])
    t = timing.time_call(lambda: run(Wr, Xd), opt.qwix_repeats)  # no min_time: slow
    row.update(qwix_s=t.median, qwix_first_s=t.first, qwix_note="eager, symmetric absmax grid")
    history.append((N, t.first, t.median))


def measure_brevitas(N: int, state: dict, opt: Options, row: dict, history: list) -> None:
    """Brevitas' Qronos from X and X_hat (`peers.brevitas_qronos`: layer, hooks, update);
    skipped (reason in ``row['brevitas_note']``) above ``brevitas_max_n`` or its budget.

    Its damping (``alpha`` for ``lam = 0.01 mean(diag(X_hat^T X_hat))``, as ptq) is set up
    once, untimed; every timed call builds a fresh layer (Qronos updates it in place)."""
    why = skip_reason("brevitas", N, opt.brevitas_max_n, opt.brevitas_repeats,
                      opt.brevitas_budget_s, history)
    if why:
        row["brevitas_note"] = why
        return
    Xt, Xht = peers.to_torch(state["X"]), peers.to_torch(state["X_hat"])
    Wt = peers.to_torch(np.ascontiguousarray(state["W"].T))
    alpha = peers.brevitas_alpha(Xht, 0.01)
    runs = []

    def call():
        runs.append(peers.brevitas_qronos(Xt, Xht, Wt, bits=opt.bits, block_size=state["B"],
                                          alpha=alpha))
        return runs[-1].Q

    t = timing.time_call(call, opt.brevitas_repeats)  # no min_time: slow
    timed = runs[1:]  # after the warm-up call
    row.update(brevitas_qronos_s=t.median, brevitas_qronos_first_s=t.first,
               brevitas_gram_s=statistics.median(r.gram_s for r in timed),
               brevitas_update_s=statistics.median(r.update_s for r in timed),
               brevitas_note=f"eager, block size {state['B']}, damping matched to percdamp 0.01")
    history.append((N, t.first, t.median))
