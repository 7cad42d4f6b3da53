"""Evaluation of a trained energy model: normalization constant and NLL (SPEC 5).

The functions at the top are the building blocks that train.py also uses.
"""
import math

import torch


def gaussian_entropy(d, t):
    """Differential entropy in nats of N(mean, t I_d): (d/2) log(2 pi e t)."""
    return 0.5 * d * math.log(2 * math.pi * math.e * t)


@torch.no_grad()
def noisy_energies(energy_fn, x, t, generator=None):
    """U(x + sqrt(t) z, t) per image, (B,); t a float (0 gives U(x, 0) on the clean images)."""
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    y = x if t == 0 else x + math.sqrt(t) * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return energy_fn(y, tt)


def log_norm_const(mean_U_tmax, d, t_max):
    """c = (d/2) log(2 pi e t_max) - mean U(x + sqrt(t_max) z, t_max)   (SPEC 5), nats."""
    return gaussian_entropy(d, t_max) - mean_U_tmax


def nll_bits_per_dim(mean_U0, c, d, quantized):
    """(mean U(x, 0) + c) / (d ln 2), + 8 for uint8 images (density on the 256-level scale)."""
    return (mean_U0 + c) / (d * math.log(2)) + (8.0 if quantized else 0.0)
