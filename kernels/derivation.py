"""Hand-derived backward and double backward of group_norm_silu, and the PyTorch backend built on them.

The formulas below are derived by hand (llm.c style); this file implements them twice over the same
coefficient steps: as the "derived" backend (forward / backward / double_backward, chained by
function.py into a twice-differentiable op; the CPU path of group_norm_silu), and as the recipe
the Triton kernels follow pass by pass (triton_impl.py uses the same names). tests/test_kernels.py
checks this backend against autograd of reference.py in float64, every layout included. The
per-group coefficient steps (`scale`, `backward_coefs`, `tangent_coefs`, `double_backward_coefs`)
act on small (N, G) tensors and couple the groups of a sample through vbar; triton_impl.py's *_coef
kernels compute them, one program per sample.

Notation. x is viewed as (N, G, Cg, HW); a group holds K = Cg * HW values; sums run over a group.
    xc = x - m_g            m_g = mean x,   v_g = mean xc^2,   vbar = mean_g v_g (per sample)
    s_g = sqrt(vbar / (v_g + eps) + eps)    (preserve_scale)   or   (v_g + eps)^-1/2   (plain)
    xhat = xc * s_g,    a = xhat * w_c * gain_nc,    out = silu(a)
    silu'(a) = sig (1 + a (1 - sig)),    silu''(a) = sig (1 - sig) (2 + a (1 - 2 sig))

Backward, given dy = dL/dout:
    da = dy silu'(a);   gh = da w gain  (= dL/dxhat)
    A_g = sum gh xc,    B_g = sum gh,   P_nc = sum_hw da xhat
    dv_g = A_g s_v,g + mean_g' (A_g' s_b,g')          (s_v = ds/dv_g, s_b = ds/dvbar; s_b = 0 plain)
    dx = s (gh - B / K) + (2 dv / K) xc               (- B / K removes the group mean)
    dgain_nc = w_c P_nc,   dw_c = sum_n gain_nc P_nc

Double backward. The first-order grads are the gradient of F = <dy, out(x, w, gain)>, so for
incoming grads (ux, uw, ugain) of (dx, dw, dgain)
    L2 = <ux, dx> + <uw, dw> + <ugain, dgain> = <dy, out_dot>,
out_dot being the forward-mode tangent of out in the direction (ux, uw, ugain). Hence
dL2/d dy = out_dot, and dL2/d(x, w, gain) is reverse mode through the tangent computation:
    tangent:  xc_dot = ux - mean ux,  v_dot = (2/K) sum xc ux,  vbar_dot = mean_g v_dot,
              s_dot = s_v v_dot + s_b vbar_dot,  xhat_dot = xc_dot s + xc s_dot,
              a_dot = xhat_dot w gain + xhat (uw gain + w ugain),  out_dot = silu'(a) a_dot
    reverse:  g_a = dy silu''(a) a_dot,  Gx = g_a w gain + da (uw gain + w ugain)  (= dL2/dxhat)
              R1 = sum Gx xc,  R2 = sum gh xc_dot,  R3 = sum Gx
              Q_nc = sum_hw (g_a xhat + da xhat_dot)
              gs = R1 + R2                                            (dL2/ds, direct)
              gv = gs s_v + A (s_vv v_dot + s_vb vbar_dot)            (dL2/dv_g, direct)
              gb = sum_g [gs s_b + A (s_vb v_dot + s_bb vbar_dot)]   (dL2/dvbar)
              gx = s (Gx - R3 / K) + s_dot (gh - B / K) + (2 dv / K) xc_dot
                   + (2 (gv + gb / G) / K) xc
              ggain_nc = w_c Q_nc + uw_c P_nc,   gw_c = sum_n (gain_nc Q_nc + ugain_nc P_nc)
The (2 dv / K) xc_dot term is the path through v_dot, whose adjoint is dv of the first backward.
Second derivatives of s = sqrt(r), r = vbar q + eps, q = 1 / (v + eps): s_x = r_x / (2 s),
s_xy = r_xy / (2 s) - r_x r_y / (4 s^3), with r_v = -vbar q^2, r_b = q, r_vv = 2 vbar q^3,
r_vb = -q^2, r_bb = 0; plain: s = q^1/2, s_v = -s^3 / 2, s_vv = 3 s^5 / 4.

How the passes below are fused (kernels/README.md, "CPU backend"). Every full-size quantity is a
per-(n, c) affine combination of at most four full-size tensors, so each output is a chain of
addcmul's with (N, C, 1, 1) coefficients, and every sum over a group is assembled from per-channel
sums over H, W (sum t, <t, x>, <t, ux>) instead of materialising xc, xhat, gh, Gx or xhat_dot:
    forward          a = (x - m) alpha,  alpha = s w gain;  out = silu(a)           (a saved)
    backward         da = silu_backward(dy, a)  (one aten op: dy silu'(a));         (da saved)
                     S1 = sum_hw da,  S2 = sum_hw da x  ->  A, B, P;  dx = da s w gain + x c + const
    double backward  a_dot = ux s w gain + x (s_dot w gain + s ug) + const,  g_dy = silu_backward(a_dot, a),
                     g_a = dy silu''(a) a_dot;  sums of g_a, g_a x, da ux, ux, ux x -> R1, R2, R3, Q;
                     gx = g_a s w gain + da (s ug + s_dot w gain) + ux c1 + x c2 + const
with ug = uw gain + w ugain. Elementwise ops keep the input's memory format (channels_last stays
channels_last); sums over H, W accept any strides.
"""
import torch
import torch.nn.functional as F


def scale(v, eps, preserve_scale, derivatives=True):
    """s (N, G) and its partial derivatives (s_v, s_b, s_vv, s_vb, s_bb) in v_g and vbar;
    s alone if derivatives is False."""
    q = 1.0 / (v + eps)
    if not preserve_scale:
        s = q.sqrt()
        if not derivatives:
            return s
        zero = torch.zeros_like(s)
        return s, -0.5 * s ** 3, zero, 0.75 * s ** 5, zero, zero
    vbar = v.mean(dim=1, keepdim=True)                                # (N, 1)
    s = (vbar * q + eps).sqrt()
    if not derivatives:
        return s
    s3 = s ** 3
    s_v = -vbar * q ** 2 / (2 * s)
    s_b = q / (2 * s)
    s_vv = vbar * q ** 3 / s - vbar ** 2 * q ** 4 / (4 * s3)
    s_vb = -q ** 2 / (2 * s) + vbar * q ** 3 / (4 * s3)
    s_bb = -q ** 2 / (4 * s3)
    return s, s_v, s_b, s_vv, s_vb, s_bb


def backward_coefs(ds, A, K):
    """dv (N, G), and c such that dx = s (gh - B / K) + c xc."""
    s_v, s_b = ds[1:3]
    dv = A * s_v + (A * s_b).mean(dim=1, keepdim=True)
    return dv, 2 * dv / K


def tangent_coefs(ds, U1, U2, K):
    """mean ux, v_dot, vbar_dot, s_dot (all (N, G) or (N, 1)) from U1 = sum ux, U2 = sum xc ux."""
    s_v, s_b = ds[1:3]
    v_dot = 2 * U2 / K
    b_dot = v_dot.mean(dim=1, keepdim=True)
    return U1 / K, v_dot, b_dot, s_v * v_dot + s_b * b_dot


def double_backward_coefs(ds, A, dv, v_dot, b_dot, R1, R2, K):
    """c1, c2 such that gx = s (Gx - R3 / K) + s_dot (gh - B / K) + c1 xc_dot + c2 xc."""
    s, s_v, s_b, s_vv, s_vb, s_bb = ds
    gs = R1 + R2
    gv = gs * s_v + A * (s_vv * v_dot + s_vb * b_dot)
    gb = (gs * s_b + A * (s_vb * v_dot + s_bb * b_dot)).sum(dim=1, keepdim=True)
    G = s.shape[1]
    return 2 * dv / K, 2 * (gv + gb / G) / K


# ---- the derived backend: per-channel sums, per-group coefficients, addcmul chains ---------------

def compute_dtype(x):
    """fp32 statistics and arithmetic whatever the input dtype (fp64 stays fp64), as reference.py."""
    return torch.promote_types(x.dtype, torch.float32)


def _sum(t):
    return t.sum(dim=(2, 3))                                           # (N, C)


def _dot(t, u):
    return torch.linalg.vecdot(t.flatten(2), u.flatten(2))            # (N, C): sum_hw t u


def _per_group(t, G):
    """(N, C) per-channel values -> (N, G) sums over the channels of each group."""
    return t.view(t.shape[0], G, -1).sum(dim=2)


def _per_channel(t, C):
    """(N, G) or (N, 1) per-group values -> (N, C), each channel taking its group's value."""
    return t.repeat_interleave(C // t.shape[1], dim=1) if t.shape[1] > 1 else t.expand(-1, C)


def _affine(const, *pairs):
    """const + sum_i t_i * coef_i, coefficients (N, C) broadcast over H, W: one addcmul per term."""
    out = None
    for t, coef in pairs:
        coef = coef[..., None, None]
        out = torch.addcmul(const[..., None, None], t, coef) if out is None else out.addcmul_(t, coef)
    return out


def forward(x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    """out, and the state the backward needs: a (the SiLU input, full size), m, v (N, G)."""
    N, C = x.shape[:2]
    dt, out_dtype = compute_dtype(x), x.dtype
    x = x.to(dt)
    K = x[0].numel() // groups
    m = _per_group(_sum(x), groups) / K                               # (N, G)
    xc = x - _per_channel(m, C)[..., None, None]
    v = _per_group(_dot(xc, xc), groups) / K                          # two-pass variance, (N, G)
    s = _per_channel(scale(v, eps, preserve_scale, derivatives=False), C)
    a = xc.mul_((s * weight.to(dt) * gain.to(dt))[..., None, None])   # (x - m) s w gain, in place of xc
    return F.silu(a).to(out_dtype), (a, m, v)


def backward(dy, x, weight, gain, state, groups, eps=1e-5, preserve_scale=True):
    """(dx, dw, dgain) and the state the double backward needs: da (full size), S1, S2, A, B, dv."""
    a, m, v = state
    N, C = x.shape[:2]
    dt = a.dtype
    x, weight, gain = x.to(dt), weight.to(dt), gain.to(dt)
    K = x[0].numel() // groups
    ds = scale(v, eps, preserve_scale)
    m_c, s_c = _per_channel(m, C), _per_channel(ds[0], C)
    da = torch.ops.aten.silu_backward(dy.to(dt), a)                   # dy silu'(a)
    S1, S2 = _sum(da), _dot(da, x)                                     # (N, C)
    Pc = S2 - m_c * S1                                                 # sum_hw da xc
    wg = weight * gain
    A, B = _per_group(wg * Pc, groups), _per_group(wg * S1, groups)   # sum gh xc, sum gh
    dv, c = backward_coefs(ds, A, K)
    c_c = _per_channel(c, C)
    alpha = s_c * wg
    dx = _affine(-s_c * _per_channel(B, C) / K - c_c * m_c, (x, c_c), (da, alpha))   # s (gh - B / K) + c xc
    P = s_c * Pc                                                       # sum_hw da xhat
    return (dx, (P * gain).sum(dim=0), P * weight), (da, S1, S2, A, B, dv)


def double_backward(dy, x, weight, gain, state, state2, ux, uw, ugain, groups, eps=1e-5, preserve_scale=True):
    """(g_dy, gx, gw, ggain): gradients of <ux, dx> + <uw, dw> + <ugain, dgain>; any u may be None."""
    a, m, v = state
    da, S1, S2, A, B, dv = state2
    N, C = x.shape[:2]
    dt = a.dtype
    x, weight, gain = x.to(dt), weight.to(dt), gain.to(dt)
    G, K = groups, x[0].numel() // groups
    ds = scale(v, eps, preserve_scale)
    m_c, s_c = _per_channel(m, C), _per_channel(ds[0], C)
    wg = weight * gain
    uw = torch.zeros_like(weight) if uw is None else uw.to(dt)
    ugain = torch.zeros_like(gain) if ugain is None else ugain.to(dt)
    ug = uw * gain + weight * ugain                                    # (N, C)
    if ux is not None:
        ux = ux.to(dt)
        U1 = _sum(ux)
        umean, v_dot, b_dot, s_dot = tangent_coefs(ds, _per_group(U1, G), _per_group(_dot(ux, x) - m_c * U1, G), K)
        umean_c, sdot_c = _per_channel(umean, C), _per_channel(s_dot, C)
        Sdaux = _dot(da, ux) - umean_c * S1                            # sum_hw da xc_dot
    else:
        v_dot = b_dot = torch.zeros_like(v)
        umean_c = sdot_c = Sdaux = torch.zeros_like(wg)
    # a_dot = xhat_dot w gain + xhat ug = ux p1 + x p2 - umean p1 - m p2
    p1, p2 = s_c * wg, sdot_c * wg + s_c * ug
    pairs = ((x, p2),) if ux is None else ((x, p2), (ux, p1))
    a_dot = _affine(-umean_c * p1 - m_c * p2, *pairs)
    g_dy = torch.ops.aten.silu_backward(a_dot, a)                     # silu'(a) a_dot = out_dot
    sig = torch.sigmoid(a)
    g_a = torch.add(a, a * sig, alpha=-2).add_(2)                      # 2 + a (1 - 2 sig)
    g_a.mul_(torch.addcmul(sig, sig, sig, value=-1)).mul_(a_dot).mul_(dy.to(dt))   # dy silu''(a) a_dot
    Sga, Sgax = _sum(g_a), _dot(g_a, x)
    Pc = S2 - m_c * S1                                                 # sum_hw da xc
    Sgaxc = Sgax - m_c * Sga                                           # sum_hw g_a xc
    R1 = _per_group(wg * Sgaxc + ug * Pc, G)                           # sum Gx xc
    R2 = _per_group(wg * Sdaux, G)                                     # sum gh xc_dot
    R3 = _per_group(wg * Sga + ug * S1, G)                             # sum Gx
    Q = s_c * (Sgaxc + Sdaux) + sdot_c * Pc                            # sum_hw (g_a xhat + da xhat_dot)
    P = s_c * Pc
    c1, c2 = (_per_channel(c, C) for c in double_backward_coefs(ds, A, dv, v_dot, b_dot, R1, R2, K))
    const = (-s_c * _per_channel(R3, C) - sdot_c * _per_channel(B, C)) / K - c1 * umean_c - c2 * m_c
    pairs = ((g_a, s_c * wg), (da, s_c * ug + sdot_c * wg), (x, c2)) + (() if ux is None else ((ux, c1),))
    gx = _affine(const, *pairs)
    return g_dy, gx, (gain * Q + ugain * P).sum(dim=0), weight * Q + uw * P
