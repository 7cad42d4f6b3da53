"""The normalization certificate: log Z(0) = log int exp(-U(y, 0)) dy by annealed importance sampling along t
(docs/normalization.md §4), and the Metropolis-adjusted Langevin step that it and sample.py share.

    y ~ N(m, Sigma + t_0 I)                          a Gaussian with an exact normalizer Z_G (model.StationaryGaussian:
                                                     the model's own Gaussian term, else one fitted to the data)
    log w  = -U(y, t_0) - log N(y; m, Sigma + t_0 I)      so E[w] = Z(t_0)
    for k = 1 .. K   (t_0 = t_max > t_1 > ... > t_K = 0):
        y <- T_k y = m + (Sigma + t_k I)^(1/2) (Sigma + t_{k-1} I)^(-1/2) (y - m)     (transport=True)
        log w += U(y_before, t_{k-1}) - U(T_k y_before, t_k) + log det T_k           E[w] = Z(t_k) stays true ...
        y <- MALA moves leaving exp(-U(., t_k)) invariant                              ... the moves keep the level
    log Z_AIS(0) = log mean_chains w,   standard error from the spread of w (delta method), ESS = (sum w)^2 / sum w^2

T_k is invertible, so E over y ~ p(., t_{k-1}) of exp(-U(T_k y, t_k)) det T_k / exp(-U(y, t_{k-1})) is
Z(t_k) / Z(t_{k-1}) (change of variables): the estimator stays unbiased for Z, and for the Gaussian itself
T_k is exact, so the weights only carry what the energy adds to its Gaussian. transport=False is plain AIS
along t (T_k = identity), which needs far more levels. The grid t_k takes equal steps of the reference
Gaussian's thermodynamic length, int sqrt(g(t)) dt with g(t) = 1/2 sum_j 1 / (e_j + t)^2 (the variance of
the Gaussian's weight increment per unit t^2). The MALA moves are preconditioned by M = Sigma + t_k I, step
h = step * d^(-1/3). AIS only sees the modes its chains reach: it certifies Z where the probes
(figures.py probes) show confinement.
"""
import copy
import math

import numpy as np
import torch

from model import StationaryGaussian, energy_and_scores


class SeededNoise:
    """One torch.Generator per sample seed (as EDM's StackedRandomGenerator); draws are (B, ...)."""

    def __init__(self, seeds, device):
        self.device = device
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape):
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def rand(self):
        return torch.stack([torch.rand((), generator=g, device=self.device) for g in self.generators])


def mala_step(energy_fn, y, U, grad_y, t, h, noise, precond=None):
    """One Metropolis-adjusted Langevin step targeting exp(-U(., t)); returns (y, U, grad_y, accepted (B,) bool).

    Proposal y' = y - h M grad_y U + sqrt(2 h) M^(1/2) xi, accepted with probability
    min(1, exp(U(y) - U(y') + log q(y | y') - log q(y' | y))), log q(b | a) = -|b - a + h M grad U(a)|^2_{M^-1} / (4 h).
    precond(v, power) applies M^power (power 1, 1/2, -1); None is M = I. The constant c cancels in the ratio.
    """
    M = precond or (lambda v, power: v)
    xi = noise.randn(y.shape[1:])
    y_new = y - h * M(grad_y, 1) + math.sqrt(2 * h) * M(xi, 0.5)
    tt = torch.full((y.shape[0],), float(t), device=y.device, dtype=y.dtype)
    U_new, grad_new, _ = energy_and_scores(energy_fn, y_new, tt)

    def log_q(b, a, grad_a):                                        # log q(b | a) up to a constant
        r = b - a + h * M(grad_a, 1)
        return -(r * M(r, -1)).flatten(1).sum(dim=1) / (4 * h)

    log_alpha = (U - U_new) + log_q(y, y_new, grad_new) - log_q(y_new, y, grad_y)     # (B,)
    accept = torch.log(noise.rand()) < log_alpha
    a = accept.view(-1, *[1] * (y.dim() - 1))
    return torch.where(a, y_new, y), torch.where(accept, U_new, U), torch.where(a, grad_new, grad_y), accept


def schedule(eig, t_max, n_levels):
    """t_0 = t_max > ... > t_K = 0 (K = n_levels) at equal steps of the thermodynamic length of the Gaussian
    with covariance eigenvalues eig: L(t) = int_0^t sqrt(1/2 sum_j 1 / (e_j + s)^2) ds."""
    e = np.sort(np.asarray(eig, dtype=np.float64).ravel())
    s = np.concatenate([[0.0], np.geomspace(min(e[0], t_max) * 1e-4, t_max, 4000)])    # fine grid, s[-1] = t_max
    rate = np.sqrt(0.5 * (1.0 / (e[None, :] + s[:, None]) ** 2).sum(axis=1))            # sqrt(g(s))
    L = np.concatenate([[0.0], np.cumsum(0.5 * (rate[1:] + rate[:-1]) * np.diff(s))])    # trapezoid
    t = np.interp(np.linspace(L[-1], 0.0, n_levels + 1), L, s)
    t[0], t[-1] = t_max, 0.0
    return t, float(L[-1])


def fitted_reference(images, floor=1e-4):
    """A StationaryGaussian fitted to images (N, H, W, C) (dataset.stationary_spectrum): the reference for an
    energy without a Gaussian term of its own. Its normalizer is exact whatever it was fitted to."""
    from dataset import stationary_spectrum
    mean, P, _ = stationary_spectrum(images, floor=floor)
    H, W, C = images.shape[1:]
    ref = StationaryGaussian(C, (H, W)).double()
    ref.set(mean.double(), P)
    return ref


def ais(energy_fn, ref, noise, t_max=1e3, n_levels=1024, mala_steps=1, step=1.0, transport=True, dtype=torch.float32):
    """Annealed importance sampling of log Z(t) from t_max down to t = 0 (module docstring), one chain per
    generator of noise (SeededNoise). ref: a StationaryGaussian (the start at t_max, its exact normalizer,
    the preconditioner and the grid). step: h = step * d^(-1/3). Returns (log w (B,) float64, info) with
    info = dict(log_z_ref, acceptance per level (K - 1,), t (K + 1,), length L, nfe per chain)."""
    t, length = schedule(ref.eig.cpu(), t_max, n_levels)
    H, W, C = ref.eig.shape
    d = C * H * W
    h = step * d ** (-1 / 3)
    ref64 = copy.deepcopy(ref).double()                                          # the model's own stays as it is

    def U_and_grad(y, tk):
        U, g, _ = energy_and_scores(energy_fn, y, torch.full((y.shape[0],), float(tk), device=y.device, dtype=y.dtype))
        return U.double(), g

    def precond_at(tk):
        return lambda v, power: ref64.apply(v.double(), tk, power).to(v.dtype)

    w = noise.randn((C, H, W)).double()
    y = (ref64.mean.view(1, -1, 1, 1) + ref64.apply(w, t[0], 0.5)).to(dtype)           # y ~ N(m, Sigma + t_0 I)
    U, grad_y = U_and_grad(y, t[0])
    log_w = -U + ref64(y.double(), torch.full((y.shape[0],), t[0], dtype=torch.float64)) + ref64.log_z()
    nfe, acceptance = 1, []
    m, e = ref64.mean.view(1, -1, 1, 1), ref64.eig
    for k in range(1, len(t)):
        if transport:                   # y -> m + (Sigma + t_k I)^(1/2) (Sigma + t_{k-1} I)^(-1/2) (y - m)
            y = (m + ref64.apply(ref64.apply(y.double() - m, t[k - 1], -0.5), t[k], 0.5)).to(dtype)
            log_det = 0.5 * (torch.log(e + t[k]) - torch.log(e + t[k - 1])).sum().item()
        U_new, grad_y = U_and_grad(y, t[k])
        log_w = log_w + U - U_new + (log_det if transport else 0.0)
        U, nfe = U_new, nfe + 1
        if k == len(t) - 1:                                        # moves at the last level cannot change E[w]
            break
        accepted = 0.0
        for _ in range(mala_steps):
            y, U32, grad_y, acc = mala_step(energy_fn, y, U.to(y.dtype), grad_y, t[k], h, noise, precond_at(t[k]))
            U = torch.where(acc, U32.double(), U)
            accepted, nfe = accepted + acc.double().mean().item() / mala_steps, nfe + 1
        acceptance.append(accepted)
    return log_w, dict(log_z_ref=ref64.log_z(), acceptance=np.array(acceptance), t=t, length=length, nfe=nfe)


def summarize(log_w):
    """(log Z = log mean w, its standard error by the delta method, effective sample size) from log w (n,)."""
    log_w = np.asarray(log_w, dtype=np.float64)
    n = len(log_w)
    top = log_w.max()
    w = np.exp(log_w - top)
    log_z = top + math.log(w.mean())
    se = w.std(ddof=1) / (math.sqrt(n) * w.mean()) if n > 1 else float("nan")
    return log_z, se, float(w.sum() ** 2 / (w ** 2).sum())
