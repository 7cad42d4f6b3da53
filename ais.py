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


def ais(energy_fn, ref, noise, t_max=1e3, n_levels=1024, mala_steps=1, step=1.0, transport=True, dtype=torch.float32,
        grid=None, steps=None, adapt=False, target=0.6):
    """Annealed importance sampling of log Z(t) from t_max down to t = 0 (module docstring), one chain per
    generator of noise (SeededNoise). ref: a StationaryGaussian (the start at t_max, its exact normalizer,
    the preconditioner and the default grid). grid: the levels t_0 = t_max > ... > t_K = 0 fixed in advance
    (tune), else K = n_levels at equal steps of the Gaussian's thermodynamic length. step: MALA step
    h = step * d^(-1/3) at every level, unless steps gives h per level (K - 1,), fixed in advance (tune).
    adapt: a pilot run that changes h after each level toward MALA acceptance target (log h += 2 (acceptance -
    target)), and repeats its first level's moves (up to 8 times) while the acceptance there is off target by
    more than 0.2 (the step a run starts from is a guess); later levels move once, as the fresh run will, so
    the pilot's increments measure the fresh run's difficulty. Its h depend on the chains' own moves, so its
    weights are not an AIS estimate (tune uses its h and grid for a fresh run).
    Returns (log w (B,) float64, info) with info = dict(log_z_ref, t (K + 1,), the Gaussian's thermodynamic length L, nfe per chain, and per level: acceptance and h (K - 1,), ess (K,): the weights' ESS
    after the level, inc_sd (K,): the spread over chains of the level's log-weight increment, where the
    weights degenerate)."""
    t, length = schedule(ref.eig.cpu(), t_max, n_levels)
    if grid is not None:
        t = np.asarray(grid, dtype=np.float64)
        if not (t[0] > 0 and t[-1] == 0 and np.all(np.diff(t) < 0)):
            raise ValueError("grid must decrease strictly from t_max > 0 to 0")
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
    nfe, acceptance, used, ess, inc_sd = 1, [], [], [], []
    m, e = ref64.mean.view(1, -1, 1, 1), ref64.eig
    for k in range(1, len(t)):
        if transport:                   # y -> m + (Sigma + t_k I)^(1/2) (Sigma + t_{k-1} I)^(-1/2) (y - m)
            y = (m + ref64.apply(ref64.apply(y.double() - m, t[k - 1], -0.5), t[k], 0.5)).to(dtype)
            log_det = 0.5 * (torch.log(e + t[k]) - torch.log(e + t[k - 1])).sum().item()
        U_new, grad_y = U_and_grad(y, t[k])
        increment = U - U_new + (log_det if transport else 0.0)
        log_w = log_w + increment
        U, nfe = U_new, nfe + 1
        ess.append(summarize(log_w.cpu().numpy())[2])
        inc_sd.append(float(increment.std()) if len(increment) > 1 else 0.0)
        if k == len(t) - 1:                                        # moves at the last level cannot change E[w]
            break
        h_k = float(steps[k - 1]) if steps is not None else h
        tries = 8 if adapt and k == 1 else 1                       # a pilot retries its first level until h fits there
        for attempt in range(tries):
            accepted = 0.0
            for _ in range(mala_steps):
                y, U32, grad_y, acc = mala_step(energy_fn, y, U.to(y.dtype), grad_y, t[k], h_k, noise, precond_at(t[k]))
                U = torch.where(acc, U32.double(), U)
                accepted, nfe = accepted + acc.double().mean().item() / mala_steps, nfe + 1
            if adapt:
                h = h_k * math.exp(2.0 * (accepted - target))
            if attempt == tries - 1 or abs(accepted - target) <= 0.2:
                break
            h_k = h
        acceptance.append(accepted)
        used.append(h_k)
    return log_w, dict(log_z_ref=ref64.log_z(), acceptance=np.array(acceptance), steps=np.array(used), t=t,
                       length=length, nfe=nfe, ess=np.array(ess), inc_sd=np.array(inc_sd))


def tune(energy_fn, ref, noise, n_levels, pilot_levels=512, uniform=0.2, **kwargs):
    """A pilot run (adapt=True, its own chains) that fixes, for a fresh AIS run of n_levels levels, the grid and
    the MALA step per level. The pilot runs pilot_levels levels on the Gaussian's grid; its increments' spread
    inc_sd_k ~ (t_(k-1) - t_k) sd(d U / dt) measures how much each stretch of t adds to the log-weights' variance
    (the network's part: the Gaussian's own is removed by the transport). The new grid puts its levels at equal
    steps of sum_k inc_sd_k (mixed with a share `uniform` of the Gaussian's grid, so no stretch is left empty);
    h at a new level is the pilot's, interpolated in log h.
    Returns (grid (n_levels + 1,), steps (n_levels - 1,), pilot info)."""
    _, info = ais(energy_fn, ref, noise, n_levels=pilot_levels, adapt=True, **kwargs)
    t_pilot, sd = info["t"], np.maximum(info["inc_sd"], 0.0)
    density = (1 - uniform) * sd / sd.sum() + uniform / len(sd) if sd.sum() > 0 else np.full(len(sd), 1 / len(sd))
    cum = np.concatenate([[0.0], np.cumsum(density)])                         # at pilot levels 0 .. K_pilot
    cum /= cum[-1]
    position = np.interp(np.linspace(0, 1, n_levels + 1), cum, np.arange(len(t_pilot)))   # fractional pilot level
    lo = np.floor(position).astype(int).clip(0, len(t_pilot) - 2)
    frac = position - lo
    grid = t_pilot[lo] * (1 - frac) + t_pilot[lo + 1] * frac                  # linear in t between pilot levels
    grid[0], grid[-1] = t_pilot[0], 0.0
    keep, last = np.ones(len(grid), dtype=bool), grid[0]                     # strictly decreasing despite round-off
    for i in range(1, len(grid) - 1):
        keep[i] = 0.0 < grid[i] < last
        last = grid[i] if keep[i] else last
    grid, position = grid[keep], position[keep]
    steps = np.exp(np.interp(position[1:-1], np.arange(1, len(t_pilot) - 1), np.log(info["steps"])))
    return grid, steps, info


def importance(energy_fn, ref, n, generator, batch_size=256):
    """Plain importance sampling of Z(0) from the reference Gaussian at t = 0: y ~ N(m, Sigma),
    log w = -U(y, 0) + U_G(y, 0) + log Z_G, so E[w] = Z(0). This is AIS with no move (the transport alone
    carries a draw from t_max to an exact draw at t = 0), and n draws cost n forward passes. The better tool
    when the model stays close to its Gaussian (a high ESS says so); blind to mass where the Gaussian's draws
    never go. Returns log w (n,) float64."""
    ref64 = copy.deepcopy(ref).double()
    parts = []
    for i in range(0, n, batch_size):
        y = ref64.sample(min(batch_size, n - i), 0.0, generator)
        t = torch.zeros(len(y), dtype=torch.float64, device=y.device)
        with torch.no_grad():
            U = energy_fn(y.float(), t.float()).double()
        parts.append(-U + ref64(y, t) + ref64.log_z())
    return torch.cat(parts)


def summarize(log_w):
    """(log Z = log mean w, its standard error by the delta method, effective sample size) from log w (n,)."""
    log_w = np.asarray(log_w, dtype=np.float64)
    n = len(log_w)
    top = log_w.max()
    w = np.exp(log_w - top)
    log_z = top + math.log(w.mean())
    se = w.std(ddof=1) / (math.sqrt(n) * w.mean()) if n > 1 else float("nan")
    return log_z, se, float(w.sum() ** 2 / (w ** 2).sum())
