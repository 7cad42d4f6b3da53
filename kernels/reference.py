"""PyTorch reference of the fused norm/activation op (docs/method.md §2.2), written as explicit formulas.

Autograd differentiates it as many times as needed, so it is the ground truth that the Triton
kernels must match, including the double-backward terms. Statistics are computed in fp32 (fp64 if
the input is fp64) whatever the input dtype.

    m_g  = mean of group g of sample n          v_g = its (biased) variance
    vbar = mean over the groups of sample n of v_g
    xhat = (x - m_g) * sqrt(vbar / (v_g + eps) + eps)      if preserve_scale
    xhat = (x - m_g) / sqrt(v_g + eps)                       otherwise (plain GroupNorm)
    out  = silu(xhat * weight_c * gain_nc)
"""
import torch
import torch.nn.functional as F


def check_inputs(x, weight, gain, groups):
    """Shapes of group_norm_silu's inputs; raises ValueError naming the expected shape."""
    if x.dim() != 4:
        raise ValueError(f"group_norm_silu: x must be (N, C, H, W), got shape {tuple(x.shape)}")
    N, C = x.shape[:2]
    if weight.shape != (C,):
        raise ValueError(f"group_norm_silu: weight must be (C,) = ({C},), got {tuple(weight.shape)}")
    if gain.shape != (N, C):
        raise ValueError(f"group_norm_silu: gain must be (N, C) = ({N}, {C}), got {tuple(gain.shape)}")
    if groups < 1 or C % groups != 0:
        raise ValueError(f"group_norm_silu: groups={groups} must divide the {C} channels")


def group_norm_silu_reference(x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    check_inputs(x, weight, gain, groups)
    N, C, H, W = x.shape
    dtype = torch.promote_types(x.dtype, torch.float32)          # fp32 statistics (fp64 stays fp64)
    xg = x.to(dtype).reshape(N, groups, -1)                        # (N, G, C/G * H * W)
    m = xg.mean(dim=2, keepdim=True)                               # (N, G, 1)
    xc = xg - m
    v = (xc * xc).mean(dim=2, keepdim=True)                        # two-pass variance, (N, G, 1)
    if preserve_scale:
        vbar = v.mean(dim=1, keepdim=True)                         # (N, 1, 1)
        s = torch.sqrt(vbar / (v + eps) + eps)
    else:
        s = torch.rsqrt(v + eps)
    xhat = (xc * s).reshape(N, C, H, W)
    a = xhat * weight.to(dtype).view(1, C, 1, 1) * gain.to(dtype).view(N, C, 1, 1)
    return F.silu(a).to(x.dtype)
