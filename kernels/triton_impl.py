"""Triton kernels of group_norm_silu, chained through two autograd Functions so the op is
differentiable twice (SPEC 8):

    GNSiLU.forward           Triton forward                       saves x, weight, gain, m, v, vbar
    GNSiLU.backward          calls GNSiLUBackward.apply(dy, ...)  (recorded under create_graph=True)
    GNSiLUBackward.forward   Triton first backward                -> dx, dw, dgain
    GNSiLUBackward.backward  Triton double backward               -> grads of dy, x, w, gain

The formulas, their derivation and their check against autograd are in derivation.py; these
kernels implement them pass by pass with the same names. Two kinds of kernel:
- per (sample n, group g), grid N * G: a group is the contiguous block of K = Cg * HW values
  starting at (n * G + g) * K, visited channel by channel in BLOCK-sized chunks with int64
  offsets. They recompute s_g from (v_g, vbar_n) and write per-group sums to (N, G) buffers and
  per-channel sums to (N, C) buffers.
- per sample n, grid N (the *_coef kernels): the steps that couple the groups of a sample through
  vbar (derivation.py's backward_coefs, tangent_coefs, double_backward_coefs), one program holding
  all G groups of its sample.
Statistics and sums are fp32 whatever the input dtype, the variance is two-pass (mean, then mean
of squared deviations), and every reduction is one program's or a torch sum over samples (dw), so
results are deterministic (no atomics). The only torch ops are vbar = mean_g v, the sums over
samples giving dw, and zero-filling absent incoming grads.

Under TRITON_INTERPRET=1 (read by triton when this module is imported) the kernels run on CPU
tensors, which is how the CI tests run them.
"""
import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

INTERPRETED = bool(triton.knobs.runtime.interpret)


@triton.jit
def _silu_grads(a):
    sig = tl.sigmoid(a)
    return sig * (1 + a * (1 - sig)), sig * (1 - sig) * (2 + a * (1 - 2 * sig))


@triton.jit
def _scale(v, vbar, eps, PRESERVE: tl.constexpr):
    """s = sqrt(vbar / (v + eps) + eps), or (v + eps)^-1/2 for plain GroupNorm."""
    if PRESERVE:
        s = tl.sqrt(vbar / (v + eps) + eps)
    else:
        s = tl.sqrt(1.0 / (v + eps))
    return s


@triton.jit
def _scale_derivatives(v, vbar, eps, PRESERVE: tl.constexpr):
    """(s_v, s_b, s_vv, s_vb, s_bb): derivation.scale's partial derivatives of s."""
    q = 1.0 / (v + eps)
    s = _scale(v, vbar, eps, PRESERVE)
    if PRESERVE:
        s3 = s * s * s
        s_v = -vbar * q * q / (2 * s)
        s_b = q / (2 * s)
        s_vv = vbar * q * q * q / s - vbar * vbar * q * q * q * q / (4 * s3)
        s_vb = -q * q / (2 * s) + vbar * q * q * q / (4 * s3)
        s_bb = -q * q / (4 * s3)
    else:
        s_v = -0.5 * s * s * s
        s_b = 0.0 * s
        s_vv = 0.75 * s * s * s * s * s
        s_vb = 0.0 * s
        s_bb = 0.0 * s
    return s_v, s_b, s_vv, s_vb, s_bb


# ---- forward --------------------------------------------------------------------------------------

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


@triton.jit(do_not_specialize=["C"])
def _forward_kernel(x_ptr, w_ptr, gain_ptr, m_ptr, v_ptr, vbar_ptr, out_ptr, eps, C, HW, Cg,
                    PRESERVE: tl.constexpr, BLOCK: tl.constexpr):
    """out = silu((x - m) s w gain)."""
    pid = tl.program_id(0)
    n = pid // (C // Cg)
    m = tl.load(m_ptr + pid)
    s = _scale(tl.load(v_ptr + pid), tl.load(vbar_ptr + n), eps, PRESERVE)
    offs = tl.arange(0, BLOCK)
    for c in range(Cg):
        row = pid * Cg + c                                             # n * C + channel
        wg = tl.load(w_ptr + row - n * C).to(tl.float32) * tl.load(gain_ptr + row).to(tl.float32)
        base = row.to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            a = (x - m) * s * wg
            tl.store(out_ptr + base + start + offs, a * tl.sigmoid(a), mask=mask)


# ---- first backward -------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["C"])
def _backward_reduce_kernel(dy_ptr, x_ptr, w_ptr, gain_ptr, m_ptr, v_ptr, vbar_ptr,
                            A_ptr, B_ptr, dgain_ptr, dwn_ptr, eps, C, HW, Cg,
                            PRESERVE: tl.constexpr, BLOCK: tl.constexpr):
    """A_g = sum gh xc, B_g = sum gh (gh = da w gain); with P_nc = sum_hw da xhat,
    dgain_nc = w_c P_nc and dwn_nc = gain_nc P_nc (dw = sum_n dwn)."""
    pid = tl.program_id(0)
    n = pid // (C // Cg)
    m = tl.load(m_ptr + pid)
    s = _scale(tl.load(v_ptr + pid), tl.load(vbar_ptr + n), eps, PRESERVE)
    offs = tl.arange(0, BLOCK)
    A = 0.0
    B = 0.0
    for c in range(Cg):
        row = pid * Cg + c
        w = tl.load(w_ptr + row - n * C).to(tl.float32)
        gn = tl.load(gain_ptr + row).to(tl.float32)
        wg = w * gn
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
        P = s * sum_xc
        tl.store(dgain_ptr + row, w * P)
        tl.store(dwn_ptr + row, gn * P)
    tl.store(A_ptr + pid, A)
    tl.store(B_ptr + pid, B)


@triton.jit(do_not_specialize=["G"])
def _backward_coef_kernel(v_ptr, vbar_ptr, A_ptr, dv_ptr, eps, G, PRESERVE: tl.constexpr, BLOCK_G: tl.constexpr):
    """dv_g = A_g s_v,g + mean_g' A_g' s_b,g' for the G groups of one sample."""
    n = tl.program_id(0)
    offs = tl.arange(0, BLOCK_G)
    mask = offs < G
    v = tl.load(v_ptr + n * G + offs, mask=mask, other=1.0)
    A = tl.load(A_ptr + n * G + offs, mask=mask, other=0.0)
    s_v, s_b, _, _, _ = _scale_derivatives(v, tl.load(vbar_ptr + n), eps, PRESERVE)
    dv = A * s_v + tl.sum(tl.where(mask, A * s_b, 0.0), axis=0) / G
    tl.store(dv_ptr + n * G + offs, dv, mask=mask)


@triton.jit(do_not_specialize=["C"])
def _backward_apply_kernel(dy_ptr, x_ptr, w_ptr, gain_ptr, m_ptr, v_ptr, vbar_ptr, dv_ptr, B_ptr, dx_ptr,
                           eps, C, HW, Cg, PRESERVE: tl.constexpr, BLOCK: tl.constexpr):
    """dx = s (gh - B / K) + (2 dv / K) xc."""
    pid = tl.program_id(0)
    n = pid // (C // Cg)
    K = Cg * HW
    m = tl.load(m_ptr + pid)
    s = _scale(tl.load(v_ptr + pid), tl.load(vbar_ptr + n), eps, PRESERVE)
    c_xc = 2 * tl.load(dv_ptr + pid) / K
    mean_gh = tl.load(B_ptr + pid) / K
    offs = tl.arange(0, BLOCK)
    for c in range(Cg):
        row = pid * Cg + c
        wg = tl.load(w_ptr + row - n * C).to(tl.float32) * tl.load(gain_ptr + row).to(tl.float32)
        base = row.to(tl.int64) * HW
        for start in range(0, HW, BLOCK):
            mask = start + offs < HW
            x = tl.load(x_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            dy = tl.load(dy_ptr + base + start + offs, mask=mask, other=0.0).to(tl.float32)
            xc = x - m
            silu1, _ = _silu_grads(xc * s * wg)
            dx = s * (wg * (dy * silu1) - mean_gh) + c_xc * xc
            tl.store(dx_ptr + base + start + offs, dx, mask=mask)


# ---- double backward ------------------------------------------------------------------------------

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


@triton.jit(do_not_specialize=["G"])
def _tangent_coef_kernel(v_ptr, vbar_ptr, U2_ptr, sdot_ptr, eps, G, K, PRESERVE: tl.constexpr, BLOCK_G: tl.constexpr):
    """s_dot = s_v v_dot + s_b vbar_dot, with v_dot = 2 U2 / K and vbar_dot = mean_g v_dot."""
    n = tl.program_id(0)
    offs = tl.arange(0, BLOCK_G)
    mask = offs < G
    v = tl.load(v_ptr + n * G + offs, mask=mask, other=1.0)
    v_dot = 2 * tl.load(U2_ptr + n * G + offs, mask=mask, other=0.0) / K
    b_dot = tl.sum(v_dot, axis=0) / G
    s_v, s_b, _, _, _ = _scale_derivatives(v, tl.load(vbar_ptr + n), eps, PRESERVE)
    tl.store(sdot_ptr + n * G + offs, s_v * v_dot + s_b * b_dot, mask=mask)


@triton.jit
def _double_terms(dy, x, ux, m, s, umean, s_dot, wg, ug):
    """Per-element terms of the double backward (derivation.py): the tangent, then its adjoint."""
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


@triton.jit(do_not_specialize=["C"])
def _double_reduce_kernel(dy_ptr, x_ptr, ux_ptr, w_ptr, gain_ptr, uw_ptr, ugain_ptr, m_ptr, v_ptr, vbar_ptr,
                          U1_ptr, sdot_ptr, gdy_ptr, R1_ptr, R2_ptr, R3_ptr, ggain_ptr, gwn_ptr,
                          eps, C, HW, Cg, PRESERVE: tl.constexpr, HAS_UX: tl.constexpr, BLOCK: tl.constexpr):
    """g_dy = out_dot (stored); R1 = sum Gx xc, R2 = sum gh xc_dot, R3 = sum Gx per group; with
    Q_nc = sum_hw (g_a xhat + da xhat_dot) and P_nc = sum_hw da xhat per channel,
    ggain_nc = w_c Q_nc + uw_c P_nc and gwn_nc = gain_nc Q_nc + ugain_nc P_nc (gw = sum_n gwn)."""
    pid = tl.program_id(0)
    n = pid // (C // Cg)
    m = tl.load(m_ptr + pid)
    s = _scale(tl.load(v_ptr + pid), tl.load(vbar_ptr + n), eps, PRESERVE)
    umean = tl.load(U1_ptr + pid) / (Cg * HW)
    s_dot = tl.load(sdot_ptr + pid)
    offs = tl.arange(0, BLOCK)
    R1 = 0.0
    R2 = 0.0
    R3 = 0.0
    for c in range(Cg):
        row = pid * Cg + c
        w = tl.load(w_ptr + row - n * C).to(tl.float32)
        uw = tl.load(uw_ptr + row - n * C).to(tl.float32)
        gn = tl.load(gain_ptr + row).to(tl.float32)
        ugn = tl.load(ugain_ptr + row).to(tl.float32)
        wg = w * gn
        ug = uw * gn + w * ugn
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
            acc_r1 += Gx * xc                                          # Gx, da, g_a are 0 where masked
            acc_r2 += da * xc_dot
            acc_r3 += Gx
            acc_q += g_a * xhat + da * xhat_dot
            acc_p += da * xhat
        R1 += tl.sum(acc_r1, axis=0)
        R2 += wg * tl.sum(acc_r2, axis=0)
        R3 += tl.sum(acc_r3, axis=0)
        Q = tl.sum(acc_q, axis=0)
        P = tl.sum(acc_p, axis=0)
        tl.store(ggain_ptr + row, w * Q + uw * P)
        tl.store(gwn_ptr + row, gn * Q + ugn * P)
    tl.store(R1_ptr + pid, R1)
    tl.store(R2_ptr + pid, R2)
    tl.store(R3_ptr + pid, R3)


@triton.jit(do_not_specialize=["G"])
def _double_coef_kernel(v_ptr, vbar_ptr, A_ptr, U2_ptr, R1_ptr, R2_ptr, gvt_ptr, eps, G, K,
                        PRESERVE: tl.constexpr, BLOCK_G: tl.constexpr):
    """gvt_g = gv_g + gb / G: the total gradient of L2 w.r.t. v_g (derivation.double_backward_coefs)."""
    n = tl.program_id(0)
    offs = tl.arange(0, BLOCK_G)
    mask = offs < G
    v = tl.load(v_ptr + n * G + offs, mask=mask, other=1.0)
    A = tl.load(A_ptr + n * G + offs, mask=mask, other=0.0)
    v_dot = 2 * tl.load(U2_ptr + n * G + offs, mask=mask, other=0.0) / K
    b_dot = tl.sum(v_dot, axis=0) / G
    gs = tl.load(R1_ptr + n * G + offs, mask=mask, other=0.0) + tl.load(R2_ptr + n * G + offs, mask=mask, other=0.0)
    s_v, s_b, s_vv, s_vb, s_bb = _scale_derivatives(v, tl.load(vbar_ptr + n), eps, PRESERVE)
    gv = gs * s_v + A * (s_vv * v_dot + s_vb * b_dot)
    gb = tl.sum(tl.where(mask, gs * s_b + A * (s_vb * v_dot + s_bb * b_dot), 0.0), axis=0)
    tl.store(gvt_ptr + n * G + offs, gv + gb / G, mask=mask)


@triton.jit(do_not_specialize=["C"])
def _double_apply_kernel(dy_ptr, x_ptr, ux_ptr, w_ptr, gain_ptr, uw_ptr, ugain_ptr, m_ptr, v_ptr, vbar_ptr,
                         U1_ptr, sdot_ptr, dv_ptr, gvt_ptr, B_ptr, R3_ptr, gx_ptr,
                         eps, C, HW, Cg, PRESERVE: tl.constexpr, HAS_UX: tl.constexpr, BLOCK: tl.constexpr):
    """gx = s (Gx - R3 / K) + s_dot (gh - B / K) + (2 dv / K) xc_dot + (2 gvt / K) xc."""
    pid = tl.program_id(0)
    n = pid // (C // Cg)
    K = Cg * HW
    m = tl.load(m_ptr + pid)
    s = _scale(tl.load(v_ptr + pid), tl.load(vbar_ptr + n), eps, PRESERVE)
    umean = tl.load(U1_ptr + pid) / K
    s_dot = tl.load(sdot_ptr + pid)
    c1 = 2 * tl.load(dv_ptr + pid) / K
    c2 = 2 * tl.load(gvt_ptr + pid) / K
    mean_gh = tl.load(B_ptr + pid) / K
    mean_Gx = tl.load(R3_ptr + pid) / K
    offs = tl.arange(0, BLOCK)
    for c in range(Cg):
        row = pid * Cg + c
        w = tl.load(w_ptr + row - n * C).to(tl.float32)
        gn = tl.load(gain_ptr + row).to(tl.float32)
        wg = w * gn
        ug = tl.load(uw_ptr + row - n * C).to(tl.float32) * gn + w * tl.load(ugain_ptr + row).to(tl.float32)
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


# ---- host side ------------------------------------------------------------------------------------

def _sizes(x, groups):
    """(N, C, HW, Cg, BLOCK over HW, BLOCK over a group, BLOCK over the groups of a sample).
    Blocks are at least 128 (the lanes of 4 warps) and 32: fewer compiled variants, no cost."""
    N, C, H, W = x.shape
    HW, Cg = H * W, C // groups
    block = lambda n: min(1024, max(128, triton.next_power_of_2(n)))
    return N, C, HW, Cg, block(HW), block(Cg * HW), max(32, triton.next_power_of_2(groups))


class GNSiLU(torch.autograd.Function):

    @staticmethod
    def forward(ctx, x, weight, gain, groups, eps, preserve_scale):
        x, weight, gain = x.contiguous(), weight.contiguous(), gain.contiguous()
        N, C, HW, Cg, BLOCK, BLOCK_K, _ = _sizes(x, groups)
        m = torch.empty(N, groups, device=x.device, dtype=torch.float32)
        v = torch.empty_like(m)
        _stats_kernel[(N * groups,)](x, m, v, Cg * HW, BLOCK=BLOCK_K)
        vbar = v.mean(dim=1)                                           # (N,)
        out = torch.empty_like(x)
        _forward_kernel[(N * groups,)](x, weight, gain, m, v, vbar, out, eps, C, HW, Cg,
                                       PRESERVE=preserve_scale, BLOCK=BLOCK)
        ctx.save_for_backward(x, weight, gain, m, v, vbar)
        ctx.args = (groups, eps, preserve_scale)
        return out

    @staticmethod
    def backward(ctx, dy):
        dx, dw, dgain = GNSiLUBackward.apply(dy, *ctx.saved_tensors, *ctx.args)
        return dx, dw, dgain, None, None, None


class GNSiLUBackward(torch.autograd.Function):

    @staticmethod
    def forward(ctx, dy, x, weight, gain, m, v, vbar, groups, eps, preserve_scale):
        dy = dy.contiguous()
        N, C, HW, Cg, BLOCK, _, BLOCK_G = _sizes(x, groups)
        A, B, dv = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
        dgain = torch.empty_like(gain)
        dwn = torch.empty(N, C, device=x.device, dtype=torch.float32)
        _backward_reduce_kernel[(N * groups,)](dy, x, weight, gain, m, v, vbar, A, B, dgain, dwn, eps, C, HW, Cg,
                                               PRESERVE=preserve_scale, BLOCK=BLOCK)
        _backward_coef_kernel[(N,)](v, vbar, A, dv, eps, groups, PRESERVE=preserve_scale, BLOCK_G=BLOCK_G)
        dx = torch.empty_like(x)
        _backward_apply_kernel[(N * groups,)](dy, x, weight, gain, m, v, vbar, dv, B, dx, eps, C, HW, Cg,
                                              PRESERVE=preserve_scale, BLOCK=BLOCK)
        ctx.save_for_backward(dy, x, weight, gain, m, v, vbar, A, B, dv)
        ctx.args = (groups, eps, preserve_scale)
        ctx.set_materialize_grads(False)
        return dx, dwn.sum(dim=0).to(weight.dtype), dgain                # deterministic sum over n

    @staticmethod
    @once_differentiable
    def backward(ctx, ux, uw, ugain):
        if ux is None and uw is None and ugain is None:
            return (None,) * 10
        dy, x, weight, gain, m, v, vbar, A, B, dv = ctx.saved_tensors
        groups, eps, preserve_scale = ctx.args
        N, C, HW, Cg, BLOCK, BLOCK_K, BLOCK_G = _sizes(x, groups)
        K = Cg * HW
        uw = torch.zeros_like(weight) if uw is None else uw.contiguous()
        ugain = torch.zeros_like(gain) if ugain is None else ugain.contiguous()
        has_ux = ux is not None
        if has_ux:
            ux = ux.contiguous()
            U1, U2, s_dot = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
            _tangent_reduce_kernel[(N * groups,)](ux, x, m, U1, U2, K, BLOCK=BLOCK_K)
            _tangent_coef_kernel[(N,)](v, vbar, U2, s_dot, eps, groups, K, PRESERVE=preserve_scale, BLOCK_G=BLOCK_G)
        else:
            ux = x                                                     # never read when HAS_UX is False
            U1 = U2 = s_dot = torch.zeros_like(m)
        g_dy = torch.empty_like(dy)
        R1, R2, R3, gvt = (torch.empty_like(m) for _ in range(4))
        ggain = torch.empty_like(gain)
        gwn = torch.empty(N, C, device=x.device, dtype=torch.float32)
        _double_reduce_kernel[(N * groups,)](dy, x, ux, weight, gain, uw, ugain, m, v, vbar, U1, s_dot,
                                             g_dy, R1, R2, R3, ggain, gwn, eps, C, HW, Cg,
                                             PRESERVE=preserve_scale, HAS_UX=has_ux, BLOCK=BLOCK)
        _double_coef_kernel[(N,)](v, vbar, A, U2, R1, R2, gvt, eps, groups, K, PRESERVE=preserve_scale, BLOCK_G=BLOCK_G)
        gx = torch.empty_like(x)
        _double_apply_kernel[(N * groups,)](dy, x, ux, weight, gain, uw, ugain, m, v, vbar, U1, s_dot,
                                            dv, gvt, B, R3, gx, eps, C, HW, Cg,
                                            PRESERVE=preserve_scale, HAS_UX=has_ux, BLOCK=BLOCK)
        return g_dy, gx, gwn.sum(dim=0).to(weight.dtype), ggain, None, None, None, None, None, None


def group_norm_silu_triton(x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    if x.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError("group_norm_silu: the Triton path got CPU tensors but triton's interpreter is off; "
                           "set TRITON_INTERPRET=1 before kernels' Triton code is first imported, or use impl='torch'")
    return GNSiLU.apply(x, weight, gain, groups, eps, preserve_scale)
