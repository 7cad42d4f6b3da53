"""Triton kernels of group_norm_silu, chained through two autograd Functions so the op is
differentiable twice (SPEC 8):

    GNSiLU.forward           Triton forward                       saves x, weight, gain, m_g, v_g
    GNSiLU.backward          calls GNSiLUBackward.apply(dy, ...)  (recorded under create_graph=True)
    GNSiLUBackward.forward   Triton first backward                -> dx, dw, dgain
    GNSiLUBackward.backward  Triton double backward               -> grads of dy, x, w, gain

The formulas, their derivation and their check against autograd are in derivation.py; the kernels
fuse its per-element passes. Every kernel runs one program per (sample n, group g): a group is the
contiguous block of K = Cg * HW values starting at (n * G + g) * K, visited channel by channel in
BLOCK-sized chunks with int64 offsets. Statistics and sums are fp32 whatever the input dtype; the
variance is two-pass (mean first, then the mean of squared deviations). Per-group sums are written
to (N, G) buffers and per-channel sums to (N, C) buffers, one program each, so every reduction is
deterministic (no atomics). The glue between passes is cheap torch ops on these small buffers:
the coefficient functions of derivation.py (which couple the groups of a sample through vbar) and
the sum over samples giving dw.

Under TRITON_INTERPRET=1 (read by triton when this module is imported) the kernels run on CPU
tensors, which is how the CI tests run them.
"""
import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from .derivation import backward_coefs, double_backward_coefs, scale, tangent_coefs

INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def _silu_grads(a):
    sig = tl.sigmoid(a)
    return sig * (1 + a * (1 - sig)), sig * (1 - sig) * (2 + a * (1 - 2 * sig))


@triton.jit
def _stats_kernel(x_ptr, m_ptr, v_ptr, K, BLOCK: tl.constexpr):
    """m_g = mean x and v_g = mean (x - m_g)^2 over one group (two passes)."""
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * K
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        mask = start + offs < K
        acc += tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
    m = tl.sum(acc, axis=0) / K
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        mask = start + offs < K
        xc = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32) - m
        acc += tl.where(mask, xc * xc, 0.0)
    tl.store(m_ptr + pid, m)
    tl.store(v_ptr + pid, tl.sum(acc, axis=0) / K)


@triton.jit
def _forward_kernel(x_ptr, w_ptr, gain_ptr, m_ptr, s_ptr, out_ptr, C, HW, Cg, BLOCK: tl.constexpr):
    """out = silu((x - m) s w gain)."""
    pid = tl.program_id(0)
    G = C // Cg
    n = pid // G
    m = tl.load(m_ptr + pid)
    s = tl.load(s_ptr + pid)
    offs = tl.arange(0, BLOCK)
    for c in range(Cg):
        row = pid * Cg + c                                             # n * C + channel
        ch = row - n * C
        wg = tl.load(w_ptr + ch).to(tl.float32) * tl.load(gain_ptr + row).to(tl.float32)
        base = row.to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            a = (x - m) * s * wg
            tl.store(out_ptr + base + start + offs, a * tl.sigmoid(a), mask=mask)


@triton.jit
def _backward_reduce_kernel(dy_ptr, x_ptr, w_ptr, gain_ptr, m_ptr, s_ptr, A_ptr, B_ptr, P_ptr,
                            C, HW, Cg, BLOCK: tl.constexpr):
    """A_g = sum gh xc, B_g = sum gh (gh = da w gain), P_nc = sum_hw da xhat."""
    pid = tl.program_id(0)
    G = C // Cg
    n = pid // G
    m = tl.load(m_ptr + pid)
    s = tl.load(s_ptr + pid)
    offs = tl.arange(0, BLOCK)
    A = 0.0
    B = 0.0
    for c in range(Cg):
        row = pid * Cg + c
        ch = row - n * C
        wg = tl.load(w_ptr + ch).to(tl.float32) * tl.load(gain_ptr + row).to(tl.float32)
        base = row.to(tl.int64) * HW
        acc_xc = tl.zeros([BLOCK], dtype=tl.float32)
        acc_1 = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            xc = x - m
            silu1, _ = _silu_grads(xc * s * wg)
            da = dy * silu1                                            # 0 where masked (dy = 0)
            acc_xc += da * xc
            acc_1 += da
        sum_xc = tl.sum(acc_xc, axis=0)
        A += wg * sum_xc
        B += wg * tl.sum(acc_1, axis=0)
        tl.store(P_ptr + row, s * sum_xc)
    tl.store(A_ptr + pid, A)
    tl.store(B_ptr + pid, B)


@triton.jit
def _backward_apply_kernel(dy_ptr, x_ptr, w_ptr, gain_ptr, m_ptr, s_ptr, c_ptr, B_ptr, dx_ptr,
                           C, HW, Cg, BLOCK: tl.constexpr):
    """dx = s (gh - B / K) + c xc."""
    pid = tl.program_id(0)
    G = C // Cg
    n = pid // G
    m = tl.load(m_ptr + pid)
    s = tl.load(s_ptr + pid)
    cc = tl.load(c_ptr + pid)
    mean_gh = tl.load(B_ptr + pid) / (Cg * HW)
    offs = tl.arange(0, BLOCK)
    for c in range(Cg):
        row = pid * Cg + c
        ch = row - n * C
        wg = tl.load(w_ptr + ch).to(tl.float32) * tl.load(gain_ptr + row).to(tl.float32)
        base = row.to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            xc = x - m
            silu1, _ = _silu_grads(xc * s * wg)
            dx = s * (wg * (dy * silu1) - mean_gh) + cc * xc
            tl.store(dx_ptr + base + start + offs, dx, mask=mask)


@triton.jit
def _tangent_reduce_kernel(ux_ptr, x_ptr, m_ptr, U1_ptr, U2_ptr, K, BLOCK: tl.constexpr):
    """U1_g = sum ux, U2_g = sum xc ux over one group."""
    pid = tl.program_id(0)
    base = pid.to(tl.int64) * K
    m = tl.load(m_ptr + pid)
    offs = tl.arange(0, BLOCK)
    acc1 = tl.zeros([BLOCK], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, K, BLOCK):
        mask = start + offs < K
        ux = tl.load(ux_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
        acc1 += ux
        acc2 += (x - m) * ux
    tl.store(U1_ptr + pid, tl.sum(acc1, axis=0))
    tl.store(U2_ptr + pid, tl.sum(acc2, axis=0))


@triton.jit
def _double_terms(dy, x, ux, m, s, umean, s_dot, wg, ug):
    """Per-element terms of the double backward (derivation.py): the tangent then its adjoint."""
    xc = x - m
    xhat = xc * s
    silu1, silu2 = _silu_grads(xhat * wg)
    xc_dot = ux - umean
    xhat_dot = xc_dot * s + xc * s_dot
    a_dot = xhat_dot * wg + xhat * ug
    da = dy * silu1
    g_a = dy * silu2 * a_dot
    Gx = g_a * wg + da * ug
    return xc, xhat, xc_dot, xhat_dot, silu1 * a_dot, da, g_a, Gx


@triton.jit
def _double_reduce_kernel(dy_ptr, x_ptr, ux_ptr, w_ptr, gain_ptr, uw_ptr, ugain_ptr, m_ptr, s_ptr,
                          umean_ptr, sdot_ptr, gdy_ptr, R1_ptr, R2_ptr, R3_ptr, Q_ptr, P_ptr,
                          C, HW, Cg, HAS_UX: tl.constexpr, BLOCK: tl.constexpr):
    """g_dy = out_dot (stored); R1 = sum Gx xc, R2 = sum gh xc_dot, R3 = sum Gx per group;
    Q_nc = sum_hw (g_a xhat + da xhat_dot), P_nc = sum_hw da xhat per channel."""
    pid = tl.program_id(0)
    G = C // Cg
    n = pid // G
    m = tl.load(m_ptr + pid)
    s = tl.load(s_ptr + pid)
    umean = tl.load(umean_ptr + pid)
    s_dot = tl.load(sdot_ptr + pid)
    offs = tl.arange(0, BLOCK)
    R1 = 0.0
    R2 = 0.0
    R3 = 0.0
    for c in range(Cg):
        row = pid * Cg + c
        ch = row - n * C
        w = tl.load(w_ptr + ch).to(tl.float32)
        gn = tl.load(gain_ptr + row).to(tl.float32)
        wg = w * gn
        ug = tl.load(uw_ptr + ch).to(tl.float32) * gn + w * tl.load(ugain_ptr + row).to(tl.float32)
        base = row.to(tl.int64) * HW
        acc_r1 = tl.zeros([BLOCK], dtype=tl.float32)
        acc_r2 = tl.zeros([BLOCK], dtype=tl.float32)
        acc_r3 = tl.zeros([BLOCK], dtype=tl.float32)
        acc_q = tl.zeros([BLOCK], dtype=tl.float32)
        acc_p = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_UX:
                ux = tl.load(ux_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            else:
                ux = tl.zeros([BLOCK], dtype=tl.float32)
            xc, xhat, xc_dot, xhat_dot, out_dot, da, g_a, Gx = _double_terms(dy, x, ux, m, s, umean, s_dot, wg, ug)
            tl.store(gdy_ptr + base + start + offs, out_dot, mask=mask)
            acc_r1 += Gx * xc                                          # Gx, da are 0 where masked
            acc_r2 += da * tl.where(mask, xc_dot, 0.0)
            acc_r3 += Gx
            acc_q += g_a * xhat + da * xhat_dot
            acc_p += da * xhat
        R1 += tl.sum(acc_r1, axis=0)
        R2 += wg * tl.sum(acc_r2, axis=0)
        R3 += tl.sum(acc_r3, axis=0)
        tl.store(Q_ptr + row, tl.sum(acc_q, axis=0))
        tl.store(P_ptr + row, tl.sum(acc_p, axis=0))
    tl.store(R1_ptr + pid, R1)
    tl.store(R2_ptr + pid, R2)
    tl.store(R3_ptr + pid, R3)


@triton.jit
def _double_apply_kernel(dy_ptr, x_ptr, ux_ptr, w_ptr, gain_ptr, uw_ptr, ugain_ptr, m_ptr, s_ptr,
                         umean_ptr, sdot_ptr, c1_ptr, c2_ptr, B_ptr, R3_ptr, gx_ptr,
                         C, HW, Cg, HAS_UX: tl.constexpr, BLOCK: tl.constexpr):
    """gx = s (Gx - R3 / K) + s_dot (gh - B / K) + c1 xc_dot + c2 xc."""
    pid = tl.program_id(0)
    G = C // Cg
    n = pid // G
    m = tl.load(m_ptr + pid)
    s = tl.load(s_ptr + pid)
    umean = tl.load(umean_ptr + pid)
    s_dot = tl.load(sdot_ptr + pid)
    c1 = tl.load(c1_ptr + pid)
    c2 = tl.load(c2_ptr + pid)
    mean_gh = tl.load(B_ptr + pid) / (Cg * HW)
    mean_Gx = tl.load(R3_ptr + pid) / (Cg * HW)
    offs = tl.arange(0, BLOCK)
    for c in range(Cg):
        row = pid * Cg + c
        ch = row - n * C
        w = tl.load(w_ptr + ch).to(tl.float32)
        gn = tl.load(gain_ptr + row).to(tl.float32)
        wg = w * gn
        ug = tl.load(uw_ptr + ch).to(tl.float32) * gn + w * tl.load(ugain_ptr + row).to(tl.float32)
        base = row.to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_UX:
                ux = tl.load(ux_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            else:
                ux = tl.zeros([BLOCK], dtype=tl.float32)
            xc, xhat, xc_dot, xhat_dot, out_dot, da, g_a, Gx = _double_terms(dy, x, ux, m, s, umean, s_dot, wg, ug)
            gx = s * (Gx - mean_Gx) + s_dot * (wg * da - mean_gh) + c1 * xc_dot + c2 * xc
            tl.store(gx_ptr + base + start + offs, gx, mask=mask)


def _launch_config(x, groups):
    N, C, H, W = x.shape
    HW, Cg = H * W, C // groups
    return N * groups, HW, Cg, min(1024, triton.next_power_of_2(HW))


class GNSiLU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, gain, groups, eps, preserve_scale):
        x, weight, gain = x.contiguous(), weight.contiguous(), gain.contiguous()
        N, C = x.shape[:2]
        grid, HW, Cg, BLOCK = _launch_config(x, groups)
        K = Cg * HW
        m = torch.empty(N, groups, device=x.device, dtype=torch.float32)
        v = torch.empty_like(m)
        _stats_kernel[(grid,)](x, m, v, K, BLOCK=min(1024, triton.next_power_of_2(K)))
        s = scale(v, eps, preserve_scale, derivatives=False)
        out = torch.empty_like(x)
        _forward_kernel[(grid,)](x, weight, gain, m, s, out, C, HW, Cg, BLOCK=BLOCK)
        ctx.save_for_backward(x, weight, gain, m, v)
        ctx.args = (groups, eps, preserve_scale)
        return out

    @staticmethod
    def backward(ctx, dy):
        x, weight, gain, m, v = ctx.saved_tensors
        dx, dw, dgain = GNSiLUBackward.apply(dy, x, weight, gain, m, v, *ctx.args)
        return dx, dw, dgain, None, None, None


class GNSiLUBackward(torch.autograd.Function):

    @staticmethod
    def forward(ctx, dy, x, weight, gain, m, v, groups, eps, preserve_scale):
        dy = dy.contiguous()
        N, C = x.shape[:2]
        grid, HW, Cg, BLOCK = _launch_config(x, groups)
        ds = scale(v, eps, preserve_scale)
        A, B = torch.empty_like(m), torch.empty_like(m)
        P = torch.empty(N, C, device=x.device, dtype=torch.float32)
        _backward_reduce_kernel[(grid,)](dy, x, weight, gain, m, ds[0], A, B, P, C, HW, Cg, BLOCK=BLOCK)
        dv, c = backward_coefs(ds, A, Cg * HW)
        dx = torch.empty_like(x)
        _backward_apply_kernel[(grid,)](dy, x, weight, gain, m, ds[0], c, B, dx, C, HW, Cg, BLOCK=BLOCK)
        ctx.save_for_backward(dy, x, weight, gain, m, v, A, B, dv)
        ctx.args = (groups, eps, preserve_scale)
        ctx.set_materialize_grads(False)
        dw = (P * gain).sum(dim=0).to(weight.dtype)                    # deterministic sum over n
        return dx, dw, (P * weight).to(gain.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, ux, uw, ugain):
        dy, x, weight, gain, m, v, A, B, dv = ctx.saved_tensors
        groups, eps, preserve_scale = ctx.args
        if ux is None and uw is None and ugain is None:
            return (None,) * 9
        N, C = x.shape[:2]
        grid, HW, Cg, BLOCK = _launch_config(x, groups)
        K = Cg * HW
        ds = scale(v, eps, preserve_scale)
        uw = torch.zeros_like(weight) if uw is None else uw.contiguous()
        ugain = torch.zeros_like(gain) if ugain is None else ugain.contiguous()
        U1, U2 = torch.zeros_like(m), torch.zeros_like(m)
        if ux is not None:
            ux = ux.contiguous()
            _tangent_reduce_kernel[(grid,)](ux, x, m, U1, U2, K, BLOCK=min(1024, triton.next_power_of_2(K)))
        umean, v_dot, b_dot, s_dot = tangent_coefs(ds, U1, U2, K)
        has_ux = ux is not None
        ux_arg = ux if has_ux else x                                   # never read when has_ux is False
        g_dy = torch.empty_like(dy)
        R1, R2, R3 = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
        Q = torch.empty(N, C, device=x.device, dtype=torch.float32)
        P = torch.empty_like(Q)
        _double_reduce_kernel[(grid,)](dy, x, ux_arg, weight, gain, uw, ugain, m, ds[0], umean, s_dot,
                                       g_dy, R1, R2, R3, Q, P, C, HW, Cg, HAS_UX=has_ux, BLOCK=BLOCK)
        c1, c2 = double_backward_coefs(ds, A, dv, v_dot, b_dot, R1, R2, K)
        gx = torch.empty_like(x)
        _double_apply_kernel[(grid,)](dy, x, ux_arg, weight, gain, uw, ugain, m, ds[0], umean, s_dot,
                                      c1, c2, B, R3, gx, C, HW, Cg, HAS_UX=has_ux, BLOCK=BLOCK)
        gw = (gain * Q + ugain * P).sum(dim=0).to(weight.dtype)
        ggain = (weight * Q + uw * P).to(gain.dtype)
        return g_dy, gx, gw, ggain, None, None, None, None, None


def group_norm_silu_triton(x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    if x.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError("group_norm_silu: the Triton path got CPU tensors but triton's interpreter is off; "
                           "set TRITON_INTERPRET=1 before kernels' Triton code is first imported, or use impl='torch'")
    return GNSiLU.apply(x, weight, gain, groups, eps, preserve_scale)
