"""Dual score matching (docs/method.md §3): per-sample loss terms; reduction and scaling belong to the caller.

With y = x + sqrt(t) z, r = y - x and d the number of values per sample:

    space  (t/d) * || grad_y U - r/t ||^2                           denoising score matching
           = mean over pixels of (sqrt(t) grad_y U - z)^2            (the form computed here)
    time   (t/d)^2 * (dU/dt - d/(2t) + ||r||^2/(2t^2))^2             time score matching
           = (0.5 * (1 - ||z||^2/d) - (t/d) dU/dt)^2                 (the form computed here)
    loss   space + time_weight * time                                time_weight=0: single SM

and, for an energy with a Gaussian term (U = U_G + R), the penalty on mass off the data (mass_penalty).

The computed forms are algebraically identical to the paper's but stay finite and accurate in fp32
from t = 1e-9 to 1e3 (r/t alone would be ~3e4 at t = 1e-9).
"""
import math

import torch

from model import energy_and_scores


def sample_t(n, t_min=1e-9, t_max=1e3, generator=None, device=None):
    """(n,) noise variances, log-uniform on [t_min, t_max] (PSNR uniform in [-30, 90] dB)."""
    if not 0 < t_min < t_max:
        raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min}, t_max={t_max}")
    u = torch.rand(n, generator=generator, device=device)
    return torch.exp(math.log(t_min) + u * (math.log(t_max) - math.log(t_min)))


def add_noise(x, t=None, generator=None):
    """(t, z, y = x + sqrt(t) z) with one t and one noise draw per sample; t drawn if None."""
    B = x.shape[0]
    if t is None:
        t = sample_t(B, generator=generator, device=x.device)
    if t.shape != (B,):
        raise ValueError(f"t must be (B,) = ({B},), got shape {tuple(t.shape)}")
    t = t.to(device=x.device, dtype=x.dtype)
    z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    y = x + t.sqrt().view(-1, *[1] * (x.dim() - 1)) * z
    return t, z, y


def dual_score_matching(energy_fn, x, t=None, time_weight=1.0, generator=None, create_graph=True):
    """Per-sample dual score matching terms of an energy (y, t) -> (B,) on clean data x.

    x (B, C, H, W) images or (B, D) vectors. Returns {'loss', 'space', 'time'}, each (B,). create_graph=False
    (evaluation) computes the same numbers from scores without the double-backward graph.
    """
    t, z, y = add_noise(x, t, generator)
    d = x[0].numel()
    sqrt_t = t.sqrt()
    _, grad_y, dU_dt = energy_and_scores(energy_fn, y, t, create_graph=create_graph)
    shape = (-1, *[1] * (x.dim() - 1))
    space = (sqrt_t.view(shape) * grad_y - z).pow(2).flatten(1).mean(dim=1)
    target = 0.5 * (1.0 - z.pow(2).flatten(1).sum(dim=1) / d)         # E[.|y] = (t/d) dU/dt
    time = (target - (t / d) * dU_dt).pow(2)
    return {"loss": space + time_weight * time, "space": space, "time": time}


def denoiser_score_matching(f_fn, x, t=None, generator=None):
    """Per-sample loss of the plain score network x_hat = y - t f(y, t) (the paper's baseline).

    f_fn (y, t) -> f with x's shape (Denoiser.f). space = mean (x_hat - x)^2 / t
    = mean (sqrt(t) f - z)^2, the same scale as dual_score_matching's space term.
    """
    t, z, y = add_noise(x, t, generator)
    f = f_fn(y, t)
    shape = (-1, *[1] * (x.dim() - 1))
    space = (t.sqrt().view(shape) * f - z).pow(2).flatten(1).mean(dim=1)
    return {"loss": space, "space": space}


def mass_penalty(model, n, generator=None):
    """relu(log mean_i exp(-R(y_i, t_i))) / d over n draws y_i ~ N(m, Sigma + t_i I) of the model's Gaussian
    term, t_i log-uniform as in training (docs/normalization.md §7). A scalar; 0 when R >= 0 on every draw.

    For U = U_G + R, Z(t) / Z_G = E_{y ~ N(m, Sigma + t I)} exp(-R(y, t)), which is 1 for every t when the model
    is normalized with c = log Z_G. The Gaussian's draws at small t are not images: the true R is large there
    and the batch mean of exp(-R) is below 1 (the draws miss the data's region, where R < 0 holds the rest).
    Dual score matching never sees those points (noisy data do not reach them), so nothing else stops the
    network from giving them R << 0, mass that a normalized model does not have (docs/normalization.md §6).
    The penalty is zero whenever the draws carry no more mass than under the Gaussian."""
    if getattr(model, "gaussian", None) is None:
        raise ValueError("mass_penalty needs a model with a Gaussian term (--gaussian_term=True)")
    device = model.gaussian.eig.device
    t = sample_t(n, generator=generator, device=device)
    y = model.gaussian.sample(n, 0.0, generator).to(torch.float32)
    y = y + t.sqrt().view(-1, 1, 1, 1) * torch.randn(y.shape, generator=generator, device=device)
    R = model.network_term(y, t)
    return torch.relu(torch.logsumexp(-R, 0) - math.log(n)) / y[0].numel()
