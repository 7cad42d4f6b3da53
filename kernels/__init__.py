"""Fused scale-preserving GroupNorm + per-sample gain + SiLU (docs/method.md §2.2, §8).

`group_norm_silu` is the only entry point; kernels/README.md has the formulas, the design and the
benchmarks. impl picks the path:

    "auto"       Triton kernels on CUDA tensors, the derived PyTorch passes elsewhere (CPU)
    "triton"     the Triton kernels (CUDA, or CPU tensors under TRITON_INTERPRET=1)
    "derived"    the hand-derived passes written with a few fused PyTorch ops (any device)
    "reference"  the explicit PyTorch formulas differentiated by autograd (the ground truth)
    "torch"      the name "reference" had before the derived passes existed; kept so that model
                 configs of older checkpoints load and mean what they meant

"triton" and "derived" are backends of ONE chain of autograd Functions (function.py). Before a
backend first runs on a device (once per process, backend and device) a self-check compares its
forward, first- and second-order gradients with the reference on a small random input. "auto"
falls back to the reference with one warning naming the failing pass and the error; a forced
"triton" or "derived" raises instead. "auto" also warns once, and takes the derived passes, when a
CUDA run cannot use the compiled kernels (triton missing, or TRITON_INTERPRET=1 left set).

    reference.py     the op as explicit PyTorch formulas: the ground truth, differentiated by autograd
    derivation.py    the hand-derived backward and double backward; the "derived" backend
    triton_impl.py   the Triton kernels implementing derivation.py; the "triton" backend
    function.py      the autograd Functions chaining a backend's three passes
    bench.py         per-pass timings of every path (python -m kernels.bench)

triton is imported lazily, on the first call that needs it, so a machine without it still works.
"""
import os
import warnings

import torch

from . import derivation
from .function import GNSiLU
from .reference import check_inputs, group_norm_silu_reference

IMPLS = ("auto", "triton", "derived", "reference", "torch")
ALIASES = {"torch": "reference"}
CHECK_TOLERANCES = {"forward": 1e-4, "backward": 1e-4, "double backward": 1e-3}   # of max |reference| + 0.1
_triton_impl = None
_checked = {}                                # (backend, device) -> None (agrees) or "pass: error"
_chosen = {}                                 # (impl, device) -> "triton", "derived" or "reference"
_warned = set()


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


def backend(name):
    """The module holding backend `name`'s three passes."""
    if name == "triton":
        if not triton_available():
            raise RuntimeError("group_norm_silu: the triton backend needs triton (pip install triton)")
        return _triton_impl
    return derivation


def warn_once(message):
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def reset():
    """Forget the self-check results, choices and warnings (tests)."""
    _checked.clear()
    _chosen.clear()
    _warned.clear()


def _all_passes(op, x, weight, gain, dy, u):
    """{pass: outputs}, run in order; an exception names the pass it came from."""
    x, weight, gain, dy = [t.detach().clone().requires_grad_(True) for t in (x, weight, gain, dy)]
    results, name = {}, "forward"
    try:
        out = op(x, weight, gain)
        results[name] = [out]
        name = "backward"
        first = torch.autograd.grad(out, (x, weight, gain), dy, create_graph=True)
        results[name] = list(first)
        name = "double backward"
        L2 = sum((f * ui).sum() for f, ui in zip(first, u))
        results[name] = list(torch.autograd.grad(L2, (dy, x, weight, gain)))
    except Exception as e:
        raise RuntimeError(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    return results


def self_check(name, device):
    """None if backend `name` agrees with the reference on `device`, else "pass: error" (cached).

    Input: N=2, C=6, 3 groups, 5x3 images, x in channels_last, gain expanded from one row (stride 0
    over samples), preserve_scale on and off; fp32 against the reference in float64 on the same
    device; every output of every pass within CHECK_TOLERANCES. Drawn from its own generator, so
    the caller's random stream is untouched.
    """
    key = (name, str(device))
    if key in _checked:
        return _checked[key]
    failure = None
    with torch.inference_mode(False), torch.enable_grad(), torch.autocast(torch.device(device).type, enabled=False):
        gen = torch.Generator().manual_seed(0)
        x = (3 * torch.randn(2, 6, 5, 3, generator=gen) + 1).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(6, generator=gen)
        gain = (1 + 0.5 * torch.randn(1, 6, generator=gen)).expand(2, 6)
        dy = torch.randn(2, 6, 5, 3, generator=gen)
        u = [torch.randn(2, 6, 5, 3, generator=gen), torch.randn(6, generator=gen), torch.randn(2, 6, generator=gen)]
        inputs = [t.to(device) for t in (x, weight, gain, dy)]
        u = [t.to(device) for t in u]
        for preserve_scale in (True, False):
            got_op = lambda *a: GNSiLU.apply(backend(name), *a, 3, 1e-5, preserve_scale)
            ref_op = lambda *a: group_norm_silu_reference(*a, 3, 1e-5, preserve_scale)
            try:
                got = _all_passes(got_op, *inputs, u)
            except RuntimeError as e:
                failure = str(e)
                break
            ref = _all_passes(ref_op, *[t.double() for t in inputs], [t.double() for t in u])
            for pass_name, tol in CHECK_TOLERANCES.items():
                for a, b in zip(got[pass_name], ref[pass_name]):
                    err = (a.double() - b).abs().max().item()
                    bound = tol * (b.abs().max().item() + 0.1)
                    if not err <= bound:                               # NaN fails too
                        failure = (f"{pass_name}: max error {err:.3g} > {bound:.3g} against the float64 reference "
                                   f"(preserve_scale={preserve_scale})")
                        break
                if failure:
                    break
            if failure:
                break
    _checked[key] = failure
    return failure


def _require(name, device):
    """Raise unless backend `name` can run on `device` and passes its self-check."""
    if name == "triton":
        if not triton_available():
            raise RuntimeError("group_norm_silu: impl='triton' but triton does not import; "
                               "install it (pip install triton) or use impl='auto'")
        why = _triton_impl.usable(device)
        if why:
            raise RuntimeError(f"group_norm_silu: {why}")
        if device.type == "cuda" and _triton_impl.INTERPRETED:
            warn_once("group_norm_silu: TRITON_INTERPRET=1 is set on a CUDA machine: impl='triton' runs the "
                      "kernels in the interpreter (very slow); unset it to compile them")
    failure = self_check(name, device)
    if failure:
        raise RuntimeError(f"group_norm_silu: the {name} backend failed its self-check on {device}, {failure}; "
                           f"use impl='auto' (falls back to the reference) or impl='reference'")


def _auto(device):
    name = "derived"
    if device.type == "cuda":
        if not triton_available():
            warn_once(f"group_norm_silu: triton does not import, so {device} runs the derived PyTorch passes "
                      "instead of the fused kernels (pip install triton)")
        elif _triton_impl.INTERPRETED or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            warn_once(f"group_norm_silu: TRITON_INTERPRET is set, so {device} runs the derived PyTorch passes "
                      "instead of the compiled kernels; unset it for the fused kernels")
        else:
            name = "triton"
    failure = self_check(name, device)
    if failure:
        warn_once(f"group_norm_silu: the {name} backend failed its self-check on {device}, {failure}; "
                  "falling back to the PyTorch reference (slower, same results)")
        return "reference"
    return name


def choose(impl, device):
    """The path impl takes on device: "triton", "derived" or "reference" (cached)."""
    key = (impl, device)
    if key not in _chosen:
        name = ALIASES.get(impl, impl)
        if name == "auto":
            name = _auto(device)
        elif name != "reference":
            _require(name, device)
        _chosen[key] = name
    return _chosen[key]


def group_norm_silu(x, weight, gain, groups, eps=1e-5, preserve_scale=True, impl="auto"):
    """x (N, C, H, W); weight (C,); gain (N, C) -> (N, C, H, W); differentiable twice, any strides."""
    if impl not in IMPLS:
        raise ValueError(f"group_norm_silu: impl must be one of {IMPLS}, got {impl!r}")
    check_inputs(x, weight, gain, groups)
    name = choose(impl, x.device)
    if name == "reference":
        return group_norm_silu_reference(x, weight, gain, groups, eps, preserve_scale)
    return GNSiLU.apply(backend(name), x, weight, gain, groups, eps, preserve_scale)
