"""The device programs of `ptq.optq` and `ptq.qronos` export for CUDA, without a GPU.

`jax.export` traces and lowers each jitted program for the "cuda" platform on this CPU-only
jaxlib: a CPU-only piece in a traced path -- a host callback (its lowering refuses another
platform), NumPy on a tracer (the host Gram route of `ptq.gram` behind a broken guard) --
fails the export or leaves a callback in the module, which is checked. The programs are the
ones `ptq.optq` / `ptq.qronos` compile (`jax.log_compiles` lists them): the input checks, the
Gram products (XLA's route, taken on a GPU and under any trace), the factorisations, the
gathers, the uniforms, the group fits, the kernel in its static variants and the map back;
plus each whole device path traced as one program. Host work between them (resolving the
order and lam, the definiteness checks) reads small arrays back and is not a device program.

The Cholesky factorisation lowers to cuSOLVER's ``potrf`` custom call (the one custom call
allowed); the triangular solves are StableHLO ``triangular_solve``. Running the modules
needs a GPU; here only their lowering is checked.
"""

import re

import jax
import jax.numpy as jnp
import pytest

from ptq import gather, gram, inputs, kernel
from ptq._optq import _map_back, _natural_factor, _reversed_factor, _row_sq_norms
from ptq._qronos import _least_squares
from ptq.grid import Grid, fit_group_table

S = jax.ShapeDtypeStruct
m, N, n, B = 96, 40, 8, 16  # N not a multiple of B: the padded last block is traced too
GROUP = 8


def export_cuda(fn, *args, **kwargs):
    """Export the jitted ``fn`` for CUDA; check the module is free of host callbacks."""
    exp = jax.export.export(fn, platforms=("cuda",))(*args, **kwargs)
    assert exp.platforms == ("cuda",)
    assert not exp.ordered_effects and not exp.unordered_effects  # callbacks carry effects
    text = exp.mlir_module()
    assert "callback" not in text.lower()
    targets = set(re.findall(r"custom_call @(\w+)", text))
    targets |= set(re.findall(r'call_target_name = "([^"]+)"', text))
    assert all(t.startswith("cusolver_potrf") for t in targets), targets
    # the module's StableHLO bytecode, what a GPU process compiles (`Exported.serialize`, the
    # whole record, needs flatbuffers, which the project does not install)
    assert exp.mlir_module_serialized
    return text


def grid_spec(dtype, shape):
    """A `ptq.Grid` of abstract arrays: step and zero of ``shape``, scalar range."""
    return Grid(S(shape, dtype), S(shape, dtype), S((), dtype), S((), dtype))


@pytest.fixture(params=["float32", "float64"])
def dtype(request):
    """float32 with x64 off (the default path, index dtypes included), float64 with it on."""
    if request.param == "float32":
        request.getfixturevalue("float32")
    return jnp.dtype(request.param)


def kernel_variants(dtype):
    """The static variants of the kernel that `ptq.optq` / `ptq.qronos` reach."""
    W, u, z = S((N, n), dtype), S((N, n), dtype), S((n,), dtype)
    dynamic = kernel.Groups(GROUP, 4, "asymmetric", False)
    per_neuron, per_weight = grid_spec(dtype, (n,)), grid_spec(dtype, (N, n))
    return {  # name: (grid, u, z_first, static options)
        "nearest": (per_neuron, None, None, {}),
        "stochastic": (per_neuron, u, None, {"stochastic": True}),
        "per_weight": (per_weight, None, None, {}),
        "qronos_first_step": (per_neuron, None, z, {"first_override": True}),
        "dynamic_groups_qronos": (None, None, z, {"first_override": True, "groups": dynamic}),
        "dynamic_groups_mse_stochastic": (
            None, u, None, {"stochastic": True, "groups": dynamic._replace(mse=True)}),
    }, W


def test_programs_export_for_cuda(dtype):
    index = jnp.int64 if jax.config.read("jax_enable_x64") else jnp.int32  # gather_index's
    X, H, W = S((m, N), dtype), S((N, N), dtype), S((N, n), dtype)
    lam, p = S((), dtype), S((N,), index)
    key = jax.eval_shape(jax.random.key, 0)
    programs = {
        "all_finite": (inputs._all_finite, X),
        "column_sq_norms": (gram.column_sq_norms, X),
        # the public functions, traced: their host guard must hand them to XLA
        "gram_sym": (jax.jit(gram.gram_sym), X),
        "gram_sym_blocked": (jax.jit(gram.gram_sym), S((m, 1024), dtype)),  # N >= 1024
        "gram": (jax.jit(gram.gram), X, X),
        "regularise": (gram.regularise, H, lam),
        "natural_factor": (_natural_factor, H, lam),
        "reversed_factor": (_reversed_factor, H, lam),
        "gather_rows": (gather._gather_rows, W, p),
        "gather_sym": (gather.gather_sym, H, p),
        "uniforms": (jax.jit(lambda k: inputs.uniforms(k, N, n, dtype)), key),
        "fit_group_table": (jax.jit(lambda W: fit_group_table(
            W, bits=4, kind="asymmetric", group_size=GROUP, mse=True)), W),
        "row_sq_norms": (_row_sq_norms, H),
        "map_back": (_map_back, W, S((n,), dtype), S((n,), dtype), p),
        "map_back_natural": (jax.jit(lambda k, s, z: _map_back(k, s, z, None)), W,
                             S((n,), dtype), S((n,), dtype)),
        "least_squares": (_least_squares, H, H, W, lam),
    }
    for name, (fn, *args) in programs.items():
        text = export_cuda(fn, *args)
        if name in ("natural_factor", "reversed_factor", "least_squares"):
            assert "cusolver_potrf" in text, name  # the factorisation is on the GPU
        if name.startswith("gram"):
            assert "dot_general" in text, name
    variants, W = kernel_variants(dtype)
    for name, (grid, u, z, static) in variants.items():
        opts = {"block_size": B, "stochastic": False, "first_override": False} | static
        text = export_cuda(kernel.quantize_ordered, S((N, N), dtype), W, grid, u, z, **opts)
        assert "stablehlo.while" in text, name  # lax loops, not unrolled


def test_whole_device_paths_export_for_cuda(dtype):
    """OPTQ (Gram product, factorisation, kernel, map back) and Qronos (both Gram products,
    least squares, kernel with the first step) each traced as one program."""

    def optq_path(X, W, grid, lam):
        R = _natural_factor(gram.gram_sym(X), lam)
        out = kernel.quantize_ordered(R, W, grid, None, None, block_size=B, stochastic=False,
                                      first_override=False)
        return _map_back(out.k, grid.step, grid.zero, None), out.r

    def qronos_path(X, X_hat, W, grid, lam):
        R, W_ls, z1 = _least_squares(gram.gram_sym(X_hat), gram.gram(X_hat, X), W, lam)
        out = kernel.quantize_ordered(R, W_ls, grid, None, z1, block_size=B, stochastic=False,
                                      first_override=True)
        return _map_back(out.k, grid.step, grid.zero, None), out.r

    X, W, lam, grid = S((m, N), dtype), S((N, n), dtype), S((), dtype), grid_spec(dtype, (n,))
    for path, args in ((optq_path, (X, W, grid, lam)), (qronos_path, (X, X, W, grid, lam))):
        text = export_cuda(jax.jit(path), *args)
        assert "cusolver_potrf" in text and "dot_general" in text
