"""Shared data families, hypothesis strategies and comparison helpers for tests/ptq.

The matrices are drawn by NumPy from a seed that hypothesis picks, together with the
discrete choices (family, shape, order, regulariser, grid, block size, rounding). Shapes and
block sizes come from small fixed sets so that the jit cache is reused across examples
(each new (N, n, block_size) compiles the kernel once, ~0.5 s): the suite must run in a few
minutes on two cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import jax
import numpy as np
from hypothesis import strategies as st

import ptq
from ptq import reference

# N in {7, 24}. At N = 24: B = 8 divides N, B = 5 does not (padded last block), B = 20 has
# two 10-row panels per block and a padded second block, B = 128 becomes one block of N = 24
# rows in two 12-row panels. At N = 7 every B > 7 is one block of 7.
SIZES = (7, 24)
BLOCK_SIZES = (5, 8, 20, 128)
N_NEURONS = 4
FAMILIES = ("gaussian", "ill", "heavy", "correlated", "dead")
ORDERS = ("natural", "decreasing_norm", "increasing_norm", "random", "explicit")


@dataclass
class Case:
    """One layer and every option of a run; ``kwargs()`` feeds ptq and ptq.reference alike."""

    X: np.ndarray  # (m, N)
    X_hat: np.ndarray  # (m, N): X plus a perturbation (Qronos)
    W: np.ndarray  # (N, n)
    grid: ptq.Grid
    reg: dict  # {"lam": ...} or {"percdamp": ...} or {}
    order: object
    order_seed: int
    block_size: int
    stochastic: bool
    seed: int
    family: str
    grid_kind: str
    extra: dict = field(default_factory=dict)

    def kwargs(self) -> dict:
        return dict(self.reg, order=self.order, order_seed=self.order_seed)

    def key(self):
        return jax.random.key(self.seed)

    def u(self, dtype=np.float64) -> np.ndarray:
        """The uniforms ptq draws from ``key()``: the reference consumes the same ones."""
        N, n = self.W.shape
        return np.asarray(ptq.inputs.uniforms(self.key(), N, n, dtype), dtype=np.float64)

    def __repr__(self):  # what hypothesis prints for a failing example
        m, N = self.X.shape
        return (
            f"Case(m={m}, N={N}, family={self.family!r}, reg={self.reg}, order={self.order!r}, "
            f"grid={self.grid_kind!r}, B={self.block_size}, stochastic={self.stochastic}, "
            f"seed={self.seed})"
        )


def make_X(rng, m: int, N: int, family: str, cond_exp: float = 3.0) -> np.ndarray:
    """Calibration inputs of one family.

    gaussian: iid N(0, 1). ill: ``U diag(s) V^T`` with s log-spaced over ``cond_exp`` decades
    (when m < N the N - m missing directions make X^T X singular, as always for m < N).
    heavy: columns scaled by log-normal factors (sigma 1.5), rows by Student-t(3) magnitudes.
    correlated: AR(1) correlation 0.95 between neighbouring features. dead: gaussian with 1-2
    zero columns.
    """
    if family == "gaussian":
        return rng.standard_normal((m, N))
    if family == "ill":
        k = min(m, N)
        U, _ = np.linalg.qr(rng.standard_normal((m, k)))
        V, _ = np.linalg.qr(rng.standard_normal((N, k)))
        s = np.logspace(0, -cond_exp, k)
        return np.sqrt(m) * (U * s) @ V.T
    if family == "heavy":
        cols = rng.lognormal(0.0, 1.5, N)
        rows = np.abs(rng.standard_t(3, m))[:, None] + 0.1
        return rng.standard_normal((m, N)) * cols * rows
    if family == "correlated":
        rho = 0.95
        idx = np.arange(N)
        C = rho ** np.abs(idx[:, None] - idx[None, :])
        return rng.standard_normal((m, N)) @ np.linalg.cholesky(C).T
    if family == "dead":
        X = rng.standard_normal((m, N))
        X[:, rng.choice(N, size=int(rng.integers(1, 3)), replace=False)] = 0.0
        return X
    raise ValueError(family)


def make_grid(rng, W: np.ndarray, kind: str) -> ptq.Grid:
    """A grid of one kind. Fitted grids clip: OPTQ's weights grow past max|w| (B3).

    per_weight: a symmetric grid with an independent random step for every weight (N, n).
    table_asym_G: GPTQ min-max grids fitted by hand on consecutive groups of G features of W,
    expanded to (N, n) rows (the group each feature falls in), a short last group included.
    Both test the (N, n) rows, in original order, against the oracle under every order.
    group_{sym|asym}_{G}_{dyn|static}[_mse]: a `ptq.GroupGrid` recipe, fitted inside the
    algorithm (and independently inside the oracle); G = 100 is one group (G >= N).
    """
    N, n = W.shape
    if kind.startswith("group_"):
        parts = kind.split("_")
        sym = parts[1] == "sym"
        bits = 3 if sym else 2  # fixed: the bits are static in the kernel (one compile each)
        return ptq.GroupGrid(bits, "symmetric" if sym else "asymmetric", int(parts[2]),
                             static=parts[3] == "static", mse="mse" in parts)
    if kind == "per_weight":
        step = rng.uniform(0.1, 0.6, (N, n)) * W.std(axis=0)
        return ptq.Grid.symmetric(step, int(rng.integers(1, 8)))
    if kind.startswith("table_asym_"):
        G = int(kind.rsplit("_", 1)[1])
        bits = int(rng.integers(1, 4))
        rows = [ptq.Grid.fit(W[g : g + G], bits, "asymmetric") for g in range(0, N, G)]
        sizes = [min(G, N - g) for g in range(0, N, G)]
        step = np.repeat(np.stack([np.asarray(r.step) for r in rows]), sizes, axis=0)
        zero = np.repeat(np.stack([np.asarray(r.zero) for r in rows]), sizes, axis=0)
        return ptq.Grid.asymmetric(step, zero, bits)
    if kind == "infinite":
        return ptq.Grid.symmetric(rng.uniform(0.05, 0.5, n) * W.std(axis=0))
    if kind == "symmetric":
        return ptq.Grid.symmetric(rng.uniform(0.1, 0.6, n) * W.std(axis=0), int(rng.integers(1, 8)))
    if kind.startswith("fit_"):
        _, sym, per, bits = kind.split("_")
        kind_ = "symmetric" if sym == "sym" else "asymmetric"
        return ptq.Grid.fit(W, int(bits), kind_, per)
    raise ValueError(kind)


PLAIN_GRID_KINDS = (
    "infinite",
    "symmetric",
    "fit_sym_neuron_3",
    "fit_sym_layer_2",
    "fit_asym_neuron_2",
    "fit_asym_layer_4",
    "fit_asym_neuron_1",
    "per_weight",
    "table_asym_5",
)
# Group recipes: sizes that do not divide N = 24 (a short last group), that start groups
# inside a block (B = 8 or 20 with G = 5), one group (G = 100 >= N), and the clipping search.
STATIC_GROUP_KINDS = ("group_asym_8_static", "group_sym_5_static_mse")
DYNAMIC_GROUP_KINDS = ("group_asym_5_dyn", "group_sym_8_dyn", "group_asym_3_dyn_mse",
                       "group_asym_100_dyn")
GRID_KINDS = PLAIN_GRID_KINDS + STATIC_GROUP_KINDS + DYNAMIC_GROUP_KINDS


@st.composite
def cases(
    draw,
    *,
    families=FAMILIES,
    grid_kinds=GRID_KINDS,
    allow_lam0: bool = True,
    stochastic=None,
    sizes=SIZES,
    cond_exp=(1.0, 4.0),
    mismatch=(0.0, 0.3),
) -> Case:
    """A layer with options, drawn broadly (see module docstring)."""
    N = draw(st.sampled_from(sizes))
    m = draw(st.sampled_from((max(2, N // 2), N + 3, 3 * N)))  # m < N and m > N
    family = draw(st.sampled_from(families))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    X = make_X(rng, m, N, family, rng.uniform(*cond_exp))
    noise = rng.uniform(*mismatch)
    X_hat = X + noise * X.std() * rng.standard_normal(X.shape) * (X != 0)  # keep dead dead
    W = rng.standard_normal((N, N_NEURONS)) * rng.lognormal(0, 0.5, N_NEURONS)
    grid_kind = draw(st.sampled_from(grid_kinds))
    grid = make_grid(rng, W, grid_kind)
    live = int(np.count_nonzero(np.sum(X * X, axis=0)))
    choices = ["default", "percdamp", "lam"] + (["lam0"] if allow_lam0 and m >= live else [])
    reg_kind = draw(st.sampled_from(choices))
    scale = np.mean(np.sum(X_hat * X_hat, axis=0))
    reg = {
        "default": {},
        "percdamp": {"percdamp": float(draw(st.sampled_from((0.001, 0.1, 1.0))))},
        "lam": {"lam": float(rng.uniform(1e-3, 1.0) * scale)},
        "lam0": {"lam": 0.0},
    }[reg_kind]
    order = draw(st.sampled_from(ORDERS))
    if order == "explicit":
        order = rng.permutation(N)
    block_size = draw(st.sampled_from(BLOCK_SIZES))
    stoch = draw(st.booleans()) if stochastic is None else stochastic
    return Case(
        X, X_hat, W, grid, reg, order, int(rng.integers(0, 1000)), block_size, stoch, seed,
        family, grid_kind,
    )


# --------------------------------------------------------------------------- running
def run_optq(case: Case, **over):
    kw = dict(case.kwargs(), block_size=case.block_size, **over)
    if case.stochastic:
        kw.update(rounding="stochastic", key=case.key())
    return ptq.optq(case.X, case.W, case.grid, **kw)


def ref_optq(case: Case):
    kw = case.kwargs()
    if case.stochastic:
        kw.update(rounding="stochastic", u=case.u())
    return reference.optq(case.X, case.W, case.grid, **kw)


def run_qronos(case: Case, variant: str, **over):
    kw = dict(case.kwargs(), block_size=case.block_size, variant=variant, **over)
    if case.stochastic:
        kw.update(rounding="stochastic", key=case.key())
    return ptq.qronos(case.X, case.X_hat, case.W, case.grid, **kw)


def ref_qronos(case: Case, variant: str):
    kw = dict(case.kwargs(), variant=variant)
    if case.stochastic:
        kw.update(rounding="stochastic", u=case.u())
    return reference.qronos(case.X, case.X_hat, case.W, case.grid, **kw)


# --------------------------------------------------------------------------- comparison
def ordered_step(grid, order) -> np.ndarray:
    """The step of every weight, (N, n), in processing order (row t: feature ``order[t]``)."""
    N = len(order)
    step = np.asarray(grid.step, dtype=np.float64)
    n = step.shape[-1] if step.ndim else 1
    if step.ndim == 2:
        return step[np.asarray(order)]
    return np.broadcast_to(step, (N, n)) if step.ndim else np.full((N, 1), float(step))


def step_scale(grid) -> np.ndarray:
    """The largest step of each neuron, (n,) (or a scalar): the scale of its rounding errors."""
    step = np.asarray(grid.step, dtype=np.float64)
    return step.max(axis=0) if step.ndim == 2 else step


def boundary_distance(z, step, u=None) -> np.ndarray:
    """Distance, in units of the step, from ``z`` (N, n) to the nearest rounding boundary.

    ``step`` broadcasts against ``z`` (row t is the step used at processing step t). Nearest
    rounding jumps where ``z / delta`` is a half-integer; stochastic rounding with uniform
    ``u`` jumps where ``z / delta - u`` is an integer.
    """
    x = np.asarray(z) / step - (0.5 if u is None else u)
    frac = x - np.floor(x)
    return np.minimum(frac, 1.0 - frac)


def compare_codes(res, ref, grid=None, *, z_rtol: float, u=None) -> dict:
    """Assert ptq's codes equal the reference's, except past an exact rounding tie.

    The steps are the reference's realised grid ``ref.grid`` ((N, n), original order), which
    is ``grid`` itself for a plain grid and the oracle's own fit for a group recipe.

    Walk each neuron in processing order. Until the first differing code the two runs are
    the same computation in different algebra, so their errors ``e_t`` must agree to
    ``z_rtol * scale`` (scale = max(trajectory max, step) of that neuron). A differing code
    is allowed only where the reference's rounded value lies within that same distance of a
    rounding boundary (a tie up to float64 error); after it the neuron's trajectories
    legitimately diverge and are not compared further.

    Returns counts for reporting: {"diverged": neurons that met a tie, "first": (n,) the
    first differing step of each neuron (N if none)}.
    """
    order = np.asarray(res.order)
    np.testing.assert_array_equal(order, ref.order)
    codes = np.asarray(res.codes)[order]
    codes_ref = ref.codes[order]
    e = np.asarray(res.e, dtype=np.float64)
    N, n = codes.shape
    step = np.broadcast_to(ordered_step(ref.grid, order), (N, n))  # processing order
    scale = np.maximum(ref.w_traj_max, step.max(axis=0))
    atol = z_rtol * scale  # (n,)
    dist = boundary_distance(ref.z, step, u) * step  # in weight units
    diverged = 0
    first = np.full(n, N)
    for j in range(n):
        bad = np.flatnonzero(codes[:, j] != codes_ref[:, j])
        t0 = first[j] = bad[0] if bad.size else N
        err = np.abs(e[:t0, j] - ref.e[:t0, j])
        assert np.all(err <= atol[j]), (
            f"neuron {j}: |e - e_ref| = {err.max():.3g} > {atol[j]:.3g} before any tie"
        )
        if bad.size:
            diverged += 1
            assert dist[t0, j] <= atol[j], (
                f"neuron {j}, step {t0}: codes {codes[t0, j]} != {codes_ref[t0, j]} but the "
                f"rounded value {ref.z[t0, j]!r} is {dist[t0, j]:.3g} from a rounding boundary "
                f"(> {atol[j]:.3g}): not a tie"
            )
    return {"diverged": diverged, "first": first}
