"""Fused scale-preserving GroupNorm + per-sample gain + SiLU (docs/method.md §2.2, 8).

`group_norm_silu` is the only entry point. impl="auto" picks the Triton kernels on CUDA tensors
(or on CPU tensors under TRITON_INTERPRET=1) when triton imports, and the PyTorch reference
otherwise; impl="torch" / impl="triton" force one path (tests use this).

    reference.py     the op as explicit PyTorch formulas: the ground truth, differentiated by autograd
    derivation.py    hand-derived backward and double backward in PyTorch, checked against autograd
    triton_impl.py   the Triton kernels implementing derivation.py, twice differentiable
    bench.py         fused vs eager timings (python -m kernels.bench)

triton is imported lazily, on the first call that needs it, so a machine without it still works.
"""
import os

from .reference import check_inputs, group_norm_silu_reference

IMPLS = ("auto", "torch", "triton")
_triton_impl = None


def triton_available():
    """True if triton imports (the result is cached)."""
    global _triton_impl
    if _triton_impl is None:
        try:
            from . import triton_impl
            _triton_impl = triton_impl
        except ImportError:
            _triton_impl = False
    return _triton_impl is not False


def group_norm_silu(x, weight, gain, groups, eps=1e-5, preserve_scale=True, impl="auto"):
    """x (N, C, H, W); weight (C,); gain (N, C) -> (N, C, H, W); differentiable twice."""
    if impl not in IMPLS:
        raise ValueError(f"group_norm_silu: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        wants_triton = x.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
        impl = "triton" if wants_triton and triton_available() else "torch"
    if impl == "torch":
        return group_norm_silu_reference(x, weight, gain, groups, eps, preserve_scale)
    check_inputs(x, weight, gain, groups)
    if not triton_available():
        raise RuntimeError("group_norm_silu: impl='triton' but triton does not import; "
                           "install it (pip install triton) or use impl='torch'")
    return _triton_impl.group_norm_silu_triton(x, weight, gain, groups, eps, preserve_scale)
