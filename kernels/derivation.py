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
per-(n, c) affine combination of a few full-size tensors, so each output is a chain of addcmul's with
(N, C, 1, 1) coefficients; every sum over a group is assembled from per-channel sums over H, W, and
each pair (sum_hw t, sum_hw t (u - mean)) comes from ONE read-only pass (`_sums`: aten's batch-norm
backward reduction), so xhat, gh, Gx, xhat_dot and the products under the sums are never written.
The forward keeps xc = x - m (one full-size tensor more per layer) for the later passes. Full-size
writes per pass (the denoiser step runs forward + backward, the dual score matching step forward,
backward twice, double backward once):
    forward          xc = x - m;  a = xc alpha,  alpha = s w gain;  out = silu(a)                    3
    backward         da = silu_backward(dy, a) (one aten op: dy silu'(a));  S1, Pc = sums of da, da xc;
                     dx = xc c + const, then += da alpha                                             3
    double backward  sums of ux, ux xc and da (ux - mean ux);  uxc = ux - mean ux;
                     a_dot = xc p2, then += uxc p1;  g_dy = silu_backward(a_dot, a);
                     g_a / 2 = sigmoid_backward(X (1 + (a - 2 out) / 2), sigmoid(a)), X = a_dot dy
                     (= dy silu''(a) a_dot / 2; 5 writes);  sums of g_a, g_a xc;
                     gx = g_a p1 + const in place of g_a, then += da (s ug + s_dot w gain),
                     += xc c2, += uxc c1                                                             13
with ug = uw gain + w ugain. Elementwise ops keep the input's memory format (channels_last stays
channels_last); the sums accept any layout (a copy to NCHW first when it is not NCHW-contiguous).
"""
import torch
import torch.nn.functional as F


def scale(v, eps, preserve_scale, order=2):
    """s (N, G) and its partial derivatives in v_g and vbar up to `order`: s (order 0),
    (s, s_v, s_b) (order 1), (s, s_v, s_b, s_vv, s_vb, s_bb) (order 2).

    With h = q / (2 s) = s_b: s_v = -vbar q h, s_bb = -h^2 / s, s_vb = -q (h + vbar s_bb),
    s_vv = vbar q^2 (2 h + vbar s_bb), the formulas of the docstring with shared factors."""
    q = (v + eps).reciprocal()
    if not preserve_scale:
        s = q.sqrt()
        if order == 0:
            return s
        zero = torch.zeros_like(s)
        s3 = s ** 3
        first = (s, -0.5 * s3, zero)
        return first if order == 1 else first + (0.75 * s3 * s * s, zero, zero)
    vbar = v.mean(dim=1, keepdim=True)                                # (N, 1)
    s = torch.addcmul(torch.full_like(q, eps), vbar, q).sqrt_()
    if order == 0:
        return s
    h = q / (2 * s)
    first = (s, -vbar * q * h, h)
    if order == 1:
        return first
    s_bb = -(h * h) / s
    vb_s_bb = vbar * s_bb
    return first + (vbar * q * q * (2 * h + vb_s_bb), -q * (h + vb_s_bb), s_bb)


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


def _per_group(t, G):
    """(N, C) per-channel values -> (N, G) sums over the channels of each group."""
    return t if t.shape[1] == G else t.view(t.shape[0], G, -1).sum(dim=2)


def _per_channel(t, C):
    """(N, G) per-group values -> (N, C), each channel taking its group's value."""
    N, G = t.shape
    return t if G == C else t[:, :, None].expand(N, G, C // G).reshape(N, C)


def _bc(t):
    return t.view(*t.shape, 1, 1)                                      # (N, C) -> (N, C, 1, 1)


def _sums(t, u, mean, ones):
    """(sum_hw t, sum_hw t (u - mean)), each (N, C), in ONE read-only pass over t and u (mean: N C values).

    The per-channel reduction of aten's batch-norm backward (sum dy and sum dy (x - mean), with the mean
    it is given) on the (1, N C, H W) view and invstd = ones: a centred sum without writing u - mean or
    the product (a reshape copies only inputs that are not NCHW-contiguous, e.g. channels_last). The op
    reads mean by its data pointer, strides ignored: an expanded mean (a group's value repeated over its
    channels) must be made contiguous first."""
    N, C = t.shape[:2]
    shape = (1, N * C, -1)
    _, dot, total = torch.ops.aten.native_batch_norm_backward(t.reshape(shape), u.reshape(shape), None, None, None,
                                                              mean.reshape(-1).contiguous(), ones, True, 0.0,
                                                              [False, True, True])
    return total.view(N, C), dot.view(N, C)


def forward(x, weight, gain, groups, eps=1e-5, preserve_scale=True):
    """out, and the state of the next passes: a (the SiLU input) and xc = x - m, both full size, out,
    and v, s, s_v, s_b (N, G). Keeping xc (one full-size tensor per layer) spares the later passes
    recomputing it."""
    N, C = x.shape[:2]
    dt, out_dtype = compute_dtype(x), x.dtype
    x = x.to(dt)
    K = x[0].numel() // groups
    m = x.mean(dim=(2, 3)) if groups == C else _per_group(x.sum(dim=(2, 3)), groups) / K   # (N, G)
    xc = x - _bc(_per_channel(m, C))
    v = _per_group(torch.linalg.vector_norm(xc, dim=(2, 3)).square_(), groups) / K   # two-pass variance, (N, G)
    s, s_v, s_b = scale(v, eps, preserve_scale, order=1)
    a = xc * _bc(_per_channel(s, C) * weight.to(dt) * gain.to(dt))    # (x - m) s w gain
    out = F.silu(a).to(out_dtype)
    return out, (a, xc, out, v, s, s_v, s_b)


def backward(dy, x, weight, gain, state, groups, eps=1e-5, preserve_scale=True):
    """(dx, dw, dgain) and the state the double backward needs: da (full size), S1, Pc, A, B, dv.

    Every sum over a group uses the centred xc = x - m, not sum x - m sum: with few values per group (a
    1x1 middle block) the coefficient of xc reaches 1 / eps^(3/2), and the uncentred form would turn
    rounding errors of size |m| into wrong gradients where the exact ones are 0."""
    a, xc, _, _, s, s_v, s_b = state
    N, C = x.shape[:2]
    dt = a.dtype
    weight, gain = weight.to(dt), gain.to(dt)
    K = x[0].numel() // groups
    s_c = _per_channel(s, C)
    da = torch.ops.aten.silu_backward(dy.to(dt), a)                   # dy silu'(a)
    ones = torch.ones(N * C, dtype=dt, device=a.device)
    S1, Pc = _sums(da, xc, ones - 1, ones)                             # sum_hw da, sum_hw da xc: (N, C)
    wg = weight * gain
    A, B = _per_group(wg * Pc, groups), _per_group(wg * S1, groups)   # sum gh xc, sum gh
    dv, c = backward_coefs((s, s_v, s_b), A, K)
    alpha = s_c * wg
    const = s_c * _per_channel(B, C) * (-1 / K)
    dx = torch.addcmul(_bc(const), xc, _bc(_per_channel(c, C)))       # s (gh - B / K) + c xc
    dx.addcmul_(da, _bc(alpha))
    P = s_c * Pc                                                       # sum_hw da xhat
    return (dx, (P * gain).sum(dim=0), P * weight), (da, S1, Pc, A, B, dv)


def double_backward(dy, x, weight, gain, state, state2, ux, uw, ugain, groups, eps=1e-5, preserve_scale=True):
    """(g_dy, gx, gw, ggain): gradients of <ux, dx> + <uw, dw> + <ugain, dgain>; any u may be None."""
    a, xc, out, v = state[:4]
    da, S1, Pc, A, B, dv = state2
    N, C = x.shape[:2]
    dt = a.dtype
    weight, gain = weight.to(dt), gain.to(dt)
    G, K = groups, x[0].numel() // groups
    ds = scale(v, eps, preserve_scale)
    s_c = _per_channel(ds[0], C)
    wg = weight * gain
    if uw is None and ugain is None:
        ug = ugain = torch.zeros_like(wg)
        uw = torch.zeros_like(weight)
    else:
        uw = torch.zeros_like(weight) if uw is None else uw.to(dt)
        ugain = torch.zeros_like(gain) if ugain is None else ugain.to(dt)
        ug = torch.addcmul(uw * gain, weight, ugain)                   # uw gain + w ugain, (N, C)
    ones = torch.ones(N * C, dtype=dt, device=a.device)
    zeros = ones - 1
    if ux is not None:
        ux = ux.to(dt)
        U1, U2 = _sums(ux, xc, zeros, ones)                            # sum_hw ux, sum_hw xc ux
        umean, v_dot, b_dot, s_dot = tangent_coefs(ds, _per_group(U1, G), _per_group(U2, G), K)
        sdot_c, umean_c = _per_channel(s_dot, C), _per_channel(umean, C)
        Sdaux = _sums(da, ux, umean_c, ones)[1]                        # sum_hw da xc_dot
        uxc = ux - _bc(umean_c)                                        # xc_dot = ux - mean ux
    else:
        v_dot = b_dot = torch.zeros_like(v)
        sdot_c = Sdaux = torch.zeros_like(wg)
    # a_dot = xhat_dot w gain + xhat ug = xc_dot p1 + xc p2
    p1, p2 = s_c * wg, torch.addcmul(sdot_c * wg, s_c, ug)
    a_dot = xc * _bc(p2)
    if ux is not None:
        a_dot.addcmul_(uxc, _bc(p1))
    g_dy = torch.ops.aten.silu_backward(a_dot, a)                     # silu'(a) a_dot = out_dot
    silu_a = out if out.dtype == dt else F.silu(a)                     # a sig; out is rounded in bf16
    # g_a = dy silu''(a) a_dot = 2 sig (1 - sig) (1 + a (1 - 2 sig) / 2) a_dot dy, computed as half_g_a
    h = torch.add(a, silu_a, alpha=-2)                                 # a (1 - 2 sig)
    half_g_a = torch.mul(a_dot, dy.to(dt))
    half_g_a.addcmul_(h, half_g_a, value=0.5)
    half_g_a = torch.ops.aten.sigmoid_backward(half_g_a, torch.sigmoid(a))
    Sga, Sgaxc = (2 * t for t in _sums(half_g_a, xc, zeros, ones))    # sum_hw g_a, sum_hw g_a xc
    R1 = _per_group(torch.addcmul(wg * Sgaxc, ug, Pc), G)              # sum Gx xc
    R2 = _per_group(wg * Sdaux, G)                                     # sum gh xc_dot
    R3 = _per_group(torch.addcmul(wg * Sga, ug, S1), G)                # sum Gx
    Q = torch.addcmul(s_c * (Sgaxc + Sdaux), sdot_c, Pc)               # sum_hw (g_a xhat + da xhat_dot)
    P = s_c * Pc                                                       # sum_hw da xhat
    c1, c2 = (_per_channel(c, C) for c in double_backward_coefs(ds, A, dv, v_dot, b_dot, R1, R2, K))
    const = torch.addcmul(s_c * _per_channel(R3, C), sdot_c, _per_channel(B, C)) * (-1 / K)   # -(s R3 + s_dot B) / K
    gx = torch.addcmul(_bc(const), half_g_a, _bc(2 * p1), out=half_g_a)   # g_a p1 + const, in place
    gx.addcmul_(da, _bc(torch.addcmul(s_c * ug, sdot_c, wg)))
    gx.addcmul_(xc, _bc(c2))
    if ux is not None:
        gx.addcmul_(uxc, _bc(c1))
    return g_dy, gx, (gain * Q + ugain * P).sum(dim=0), torch.addcmul(weight * Q, uw, P)
