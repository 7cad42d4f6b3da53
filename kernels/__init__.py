"""Fused scale-preserving GroupNorm + per-sample gain + SiLU (SPEC 2.2, 8).

`group_norm_silu` is the only entry point. impl="auto" picks the Triton kernels on CUDA tensors
(or on CPU tensors under TRITON_INTERPRET=1) when triton imports, and the PyTorch reference
otherwise; impl="torch" / impl="triton" force one path (tests use this).
"""
from .reference import group_norm_silu_reference

IMPLS = ("auto", "torch", "triton")


def group_norm_silu(x, weight, gain, groups, eps=1e-5, preserve_scale=True, impl="auto"):
    """x (N, C, H, W); weight (C,); gain (N, C) -> (N, C, H, W); differentiable twice."""
    if impl not in IMPLS:
        raise ValueError(f"group_norm_silu: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "triton":
        raise NotImplementedError("group_norm_silu: the Triton path is not built yet; use impl='torch'")
    return group_norm_silu_reference(x, weight, gain, groups, eps, preserve_scale)
