"""Hand-derived backward and double backward of group_norm_silu, in plain PyTorch (llm.c style).

These are the formulas the Triton kernels implement (triton_impl.py uses the same names);
tests/test_kernels.py checks them against autograd of reference.py in float64, and the kernels
against the reference. The per-group coefficient steps (`scale`, `backward_coefs`,
`tangent_coefs`, `double_backward_coefs`) act on small (N, G) tensors and couple the groups of a
sample through vbar; triton_impl.py's *_coef kernels compute them, one program per sample.

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
"""
import torch


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


def silu_derivatives(a):
    sig = torch.sigmoid(a)
    return sig * (1 + a * (1 - sig)), sig * (1 - sig) * (2 + a * (1 - 2 * sig))


def _views(x, weight, gain, groups):
    N, C, H, W = x.shape
    xg = x.reshape(N, groups, C // groups, H * W)                      # (N, G, Cg, HW)
    w = weight.reshape(1, groups, C // groups, 1)
    gn = gain.reshape(N, groups, C // groups, 1)
    return xg, w, gn, xg.shape[2] * xg.shape[3]


def forward(x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    """out, and the stats (m, v) per (sample, group); the same math as reference.py."""
    xg, w, gn, K = _views(x, weight, gain, groups)
    m = xg.mean(dim=(2, 3))                                            # (N, G)
    xc = xg - m[..., None, None]
    v = (xc * xc).mean(dim=(2, 3))                                     # two-pass variance
    s = scale(v, eps, preserve_scale, derivatives=False)
    a = xc * s[..., None, None] * w * gn
    return torch.nn.functional.silu(a).reshape(x.shape), m, v


def backward(dy, x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    """(dx, dw, dgain) from the formulas above."""
    xg, w, gn, K = _views(x, weight, gain, groups)
    _, m, v = forward(x, weight, gain, groups, eps, preserve_scale)
    ds = scale(v, eps, preserve_scale)
    s = ds[0][..., None, None]
    xc = xg - m[..., None, None]
    xhat = xc * s
    silu1, _ = silu_derivatives(xhat * w * gn)
    da = dy.reshape(xg.shape) * silu1
    gh = da * w * gn
    A, B = (gh * xc).sum(dim=(2, 3)), gh.sum(dim=(2, 3))
    P = (da * xhat).sum(dim=3).reshape(gain.shape)                     # (N, C)
    c = backward_coefs(ds, A, K)[1]
    dx = s * (gh - B[..., None, None] / K) + c[..., None, None] * xc
    return dx.reshape(x.shape), (P * gain).sum(dim=0), P * weight


def double_backward(dy, x, weight, gain, ux, uw, ugain, groups, eps=1e-5, preserve_scale=True):
    """(g_dy, gx, gw, ggain): gradients of <ux, dx> + <uw, dw> + <ugain, dgain>."""
    xg, w, gn, K = _views(x, weight, gain, groups)
    _, m, v = forward(x, weight, gain, groups, eps, preserve_scale)
    ds = scale(v, eps, preserve_scale)
    s = ds[0][..., None, None]
    xc = xg - m[..., None, None]
    xhat = xc * s
    a = xhat * w * gn
    silu1, silu2 = silu_derivatives(a)
    dyg = dy.reshape(xg.shape)
    uxg = ux.reshape(xg.shape)
    da = dyg * silu1
    gh = da * w * gn
    A, B = (gh * xc).sum(dim=(2, 3)), gh.sum(dim=(2, 3))
    dv = backward_coefs(ds, A, K)[0]
    umean, v_dot, b_dot, s_dot = tangent_coefs(ds, uxg.sum(dim=(2, 3)), (xc * uxg).sum(dim=(2, 3)), K)
    xc_dot = uxg - umean[..., None, None]
    xhat_dot = xc_dot * s + xc * s_dot[..., None, None]
    ugain_eff = uw.reshape(w.shape) * gn + w * ugain.reshape(gn.shape)  # (N, G, Cg, 1)
    a_dot = xhat_dot * w * gn + xhat * ugain_eff
    g_dy = silu1 * a_dot
    g_a = dyg * silu2 * a_dot
    Gx = g_a * w * gn + da * ugain_eff
    R1, R2, R3 = (Gx * xc).sum(dim=(2, 3)), (gh * xc_dot).sum(dim=(2, 3)), Gx.sum(dim=(2, 3))
    Q = (g_a * xhat + da * xhat_dot).sum(dim=3).reshape(gain.shape)    # (N, C)
    P = (da * xhat).sum(dim=3).reshape(gain.shape)
    c1, c2 = double_backward_coefs(ds, A, dv, v_dot, b_dot, R1, R2, K)
    gx = (s * (Gx - R3[..., None, None] / K) + s_dot[..., None, None] * (gh - B[..., None, None] / K)
          + c1[..., None, None] * xc_dot + c2[..., None, None] * xc)
    gw = (gain * Q + ugain * P).sum(dim=0)
    ggain = weight * Q + uw * P
    return g_dy.reshape(x.shape), gx.reshape(x.shape), gw, ggain
