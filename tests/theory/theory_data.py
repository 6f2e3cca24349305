"""Data families for the theory tests (shared helpers, not tests).

Shapes are drawn from a few values of N (and a fixed n) so that the jit-compiled ptq kernel
is compiled a handful of times per session, not once per hypothesis example.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

N_CHOICES = (6, 13, 20)
N_NEURONS = 3


def make_X(rng, m: int, N: int, *, cond: float = 0.0, spread: float = 0.0, dead: int = 0):
    """(m, N) inputs: Gaussian times a mixing matrix with singular values 10^[0, -cond], columns
    scaled by exp(spread * normal); the first ``dead`` columns (before mixing order) zeroed."""
    G = rng.standard_normal((m, N))
    Qa, _ = np.linalg.qr(rng.standard_normal((N, N)))
    Qb, _ = np.linalg.qr(rng.standard_normal((N, N)))
    mix = Qa @ np.diag(10.0 ** (-cond * np.linspace(0, 1, N))) @ Qb
    X = (G @ mix) * np.exp(spread * rng.standard_normal(N))
    if dead:
        X[:, rng.choice(N, size=dead, replace=False)] = 0.0
    return X


def lam_kwargs(kind: str, value: float) -> dict:
    return {"lam": value} if kind == "lam" else {"percdamp": value}


@st.composite
def layers(draw, *, allow_lam_zero: bool = True, max_dead: int = 2, m_choices=None):
    """A random layer problem: dict with X, W, step, lam/percdamp kwargs, order, seed.

    ``m_choices``: draw m from these values instead of 3..45 (fewer shapes, fewer kernel
    compilations; each new m compiles the jit-compiled parts again)."""
    N = draw(st.sampled_from(N_CHOICES))
    m = draw(st.integers(3, 45) if m_choices is None else st.sampled_from(m_choices))
    seed = draw(st.integers(0, 2**31 - 1))
    cond = draw(st.floats(0.0, 5.0))
    spread = draw(st.floats(0.0, 1.5))
    dead = draw(st.integers(0, max_dead))
    rng = np.random.default_rng(seed)
    X = make_X(rng, m, N, cond=cond, spread=spread, dead=dead)
    # lam = 0 needs X^T X positive definite: m >= N and a modest condition number.
    can_zero = allow_lam_zero and m >= N + 2 and cond <= 3.0
    kind = draw(st.sampled_from(["percdamp", "lam"]))
    if kind == "lam" and can_zero and draw(st.booleans()):
        value = 0.0
    else:
        value = 10.0 ** draw(st.floats(-4.0, 0.5))
        if kind == "lam":
            value *= np.mean(X**2) * m  # absolute lam on the scale of diag(X^T X)
    order = draw(st.sampled_from(["natural", "decreasing_norm", "increasing_norm", "random"]))
    W = rng.standard_normal((N, N_NEURONS)) * np.exp(rng.standard_normal(N_NEURONS))
    bits = draw(st.integers(2, 8))
    step = np.max(np.abs(W), axis=0) / (2 ** (bits - 1) - 1)  # the max-abs step of `bits`
    if draw(st.booleans()):
        step = float(step.mean())
    return dict(
        X=X, W=W, step=step,
        opts=dict(order=order, order_seed=seed % 1000, **lam_kwargs(kind, value)),
        rng=rng, seed=seed,
    )


def x_hat(rng, X, noise: float):
    """Mismatched inputs: X plus relative Gaussian noise (dead columns stay dead)."""
    scale = np.sqrt(np.mean(X**2, axis=0))
    return X + noise * scale * rng.standard_normal(X.shape)


def augmented(X, lam, order):
    """``Xa = [X; sqrt(lam) I]`` in processing order, written out directly (the tests' own
    construction): a dead feature with lam = 0 keeps a unit row, ptq's ``H_tt = 1``."""
    Xp = X[:, order]
    extra = np.diag(np.where(np.sum(Xp**2, 0) + lam == 0, 1.0, np.sqrt(lam)))
    return np.vstack([Xp, extra])


LAYOUTS = ("static", "act_order", "scattered", "per_weight")


def random_grouping(rng, N: int, n: int, base, order, layout: str):
    """A hidden random group-wise step table: ``(step (N, n), groups (N,))``, original order.

    The features are cut into groups of random sizes (1..N, a random number of cuts) that
    are consecutive in the original order ("static"), consecutive in the processing order
    ``order`` (GPTQ's act_order groups, "act_order") or a random assignment ("scattered");
    each group gets its own step per neuron, ``base`` (n,) times a log-uniform factor in
    [1/10, 3]. "per_weight" draws an independent step for every weight (``groups`` is then
    one group per feature). ``groups[j]`` is the group of original feature j.
    """
    base = np.broadcast_to(np.asarray(base, dtype=np.float64), (n,))
    if layout == "per_weight":
        return base * 10.0 ** rng.uniform(-1.0, 0.5, (N, n)), np.arange(N)
    cuts = np.sort(rng.choice(np.arange(1, N), size=rng.integers(0, N), replace=False))
    position_group = np.searchsorted(cuts, np.arange(N), side="right")  # group of position
    if layout == "static":
        feature_at = np.arange(N)
    elif layout == "act_order":
        feature_at = np.asarray(order)
    elif layout == "scattered":
        feature_at = rng.permutation(N)
    else:
        raise ValueError(f"unknown layout {layout!r}")
    groups = np.empty(N, dtype=np.int64)
    groups[feature_at] = position_group
    group_steps = base * 10.0 ** rng.uniform(-1.0, 0.5, (len(cuts) + 1, n))
    return group_steps[groups], groups
