"""The Triton backend of group_norm_silu (docs/method.md §8): three passes, each a few kernel launches,
chained by function.py into a twice-differentiable op (the same wiring as derivation.py's backend):

    forward          2 launches + torch mean (vbar)          -> out;  state m, v, vbar (N, G), (N,)
    backward         3 launches + torch sum over n (dw)      -> dx, dw, dgain;  state A, B, dv (N, G)
    double_backward  5 launches + torch sum over n (gw)      -> grads of dy, x, weight, gain

The formulas, their derivation and their check against autograd are in derivation.py; these
kernels implement them pass by pass with the same names. Two kinds of kernel:
- per tile of groups: a program takes GPP consecutive groups (flat index n * G + g), all their
  channels (CGB slots for the Cg channels) and walks H * W in BLOCK-sized chunks, a
  (GPP, CGB, BLOCK) tile with int64 offsets; small images get several groups per program, large
  ones one. They recompute s_g from (v_g, vbar_n) and write per-group sums to (N, G) buffers and
  per-channel sums to (N, C) buffers.
- per sample n, grid N (the *_coef kernels): the steps that couple the groups of a sample through
  vbar (derivation.py's backward_coefs, tangent_coefs, double_backward_coefs), one program holding
  all G groups of its sample.
Statistics and sums are fp32 whatever the input dtype, the variance is two-pass (mean, then mean
of squared deviations), and every reduction is one program's or a torch sum over samples (dw), so
results are deterministic (no atomics). The only torch ops are vbar = mean_g v, the sums over
samples giving dw, and zero-filling absent incoming grads.

The kernels index NCHW-contiguous tensors: each pass copies other layouts (channels_last, slices,
expanded gains) with _dense and returns NCHW-contiguous results; launches run under a device guard
on the tensors' device. Under TRITON_INTERPRET=1 (read by triton when this module is imported) the
kernels run on CPU tensors, which is how the CI tests run them.
"""
import contextlib
import os

import torch
import triton
import triton.language as tl

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")  # as triton reads it


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


# ---- tiles: a program handles GPP consecutive groups, all their channels, HW in BLOCK chunks ----------

@triton.jit
def _tile(pid, NG, Cg, GPP: tl.constexpr, CGB: tl.constexpr):
    """Groups grp (GPP,) = n * G + g of program pid and their rows (GPP, CGB) = n * C + channel."""
    grp = pid * GPP + tl.arange(0, GPP)
    gmask = grp < NG
    ci = tl.arange(0, CGB)
    row = grp.to(tl.int64)[:, None] * Cg + ci[None, :]
    return grp, gmask, row, gmask[:, None] & (ci[None, :] < Cg)


@triton.jit
def _chunk(row, rmask, start, HW, BLOCK: tl.constexpr):
    """int64 offsets (GPP, CGB, BLOCK) of positions [start, start + BLOCK) of every row, and mask."""
    hw = start + tl.arange(0, BLOCK)
    return row[:, :, None] * HW + hw[None, None, :], rmask[:, :, None] & (hw < HW)[None, None, :]


@triton.jit
def _group_stats(grp, gmask, m_ptr, v_ptr, vbar_ptr, G, eps, PRESERVE: tl.constexpr):
    """m_g and s_g (GPP,) of the program's groups."""
    m = tl.load(m_ptr + grp, mask=gmask, other=0.0)
    v = tl.load(v_ptr + grp, mask=gmask, other=1.0)
    return m, _scale(v, tl.load(vbar_ptr + grp // G, mask=gmask, other=1.0), eps, PRESERVE)


@triton.jit
def _load_rows(ptr, offs, mask):
    return tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)


# ---- forward --------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["NG", "Cg"])
def _stats_kernel(x_ptr, m_ptr, v_ptr, NG, Cg, HW, GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """m_g = mean x and v_g = mean (x - m_g)^2 of each group (two passes)."""
    grp, gmask, row, rmask = _tile(tl.program_id(0), NG, Cg, GPP, CGB)
    acc = tl.zeros([GPP, CGB], dtype=tl.float32)
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        acc += tl.sum(_load_rows(x_ptr, offs, mask), axis=2)
    m = tl.sum(acc, axis=1) / (Cg * HW)
    acc = tl.zeros([GPP, CGB], dtype=tl.float32)
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        xc = _load_rows(x_ptr, offs, mask) - m[:, None, None]
        acc += tl.sum(tl.where(mask, xc * xc, 0.0), axis=2)
    tl.store(m_ptr + grp, m, mask=gmask)
    tl.store(v_ptr + grp, tl.sum(acc, axis=1) / (Cg * HW), mask=gmask)


@triton.jit(do_not_specialize=["NG", "G", "C", "Cg"])
def _forward_kernel(x_ptr, w_ptr, gain_ptr, m_ptr, v_ptr, vbar_ptr, out_ptr, eps, NG, G, C, Cg, HW,
                    PRESERVE: tl.constexpr, GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """out = silu((x - m) s w gain)."""
    grp, gmask, row, rmask = _tile(tl.program_id(0), NG, Cg, GPP, CGB)
    m, s = _group_stats(grp, gmask, m_ptr, v_ptr, vbar_ptr, G, eps, PRESERVE)
    swg = s[:, None] * _load_rows(w_ptr, row % C, rmask) * _load_rows(gain_ptr, row, rmask)
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        a = (_load_rows(x_ptr, offs, mask) - m[:, None, None]) * swg[:, :, None]
        tl.store(out_ptr + offs, a * tl.sigmoid(a), mask=mask)


# ---- first backward -------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["NG", "G", "C", "Cg"])
def _backward_reduce_kernel(dy_ptr, x_ptr, w_ptr, gain_ptr, m_ptr, v_ptr, vbar_ptr, A_ptr, B_ptr, dgain_ptr, dwn_ptr,
                            eps, NG, G, C, Cg, HW,
                            PRESERVE: tl.constexpr, GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """A_g = sum gh xc, B_g = sum gh (gh = da w gain); with P_nc = sum_hw da xhat,
    dgain_nc = w_c P_nc and dwn_nc = gain_nc P_nc (dw = sum_n dwn)."""
    grp, gmask, row, rmask = _tile(tl.program_id(0), NG, Cg, GPP, CGB)
    m, s = _group_stats(grp, gmask, m_ptr, v_ptr, vbar_ptr, G, eps, PRESERVE)
    w = _load_rows(w_ptr, row % C, rmask)
    gn = _load_rows(gain_ptr, row, rmask)
    swg = s[:, None] * w * gn
    sum_xc = tl.zeros([GPP, CGB], dtype=tl.float32)
    sum_1 = tl.zeros([GPP, CGB], dtype=tl.float32)
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        xc = _load_rows(x_ptr, offs, mask) - m[:, None, None]
        silu1, _ = _silu_grads(xc * swg[:, :, None])
        da = _load_rows(dy_ptr, offs, mask) * silu1                   # 0 where masked (dy = 0)
        sum_xc += tl.sum(da * xc, axis=2)
        sum_1 += tl.sum(da, axis=2)
    P = s[:, None] * sum_xc
    tl.store(dgain_ptr + row, w * P, mask=rmask)
    tl.store(dwn_ptr + row, gn * P, mask=rmask)
    tl.store(A_ptr + grp, tl.sum(w * gn * sum_xc, axis=1), mask=gmask)
    tl.store(B_ptr + grp, tl.sum(w * gn * sum_1, axis=1), mask=gmask)


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


@triton.jit(do_not_specialize=["NG", "G", "C", "Cg"])
def _backward_apply_kernel(dy_ptr, x_ptr, w_ptr, gain_ptr, m_ptr, v_ptr, vbar_ptr, dv_ptr, B_ptr, dx_ptr,
                           eps, NG, G, C, Cg, HW,
                           PRESERVE: tl.constexpr, GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """dx = s (gh - B / K) + (2 dv / K) xc."""
    grp, gmask, row, rmask = _tile(tl.program_id(0), NG, Cg, GPP, CGB)
    m, s = _group_stats(grp, gmask, m_ptr, v_ptr, vbar_ptr, G, eps, PRESERVE)
    K = Cg * HW
    c_xc = 2 * tl.load(dv_ptr + grp, mask=gmask, other=0.0) / K
    mean_gh = tl.load(B_ptr + grp, mask=gmask, other=0.0) / K
    wg = _load_rows(w_ptr, row % C, rmask) * _load_rows(gain_ptr, row, rmask)
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        xc = _load_rows(x_ptr, offs, mask) - m[:, None, None]
        silu1, _ = _silu_grads(xc * (s[:, None] * wg)[:, :, None])
        gh = wg[:, :, None] * (_load_rows(dy_ptr, offs, mask) * silu1)
        dx = s[:, None, None] * (gh - mean_gh[:, None, None]) + c_xc[:, None, None] * xc
        tl.store(dx_ptr + offs, dx, mask=mask)


# ---- double backward ------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["NG", "Cg"])
def _tangent_reduce_kernel(ux_ptr, x_ptr, m_ptr, U1_ptr, U2_ptr, NG, Cg, HW,
                           GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """U1_g = sum ux, U2_g = sum xc ux of each group."""
    grp, gmask, row, rmask = _tile(tl.program_id(0), NG, Cg, GPP, CGB)
    m = tl.load(m_ptr + grp, mask=gmask, other=0.0)
    acc1 = tl.zeros([GPP, CGB], dtype=tl.float32)
    acc2 = tl.zeros([GPP, CGB], dtype=tl.float32)
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        ux = _load_rows(ux_ptr, offs, mask)
        acc1 += tl.sum(ux, axis=2)
        acc2 += tl.sum((_load_rows(x_ptr, offs, mask) - m[:, None, None]) * ux, axis=2)
    tl.store(U1_ptr + grp, tl.sum(acc1, axis=1), mask=gmask)
    tl.store(U2_ptr + grp, tl.sum(acc2, axis=1), mask=gmask)


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


@triton.jit
def _double_params(grp, gmask, row, rmask, w_ptr, gain_ptr, uw_ptr, ugain_ptr, U1_ptr, sdot_ptr, C, K):
    """Per-row w, gain, w gain, uw gain + w ugain (GPP, CGB) and per-group mean ux, s_dot (GPP,)."""
    w = _load_rows(w_ptr, row % C, rmask)
    gn = _load_rows(gain_ptr, row, rmask)
    ug = _load_rows(uw_ptr, row % C, rmask) * gn + w * _load_rows(ugain_ptr, row, rmask)
    umean = tl.load(U1_ptr + grp, mask=gmask, other=0.0) / K
    return w, gn, w * gn, ug, umean, tl.load(sdot_ptr + grp, mask=gmask, other=0.0)


@triton.jit
def _double_chunk(dy_ptr, x_ptr, ux_ptr, offs, mask, m, s, umean, s_dot, wg, ug,
                  HAS_UX: tl.constexpr, GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """_double_terms of one chunk: loads dy, x and ux (0 without it) and broadcasts the per-group m, s,
    umean, s_dot and per-row wg, ug over the chunk; shared by both double-backward passes."""
    if HAS_UX:
        ux = _load_rows(ux_ptr, offs, mask)
    else:
        ux = tl.zeros([GPP, CGB, BLOCK], dtype=tl.float32)
    return _double_terms(_load_rows(dy_ptr, offs, mask), _load_rows(x_ptr, offs, mask), ux, m[:, None, None],
                         s[:, None, None], umean[:, None, None], s_dot[:, None, None], wg[:, :, None], ug[:, :, None])


@triton.jit(do_not_specialize=["NG", "G", "C", "Cg"])
def _double_reduce_kernel(dy_ptr, x_ptr, ux_ptr, w_ptr, gain_ptr, uw_ptr, ugain_ptr, m_ptr, v_ptr, vbar_ptr,
                          U1_ptr, sdot_ptr, gdy_ptr, R1_ptr, R2_ptr, R3_ptr, ggain_ptr, gwn_ptr,
                          eps, NG, G, C, Cg, HW, PRESERVE: tl.constexpr, HAS_UX: tl.constexpr,
                          GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """g_dy = out_dot (stored); R1 = sum Gx xc, R2 = sum gh xc_dot, R3 = sum Gx per group; with
    Q_nc = sum_hw (g_a xhat + da xhat_dot) and P_nc = sum_hw da xhat per channel,
    ggain_nc = w_c Q_nc + uw_c P_nc and gwn_nc = gain_nc Q_nc + ugain_nc P_nc (gw = sum_n gwn)."""
    grp, gmask, row, rmask = _tile(tl.program_id(0), NG, Cg, GPP, CGB)
    m, s = _group_stats(grp, gmask, m_ptr, v_ptr, vbar_ptr, G, eps, PRESERVE)
    w, gn, wg, ug, umean, s_dot = _double_params(grp, gmask, row, rmask, w_ptr, gain_ptr, uw_ptr, ugain_ptr,
                                                 U1_ptr, sdot_ptr, C, Cg * HW)
    r1 = tl.zeros([GPP, CGB], dtype=tl.float32)
    r2 = tl.zeros([GPP, CGB], dtype=tl.float32)
    r3 = tl.zeros([GPP, CGB], dtype=tl.float32)
    Q = tl.zeros([GPP, CGB], dtype=tl.float32)
    P = tl.zeros([GPP, CGB], dtype=tl.float32)
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        xc, xhat, xc_dot, xhat_dot, out_dot, da, g_a, Gx = _double_chunk(
            dy_ptr, x_ptr, ux_ptr, offs, mask, m, s, umean, s_dot, wg, ug, HAS_UX, GPP, CGB, BLOCK)
        tl.store(gdy_ptr + offs, out_dot, mask=mask)
        r1 += tl.sum(Gx * xc, axis=2)                                  # Gx, da, g_a are 0 where masked
        r2 += tl.sum(da * xc_dot, axis=2)
        r3 += tl.sum(Gx, axis=2)
        Q += tl.sum(g_a * xhat + da * xhat_dot, axis=2)
        P += tl.sum(da * xhat, axis=2)
    uw = _load_rows(uw_ptr, row % C, rmask)
    tl.store(ggain_ptr + row, w * Q + uw * P, mask=rmask)
    tl.store(gwn_ptr + row, gn * Q + _load_rows(ugain_ptr, row, rmask) * P, mask=rmask)
    tl.store(R1_ptr + grp, tl.sum(r1, axis=1), mask=gmask)
    tl.store(R2_ptr + grp, tl.sum(wg * r2, axis=1), mask=gmask)
    tl.store(R3_ptr + grp, tl.sum(r3, axis=1), mask=gmask)


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


@triton.jit(do_not_specialize=["NG", "G", "C", "Cg"])
def _double_apply_kernel(dy_ptr, x_ptr, ux_ptr, w_ptr, gain_ptr, uw_ptr, ugain_ptr, m_ptr, v_ptr, vbar_ptr,
                         U1_ptr, sdot_ptr, dv_ptr, gvt_ptr, B_ptr, R3_ptr, gx_ptr,
                         eps, NG, G, C, Cg, HW, PRESERVE: tl.constexpr, HAS_UX: tl.constexpr,
                         GPP: tl.constexpr, CGB: tl.constexpr, BLOCK: tl.constexpr):
    """gx = s (Gx - R3 / K) + s_dot (gh - B / K) + (2 dv / K) xc_dot + (2 gvt / K) xc."""
    grp, gmask, row, rmask = _tile(tl.program_id(0), NG, Cg, GPP, CGB)
    K = Cg * HW
    m, s = _group_stats(grp, gmask, m_ptr, v_ptr, vbar_ptr, G, eps, PRESERVE)
    w, gn, wg, ug, umean, s_dot = _double_params(grp, gmask, row, rmask, w_ptr, gain_ptr, uw_ptr, ugain_ptr,
                                                 U1_ptr, sdot_ptr, C, K)
    c1 = 2 * tl.load(dv_ptr + grp, mask=gmask, other=0.0) / K
    c2 = 2 * tl.load(gvt_ptr + grp, mask=gmask, other=0.0) / K
    mean_gh = tl.load(B_ptr + grp, mask=gmask, other=0.0) / K
    mean_Gx = tl.load(R3_ptr + grp, mask=gmask, other=0.0) / K
    for start in range(0, HW, BLOCK):
        offs, mask = _chunk(row, rmask, start, HW, BLOCK)
        xc, xhat, xc_dot, xhat_dot, out_dot, da, g_a, Gx = _double_chunk(
            dy_ptr, x_ptr, ux_ptr, offs, mask, m, s, umean, s_dot, wg, ug, HAS_UX, GPP, CGB, BLOCK)
        gx = (s[:, None, None] * (Gx - mean_Gx[:, None, None])
              + s_dot[:, None, None] * (wg[:, :, None] * da - mean_gh[:, None, None])
              + c1[:, None, None] * xc_dot + c2[:, None, None] * xc)
        tl.store(gx_ptr + offs, gx, mask=mask)


# ---- host side ------------------------------------------------------------------------------------

TILE = 1024                                  # values per program and chunk: 4 per thread with 8 warps
NUM_WARPS = 8                                # 4 warps need ~2x the registers (254 in the double backward at 8x8)


def _sizes(x, groups):
    """Launch geometry: a program covers GPP groups x CGB channel slots x BLOCK positions
    (<= TILE unless a group has more than TILE / 16 channels); BLOCK_G covers a sample's groups."""
    N, C, H, W = x.shape
    HW, Cg = H * W, C // groups
    CGB = triton.next_power_of_2(Cg)
    BLOCK = max(16, min(triton.next_power_of_2(HW), TILE // CGB))
    GPP = max(1, TILE // (CGB * BLOCK))
    sizes = dict(NG=N * groups, Cg=Cg, HW=HW, GPP=GPP, CGB=CGB, BLOCK=BLOCK, num_warps=NUM_WARPS)
    return sizes, (triton.cdiv(N * groups, GPP),)


def _block_g(groups):
    return max(32, triton.next_power_of_2(groups))


def _guard(x):
    """Launch on x's device, not the current one (--device=cuda:1 outside torchrun)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


def _dense(t):
    """The NCHW-contiguous tensor the kernels index (a copy for channels_last, slices, expanded
    gains); made inside a pass, so it never enters the autograd graph (function.py)."""
    return t.contiguous()


def forward(x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    """out, and the state (m, v, vbar) of the next passes."""
    x, weight, gain = _dense(x), _dense(weight), _dense(gain)
    N, C = x.shape[:2]
    sz, grid = _sizes(x, groups)
    with _guard(x):
        m = torch.empty(N, groups, device=x.device, dtype=torch.float32)
        v = torch.empty_like(m)
        _stats_kernel[grid](x, m, v, **sz)
        vbar = v.mean(dim=1)                                           # (N,)
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
        _forward_kernel[grid](x, weight, gain, m, v, vbar, out, eps, G=groups, C=C, PRESERVE=preserve_scale, **sz)
    return out, (m, v, vbar)


def backward(dy, x, weight, gain, state, groups, eps=1e-5, preserve_scale=True):
    """(dx, dw, dgain), and the state (A, B, dv) of the double backward."""
    m, v, vbar = state
    dy, x, weight, gain = _dense(dy), _dense(x), _dense(weight), _dense(gain)
    N, C = x.shape[:2]
    sz, grid = _sizes(x, groups)
    with _guard(x):
        A, B, dv = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
        dgain = torch.empty_like(gain)
        dwn = torch.empty(N, C, device=x.device, dtype=torch.float32)
        _backward_reduce_kernel[grid](dy, x, weight, gain, m, v, vbar, A, B, dgain, dwn, eps,
                                      G=groups, C=C, PRESERVE=preserve_scale, **sz)
        _backward_coef_kernel[(N,)](v, vbar, A, dv, eps, groups, PRESERVE=preserve_scale, BLOCK_G=_block_g(groups))
        dx = torch.empty_like(x, memory_format=torch.contiguous_format)
        _backward_apply_kernel[grid](dy, x, weight, gain, m, v, vbar, dv, B, dx, eps,
                                     G=groups, C=C, PRESERVE=preserve_scale, **sz)
    return (dx, dwn.sum(dim=0), dgain), (A, B, dv)                      # deterministic sum over n


def double_backward(dy, x, weight, gain, state, state2, ux, uw, ugain, groups, eps=1e-5, preserve_scale=True):
    """(g_dy, gx, gw, ggain): gradients of <ux, dx> + <uw, dw> + <ugain, dgain>; any u may be None."""
    (m, v, vbar), (A, B, dv) = state, state2
    dy, x, weight, gain = _dense(dy), _dense(x), _dense(weight), _dense(gain)
    N, C = x.shape[:2]
    sz, grid = _sizes(x, groups)
    K = sz["Cg"] * sz["HW"]
    with _guard(x):
        uw = torch.zeros_like(weight) if uw is None else _dense(uw)
        ugain = torch.zeros_like(gain) if ugain is None else _dense(ugain)
        has_ux = ux is not None
        if has_ux:
            ux = _dense(ux)
            U1, U2, s_dot = torch.empty_like(m), torch.empty_like(m), torch.empty_like(m)
            _tangent_reduce_kernel[grid](ux, x, m, U1, U2, **sz)
            _tangent_coef_kernel[(N,)](v, vbar, U2, s_dot, eps, groups, K, PRESERVE=preserve_scale, BLOCK_G=_block_g(groups))
        else:
            ux = x                                                     # never read when HAS_UX is False
            U1 = U2 = s_dot = torch.zeros_like(m)
        g_dy = torch.empty_like(dy, memory_format=torch.contiguous_format)
        R1, R2, R3, gvt = (torch.empty_like(m) for _ in range(4))
        ggain = torch.empty_like(gain)
        gwn = torch.empty(N, C, device=x.device, dtype=torch.float32)
        _double_reduce_kernel[grid](dy, x, ux, weight, gain, uw, ugain, m, v, vbar, U1, s_dot,
                                    g_dy, R1, R2, R3, ggain, gwn, eps,
                                    G=groups, C=C, PRESERVE=preserve_scale, HAS_UX=has_ux, **sz)
        _double_coef_kernel[(N,)](v, vbar, A, U2, R1, R2, gvt, eps, groups, K,
                                  PRESERVE=preserve_scale, BLOCK_G=_block_g(groups))
        gx = torch.empty_like(x, memory_format=torch.contiguous_format)
        _double_apply_kernel[grid](dy, x, ux, weight, gain, uw, ugain, m, v, vbar, U1, s_dot,
                                   dv, gvt, B, R3, gx, eps,
                                   G=groups, C=C, PRESERVE=preserve_scale, HAS_UX=has_ux, **sz)
    return g_dy, gx, gwn.sum(dim=0), ggain


def usable(device):
    """None if the kernels can run on tensors of this device, else why not (one line)."""
    if device.type == "cpu" and not INTERPRETED:
        return ("the Triton path got CPU tensors but triton's interpreter is off; set TRITON_INTERPRET=1 "
                "before kernels' Triton code is first imported, or use impl='derived'")
    if device.type not in ("cpu", "cuda"):
        return f"Triton kernels run on CUDA tensors (or CPU under the interpreter), not {device.type}"
    return None
