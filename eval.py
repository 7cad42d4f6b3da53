"""Evaluation of a trained energy model: normalization constant, NLL, denoising PSNR (docs/method.md §5, 6).

    python eval.py --ckpt=out/ckpt.pt --data_dir=data/imagenet64                   # GPU if present
    python eval.py --ckpt=out/ckpt.pt --data_dir=data/imagenet64 --max_images=500 --device=cpu
    python eval.py --ckpt=out/ckpt.pt --data_dir=data/imagenet64 --denoiser_ckpt=out_den/ckpt.pt
    python eval.py --ckpt=out/ckpt.pt --data_dir=data/imagenet64 --ode_images=64   # + ODE check
    python eval.py --ckpt=out/ckpt.pt --data_dir=data/patches --ais_chains=64 --ais_steps=1024   # + AIS certificate
    python eval.py --ckpt=out/ckpt.pt --data_dir=data/patches --is_draws=100000                  # + importance sampling
    torchrun --standalone --nproc_per_node=8 eval.py --ckpt=... --data_dir=... --ais_chains=1024   # chains split over ranks

Writes OUT/results.json (OUT defaults to the checkpoint's folder) and prints a short table:
    log_norm_const (+ stderr)   c = (d/2) log(2 pi e t_max) - mean U(x + sqrt(t_max) z, t_max)
    nll_bpd (+ stderr)          (mean U(x, 0) + c) / (d ln 2), + 8 for uint8 images
    psnr                        Table 1: output PSNR of x_hat = y - t grad_y U (and of a denoiser)
    ode_*                       the probability-flow ODE likelihood of the same score, on the
                                first ode_images images: an independent check of the one-pass NLL
    bracket_nll_bpd_lo/hi       a model with a Gaussian term and energy_bound B: the true NLL lies in
                                (mean U(x, 0) + log Z_G -+ B d) / (d ln 2), whatever the training did
    ais_*                       the normalization certificate (ais.py, docs/normalization.md): log Z(0) by
                                annealed importance sampling along t, the NLL it certifies, U(x, 0) + log Z_AIS,
                                and ais_delta_bpd = one-pass NLL - certified NLL = (c - log Z_AIS) / (d ln 2)
    is_*                        the same from plain importance sampling of the reference Gaussian at t = 0
                                (--is_draws): a second estimate, better than AIS when the model stays near its Gaussian

The functions below are the building blocks that train.py, sample.py and figures.py use. Each
takes any energy callable (y, t) -> (B,) in nats, so analytic energies plug in (tests do this)
and a model loaded from a checkpoint is just one such callable.
"""
import json
import math
import os
import sys
import time
import zipfile
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from ais import SeededNoise, ais, fitted_reference, importance, summarize, tune
from backends import setup_device
from configurator import configure, fail, require
from dataset import check_finite, load_split, to_tensor
from losses import add_noise, dual_score_matching
from model import energy_and_scores, load_model


def gaussian_entropy(d, t):
    """Differential entropy in nats of N(mean, t I_d): (d/2) log(2 pi e t)."""
    return 0.5 * d * math.log(2 * math.pi * math.e * t)


@torch.no_grad()
def noisy_energies(energy_fn, x, t, generator=None):
    """U(x + sqrt(t) z, t) per image, (B,); t a float (0 gives U(x, 0) on the clean images)."""
    tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
    y = x if t == 0 else add_noise(x, tt, generator)[2]
    return energy_fn(y, tt)


def log_norm_const(mean_U_tmax, d, t_max):
    """c = (d/2) log(2 pi e t_max) - mean U(x + sqrt(t_max) z, t_max)   (docs/method.md §5), nats."""
    return gaussian_entropy(d, t_max) - mean_U_tmax


def nll_bits_per_dim(mean_U0, c, d, quantized):
    """(mean U(x, 0) + c) / (d ln 2), + 8 for uint8 images (density on the 256-level scale)."""
    return (mean_U0 + c) / (d * math.log(2)) + (8.0 if quantized else 0.0)


# ----------------------------------------------------------------------------- building blocks
SPLIT = Literal["train", "val"]                      # the splits of a dataset folder
WEIGHTS = Literal["auto", "ema", "model"]            # which weights of a checkpoint (load_weights)
PSNR_IN = (90, 75, 60, 45, 30, 15, 0, -15, -30)       # Table 1's input PSNRs, dB; t = 10^(-PSNR/10)
DB_PER_NAT = 10 / math.log(10)                        # log p in dB/dim = DB_PER_NAT * log p / d


def progress(iterable, total, desc=None, unit="it"):
    """iterable wrapped in a tqdm progress bar on stderr (count, rate, ETA) when desc is given, else as is
    (with an update() that does nothing when iterable is None). A bar redraws at most once a second on a
    terminal and once every 30 s in a log file; only rank 0 of a torchrun job draws one."""
    if desc is None or int(os.environ.get("RANK", "0")) != 0:
        return iterable if iterable is not None else _NoBar()
    from tqdm import tqdm
    tty = sys.stderr.isatty()
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0 if tty else 30.0,
                ascii=not tty, dynamic_ncols=tty)


class _NoBar:
    def update(self, n=1):
        pass

    def close(self):
        pass


def json_safe(value):
    """value with every non-finite float replaced by None, so that json.dumps(..., allow_nan=False) writes
    valid JSON (NaN and Infinity are not JSON)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def write_json(path, value):
    """value as indented, valid JSON (non-finite floats as null) at path."""
    with open(path, "w") as f:
        json.dump(json_safe(value), f, indent=1, allow_nan=False)


def batches(images, batch_size, device):
    """(B, C, H, W) float tensors from an (N, H, W, C) uint8 or float32 array, in order."""
    for i in range(0, len(images), batch_size):
        yield to_tensor(images[i:i + batch_size], device)


def mean_and_stderr(v):
    """Mean of a 1-D array and its standard error std / sqrt(n) (nan for n = 1)."""
    v = np.asarray(v, dtype=np.float64)
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else float("nan")
    return float(v.mean()), float(se)


def energies(energy_fn, images, t=0.0, n_draws=1, batch_size=256, device="cpu", generator=None, desc=None):
    """(N,) float64: U(x + sqrt(t) z, t) per image, averaged over n_draws noise draws (t=0: U(x, 0)).
    desc: a progress bar with that label on stderr (rate and ETA)."""
    n_draws = n_draws if t > 0 else 1
    out = []
    for x in progress(batches(images, batch_size, device), math.ceil(len(images) / batch_size), desc, "batch"):
        U = sum(noisy_energies(energy_fn, x, t, generator).double() for _ in range(n_draws)) / n_draws
        out.append(U.cpu())
    return torch.cat(out).numpy()


def estimate_log_norm_const(energy_fn, images, t_max=1e3, n_draws=1, batch_size=256, device="cpu", generator=None,
                            desc=None):
    """(c, standard error of c) in nats (docs/method.md §5). With n_draws > 1 the draws of an image are
    averaged first, so the error is over images and counts both sources of variance."""
    U = energies(energy_fn, images, t_max, n_draws, batch_size, device, generator, desc)
    mean_U, se = mean_and_stderr(U)
    return log_norm_const(mean_U, images[0].size, t_max), se


def nll(energy_fn, images, c, c_stderr, quantized, batch_size=256, device="cpu", desc=None):
    """(NLL bits/dim, its standard error, log p per image in nats (N,)). The error adds the
    spread of U(x, 0) over images and the error of c in quadrature (independent noise draws)."""
    d = images[0].size
    U0 = energies(energy_fn, images, 0.0, 1, batch_size, device, desc=desc)
    mean_U0, se_U0 = mean_and_stderr(U0)
    se = math.sqrt(se_U0 ** 2 + c_stderr ** 2) / (d * math.log(2))
    return nll_bits_per_dim(mean_U0, c, d, quantized), se, -(U0 + c)


PROBES = dict(shift=(-16, -4, -1, 0, 1, 2, 4, 8, 16), contrast=(0, 1, 2, 4, 8, 16, 64), noise=(0, 1, 2, 4, 8, 16),
              direction=(-16, -4, -1, 0, 1, 4, 16))


@torch.no_grad()
def probes(energy_fn, x, c, quantized, t_values=(0.0, 1e3), amounts=PROBES, generator=None):
    """-log p(y, t) = (U(y, t) + c) / (d ln 2) in bits/dim (+8 for uint8 at every t, so rises read the same),
    averaged over the images x (B, C, H, W), along paths that leave the data (docs/normalization.md):
        shift       y = x + b                     (every pixel brighter by b)
        contrast    y = m + a (x - m)             (m the image's mean per channel)
        noise       y = x + b xi                  (white noise of std b, a new draw per image)
        direction   y = x + b sqrt(d) u           (one random unit direction u, the norm of the shift b)
    A confining energy rises along every one of them. Returns {probe: {"amounts": [...], "t=<t>": [...]}}."""
    d = x[0].numel()
    xi = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    u = torch.randn(x[0].shape, generator=generator, device=x.device, dtype=x.dtype)
    u = u / u.norm()
    m = x.mean(dim=(2, 3), keepdim=True)
    paths = dict(shift=lambda b: x + b, contrast=lambda a: m + a * (x - m), noise=lambda b: x + b * xi,
                 direction=lambda b: x + b * math.sqrt(d) * u)
    out = {}
    for name, values in amounts.items():
        out[name] = {"amounts": list(values)}
        for t in t_values:
            tt = torch.full((x.shape[0],), float(t), device=x.device, dtype=x.dtype)
            out[name][f"t={t:g}"] = [float((energy_fn(paths[name](a), tt).double().mean() + c) / (d * math.log(2))
                                           + (8.0 if quantized else 0.0)) for a in values]
    return out


def energy_denoiser(energy_fn):
    """x_hat(y, t) = y - t grad_y U(y, t) (Tweedie / Miyasawa, docs/method.md §2) as a callable."""
    def x_hat(y, t):
        _, grad_y, _ = energy_and_scores(energy_fn, y, t)
        return y - t.view(-1, *[1] * (y.dim() - 1)) * grad_y
    return x_hat


def denoising_psnr(denoise_fn, images, psnr_in=PSNR_IN, batch_size=256, device="cpu", generator=None, desc=None):
    """Table 1: for each input PSNR (dB, peak 1) the mean over images of the output PSNR
    -10 log10 mean((x_hat - x)^2) and its standard error; lists of len(psnr_in)."""
    means, ses = [], []
    n_batches = math.ceil(len(images) / batch_size)
    bar = progress(None, len(psnr_in) * n_batches, desc, "batch")
    for p in psnr_in:
        t, out = 10.0 ** (-p / 10), []
        for x in batches(images, batch_size, device):
            bar.update()
            tt, _, y = add_noise(x, torch.full((x.shape[0],), t, device=x.device), generator)
            x_hat = denoise_fn(y, tt).detach()
            mse = (x_hat - x).double().pow(2).flatten(1).mean(dim=1)             # (B,)
            out.append((-10 * torch.log10(mse)).cpu())
        m, se = mean_and_stderr(torch.cat(out).numpy())
        means.append(m)
        ses.append(se)
    bar.close()
    return means, ses


def score_matching_terms(energy_fn, x, t=None, time_weight=1.0, generator=None):
    """losses.dual_score_matching's per-sample terms {'loss', 'space', 'time'} (B,), for evaluation: the same
    noise draws and formulas (docs/method.md §3), from scores without the double-backward graph."""
    return dual_score_matching(energy_fn, x, t, time_weight, generator, create_graph=False)


def logp_and_deff(energy_fn, x, t, c, n_draws=1, generator=None):
    """Per image (B,), averaged over n_draws y = x + sqrt(t) z (Fig. 5):
    log p(y, t) = -(U(y, t) + c) in nats and d_eff(x, t) = E ||x - x_hat(y, t)||^2 / t."""
    tt = torch.full((x.shape[0],), float(t), device=x.device)
    logp, deff = 0.0, 0.0
    for _ in range(n_draws):
        _, _, y = add_noise(x, tt, generator)
        U, grad_y, _ = energy_and_scores(energy_fn, y, tt)
        x_hat = y - t * grad_y
        logp = logp - (U.double() + c) / n_draws
        deff = deff + (x - x_hat).double().pow(2).flatten(1).sum(dim=1) / t / n_draws
    return logp, deff


def ode_nll(energy_fn, x, prior_mean, t_min=1e-9, t_max=1e3, n_steps=16, n_probes=1, generator=None):
    """-log p(x) in nats per image (B,) from the probability-flow ODE of the same score, and the
    number of network evaluations (each a forward, a gradient and n_probes Hessian-vector products).

    For y = x + sqrt(t) z the flow is dy/dt = 0.5 grad_y U(y, t) and
        log p(x) = log N(y(t_max); prior_mean, t_max I) + int 0.5 Laplacian_y U(y(t), t) dt,
    integrated from t_min to t_max in s = log t (dy/ds = t dy/dt) by the classical 4th-order
    Runge-Kutta method on n_steps equal steps (Heun's 2nd order needs ~10x the steps for the same
    error); the Laplacian by Hutchinson's estimator eps^T (Hessian eps), averaged over n_probes
    Rademacher eps per image held fixed along the path. The prior is the Gaussian the constant c
    also assumes.
    """
    eps = torch.randint(0, 2, (n_probes, *x.shape), generator=generator, device=x.device).to(x.dtype) * 2 - 1

    def rates(s, y):                                   # (dy/ds, d(log p(x) - log prior)/ds)
        t = math.exp(s)
        y = y.detach().requires_grad_(True)
        tt = torch.full((y.shape[0],), t, device=y.device, dtype=y.dtype)
        laplacian = 0.0
        with torch.enable_grad():
            grad_y, = torch.autograd.grad(energy_fn(y, tt).sum(), y, create_graph=True)
            for k, e in enumerate(eps):
                hvp, = torch.autograd.grad((grad_y * e).sum(), y, retain_graph=k < n_probes - 1)
                laplacian = laplacian + (hvp * e).flatten(1).sum(dim=1).double() / n_probes
        return 0.5 * t * grad_y.detach(), 0.5 * t * laplacian

    s = np.linspace(math.log(t_min), math.log(t_max), n_steps + 1)
    y, gain = x.clone(), torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for k in range(n_steps):
        h = s[k + 1] - s[k]
        v1, g1 = rates(s[k], y)
        v2, g2 = rates(s[k] + h / 2, y + h / 2 * v1)
        v3, g3 = rates(s[k] + h / 2, y + h / 2 * v2)
        v4, g4 = rates(s[k + 1], y + h * v3)
        y = y + h / 6 * (v1 + 2 * v2 + 2 * v3 + v4)
        gain = gain + h / 6 * (g1 + 2 * g2 + 2 * g3 + g4)
    d = x[0].numel()
    r2 = (y - prior_mean).double().pow(2).flatten(1).sum(dim=1)
    log_prior = -0.5 * d * math.log(2 * math.pi * t_max) - r2 / (2 * t_max)
    return -(log_prior + gain), 4 * n_steps


# ----------------------------------------------------------------------------- command-line plumbing
def pick_device(device, tf32=False):
    """backends.setup_device (the current CUDA device; fp32 arithmetic unless tf32) with a one-line error for a
    bad --device."""
    try:
        return setup_device(device, tf32=tf32)
    except ValueError as e:
        fail(str(e))


def load_weights(path, device, kind="energy", weights="auto"):
    """(model in eval mode, checkpoint) as model.load_model, with the EMA of the weights when weights is
    "ema", or "auto" and the checkpoint holds one (train.py --ema_halflife_images > 0); "model" = the raw
    weights. ckpt["weights"] says which. ValueError / FileNotFoundError, one line, on a bad checkpoint."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --ckpt=PATH of a file written by train.py")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"checkpoint {path} is not a file written by train.py (torch.save writes zip archives; "
                         f"this one is not: truncated, or another kind of file); pass the ckpt.pt of a train.py run")
    try:
        model, ckpt = load_model(path, device, kind=kind)
    except (ValueError, RuntimeError, KeyError, TypeError) as e:
        raise ValueError(str(e).splitlines()[0][:400]) from None
    if weights == "ema" and "ema" not in ckpt:
        raise ValueError(f"checkpoint {path} holds no EMA weights (trained with --ema_halflife_images=0); "
                         f"use --weights=model or --weights=auto")
    use_ema = weights in ("ema", "auto") and "ema" in ckpt
    if use_ema:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(ckpt["ema"][name])
    ckpt["weights"] = "ema" if use_ema else "model"
    return model, ckpt


def trained_image_shape(ckpt):
    """(H, W, C) of the training images: the checkpoint's config.image_shape if it has one, else
    the shape of its config.data_dir's val.npy if that is readable here, else None."""
    cfg = ckpt.get("config") or {}
    if cfg.get("image_shape") is not None:
        return tuple(cfg["image_shape"])
    try:
        return tuple(load_split(cfg.get("data_dir", ""), "val")[0].shape[1:])
    except (FileNotFoundError, ValueError):
        return None


def check_images(images, split_path, ckpt, ckpt_path):
    """A clear error, naming both sides, when the dataset's images do not fit the checkpoint's model."""
    mc = ckpt["model_config"]
    H, W, C = images.shape[1:]
    if C != mc["channels"]:
        raise ValueError(f"dataset {split_path} has {C}-channel images ({H}x{W}x{C}) but checkpoint {ckpt_path} "
                         f"was built for {mc['channels']} channels; use a matching --data_dir or --ckpt")
    f = 2 ** mc["num_scales"]
    if H % f or W % f:
        raise ValueError(f"dataset {split_path} has {H}x{W} images but checkpoint {ckpt_path} has num_scales="
                         f"{mc['num_scales']} and needs sizes divisible by {f}; use a matching --data_dir or --ckpt")
    trained = trained_image_shape(ckpt)
    if trained is not None and trained != (H, W, C):
        raise ValueError(f"dataset {split_path} has images {H}x{W}x{C} but checkpoint {ckpt_path} was trained on "
                         f"{'x'.join(map(str, trained))} images; use a matching --data_dir or --ckpt")


def load_images(data_dir, split, max_images, ckpt, ckpt_path):
    """(images (N, H, W, C), quantized) of a split, the first max_images of them (-1: all), checked
    against the checkpoint and for non-finite pixels (float32 data, chunk by chunk)."""
    images, quantized = load_split(data_dir, split)
    path = os.path.join(data_dir, f"{split}.npy")
    if len(images) == 0:
        raise ValueError(f"{path} holds no images; prepare the data again")
    check_images(images, path, ckpt, ckpt_path)
    images = images if max_images < 0 else images[:max_images]
    check_finite(images, path)
    return images, quantized


def check_config(config, rules):
    """fail() on the first (key, ok, requirement) of rules whose ok is False, naming the value and the rule."""
    for key, ok, need in rules:
        if not ok:
            fail(f"--{key}={config[key]}: must be {need}")


def positive(config, *keys):
    """Rules: each key a finite number > 0."""
    return [(k, isinstance(config[k], (int, float)) and math.isfinite(config[k]) and config[k] > 0, "> 0")
            for k in keys]


def main(argv):
    config = dict(
        ckpt="",                 # energy checkpoint written by train.py (required)
        data_dir="",             # dataset folder with train.npy and val.npy (required)
        split="val",             # split of the NLL and the PSNR table
        const_split="val",       # split of the normalization constant (docs/method.md §5: validation)
        max_images=-1,           # first N images of each split; -1 = all
        n_draws=1,               # noise draws per image for the constant
        t_max=1e3,               # noise variance of the constant
        denoiser_ckpt="",        # optional plain denoiser checkpoint for Table 1's second column
        psnr_images=-1,          # images for the PSNR table (first of the split); -1 = max_images, 0 = skip
        ode_images=0,            # images for the probability-flow ODE check; 0 = skip
        ode_steps=16,            # Runge-Kutta 4 steps of the ODE (4 network evaluations each)
        ode_probes=1,            # Hutchinson probes per image (each one more Hessian-vector product)
        ode_t_min=1e-9,          # the ODE starts at this noise variance
        weights="auto",          # "ema": the EMA of the weights, "model": the raw ones, "auto": EMA if saved
        ais_chains=0,            # AIS chains for the certificate of log Z(0); 0 = skip (seeds seed ... seed + K - 1)
        ais_steps=1024,          # AIS levels from t_max down to t = 0 (2 network evaluations per level and chain)
        ais_mala=1,              # MALA moves per level
        ais_step=1.0,            # MALA step h = ais_step * d^(-1/3), preconditioned by the reference Gaussian
        ais_transport=True,      # move the chains by the reference Gaussian's map between levels (ais.py)
        ais_tune=16,             # chains of a pilot run (own seeds, weights discarded) that fixes the grid of t and MALA h
                                 # per level (ais.tune); 0 = no pilot: the Gaussian's grid and ais_step at every level
        ais_tune_levels=512,     # levels of the pilot run (at most ais_steps)
        is_draws=0,              # importance sampling of log Z(0) from the reference Gaussian at t = 0 (ais.importance):
                                 # draws (split over ranks); 0 = skip. A second, independent estimate beside AIS
        batch_size=256,          # images per forward pass
        device="auto",           # "auto" = cuda if available, else cpu; cpu, cuda, cuda:N
        seed=0,                  # seed of the noise draws
        out="",                  # output folder; "" = the checkpoint's folder
    )
    config = configure(config, argv, doc=__doc__, source_file=__file__, annotations=dict(
        split=SPLIT, const_split=SPLIT, weights=WEIGHTS))
    require(config["ckpt"] and config["data_dir"],
            "needs --ckpt=PATH (an energy checkpoint) and --data_dir=DIR (train.npy, val.npy)")
    check_config(config, positive(config, "n_draws", "t_max", "ode_steps", "ode_probes", "ode_t_min", "batch_size") + [
        ("max_images", config["max_images"] == -1 or config["max_images"] >= 1, ">= 1, or -1 for all"),
        ("psnr_images", config["psnr_images"] >= -1, ">= 0, or -1 for max_images"),
        ("ode_images", config["ode_images"] >= 0, ">= 0 (0 = skip)"),
        ("ode_t_min", config["ode_t_min"] < config["t_max"], f"< --t_max={config['t_max']}")])
    device = pick_device(config["device"])
    gen = torch.Generator(device).manual_seed(config["seed"])
    bs = config["batch_size"]
    try:
        model, ckpt = load_weights(config["ckpt"], device, "energy", config["weights"])
        images, quantized = load_images(config["data_dir"], config["split"], config["max_images"], ckpt, config["ckpt"])
        const_images, _ = load_images(config["data_dir"], config["const_split"], config["max_images"], ckpt, config["ckpt"])
        if config["denoiser_ckpt"]:
            denoiser, dckpt = load_weights(config["denoiser_ckpt"], device, "denoiser", config["weights"])
            check_images(images, os.path.join(config["data_dir"], f"{config['split']}.npy"), dckpt, config["denoiser_ckpt"])
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    d = images[0].size

    c, c_se = estimate_log_norm_const(model, const_images, config["t_max"], config["n_draws"], bs, device, gen,
                                      desc="constant c")
    t0 = time.time()
    nll_bpd, nll_se, logp = nll(model, images, c, c_se, quantized, bs, device, desc="NLL")
    onepass_s = time.time() - t0
    results = dict(nll_bpd=nll_bpd, nll_bpd_stderr=nll_se, log_norm_const=c, log_norm_const_stderr=c_se,
                   d=d, n_images=len(images), n_const_images=len(const_images), n_draws=config["n_draws"],
                   quantized=bool(quantized), mean_logp_db_per_dim=float(DB_PER_NAT * logp.mean() / d),
                   onepass_seconds=onepass_s, checkpoint_step=ckpt["step"], weights=ckpt["weights"], config=config)

    n_psnr = len(images) if config["psnr_images"] < 0 else config["psnr_images"]
    if n_psnr > 0:
        psnr_e, psnr_e_se = denoising_psnr(energy_denoiser(model), images[:n_psnr], batch_size=bs, device=device,
                                           generator=gen, desc="PSNR, 9 levels")
        results["psnr"] = dict(psnr_in=list(PSNR_IN), energy=psnr_e, energy_stderr=psnr_e_se, n_images=n_psnr)
        if config["denoiser_ckpt"]:
            with torch.no_grad():
                psnr_d, psnr_d_se = denoising_psnr(denoiser, images[:n_psnr], batch_size=bs, device=device, generator=gen,
                                                   desc="denoiser PSNR")
            results["psnr"].update(denoiser=psnr_d, denoiser_stderr=psnr_d_se)

    if config["ode_images"] > 0:
        x_ode = images[:config["ode_images"]]
        prior_mean = to_tensor(np.asarray(const_images[:4096]), "cpu").mean(dim=0).to(device)   # (C, H, W)
        t0 = time.time()
        ode = torch.cat([ode_nll(model, x, prior_mean, config["ode_t_min"], config["t_max"], config["ode_steps"],
                                 config["ode_probes"], gen)[0].cpu()
                         for x in progress(batches(x_ode, bs, device), math.ceil(len(x_ode) / bs), "ODE check", "batch")]
                        ).numpy()
        ode_s = time.time() - t0
        to_bpd = 1 / (d * math.log(2))
        diff = ode + logp[:len(x_ode)]                                 # ODE NLL - one-pass NLL, nats
        m, se = mean_and_stderr(ode * to_bpd)
        dm, dse = mean_and_stderr(diff * to_bpd)
        results["ode"] = dict(nll_bpd=m + (8.0 if quantized else 0.0), nll_bpd_stderr=se,
                              onepass_nll_bpd=float(-logp[:len(x_ode)].mean() * to_bpd + (8.0 if quantized else 0.0)),
                              minus_onepass_bpd=dm, minus_onepass_bpd_stderr=dse, n_images=len(x_ode),
                              nfe_per_image=4 * config["ode_steps"], probes=config["ode_probes"], t_min=config["ode_t_min"],
                              seconds=ode_s, time_ratio=ode_s / (onepass_s * len(x_ode) / len(images)))

    if getattr(model, "gaussian", None) is not None and model.config.energy_bound is not None:
        # docs/method.md §9: |log Z(0) - log Z_G| <= B d, so the true NLL lies in this bracket, no sampling needed
        mean_U0 = float(np.mean(-logp - c))
        log_z_g, slack = model.gaussian.log_z(), model.config.energy_bound * d
        results.update(bracket_nll_bpd_lo=nll_bits_per_dim(mean_U0, log_z_g - slack, d, quantized),
                       bracket_nll_bpd_hi=nll_bits_per_dim(mean_U0, log_z_g + slack, d, quantized),
                       gaussian_normalized_nll_bpd=nll_bits_per_dim(mean_U0, log_z_g, d, quantized), log_z_gaussian=log_z_g)
    if config["ais_chains"] > 0 or config["is_draws"] > 0:
        results.update(certify(model, logp, c, d, quantized, config, device))
    if "RANK" in os.environ and int(os.environ["RANK"]) != 0:
        return results

    out = config["out"] or os.path.dirname(os.path.abspath(config["ckpt"]))
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "results.json"), results)
    print_table(results, os.path.join(out, "results.json"))
    return results


def enough_ess(ess, n):
    """Whether n weights with effective sample size ess give a standard error that means something: ESS of at
    least 30, or half the weights when there are fewer than 60 (equal weights: the estimate is exact). Below
    it, a few weights decide log Z and the estimate is low in expectation, however small its printed error."""
    return bool(ess >= min(30.0, 0.5 * n))


def gather(parts, ddp, world):
    """Every rank's list of parts, concatenated in rank order (all ranks get it); the list itself without DDP."""
    if not ddp:
        return parts
    gathered = [None] * world
    dist.all_gather_object(gathered, parts)
    return [p for part in gathered for p in part]


def certify(model, logp, c, d, quantized, config, device):
    """The certificates of log Z(0) (ais.py: AIS, and importance sampling from the Gaussian) and the NLL each
    certifies beside the one-pass NLL; results keys ais_* and is_* (module docstring). AIS chains are seeded one
    by one, importance draws by one generator per rank; both are split over the ranks of torchrun (rank 0 gathers).
    The reference Gaussian is the model's own Gaussian term, else one fitted to the training split."""
    ddp = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    if model.gaussian is not None:
        ref, ref_from = model.gaussian, "the model's Gaussian term"
    else:
        train, _ = load_split(config["data_dir"], "train")
        ref, ref_from = fitted_reference(train[:50_000]).to(device), "a stationary Gaussian fitted to the training split"
    t0, tuned, pilot_nfe = time.time(), dict(), 0
    run = dict(t_max=config["t_max"], n_levels=config["ais_steps"], mala_steps=config["ais_mala"], step=config["ais_step"],
               transport=config["ais_transport"])
    if config["ais_tune"] > 0:          # the pilot: its own seeds (disjoint from the chains'); rank 0's grid and h for all
        pilot = range(config["seed"] + 10 ** 9, config["seed"] + 10 ** 9 + config["ais_tune"])
        grid, steps, pilot_info = tune(model, ref, SeededNoise(pilot, device), config["ais_steps"],
                                       pilot_levels=min(config["ais_tune_levels"], config["ais_steps"]),
                                       **{k: v for k, v in run.items() if k != "n_levels"})
        shared = [(grid, steps, pilot_info["nfe"])]
        if ddp:
            dist.broadcast_object_list(shared, src=0)
        grid, steps, pilot_nfe = shared[0]
        tuned = dict(grid=grid, steps=steps)
    to_bpd = 1 / (d * math.log(2))
    U0 = -logp - c                                                        # U(x, 0) per image
    mean_U0, se_U0 = mean_and_stderr(U0)
    results = {}
    if config["is_draws"] > 0:                # importance sampling: seed + 2e9 + rank, the rank's share of the draws
        g = torch.Generator(device).manual_seed(config["seed"] + 2 * 10 ** 9 + rank)
        n = config["is_draws"] // world + (rank < config["is_draws"] % world)
        log_w = [importance(model, ref, n, g, config["batch_size"]).cpu().numpy()]
        log_w = np.concatenate(gather(log_w, ddp, world))
        log_z, log_z_se, ess = summarize(log_w)
        results.update(is_log_z=log_z, is_log_z_se=log_z_se, is_ess=ess, is_draws=len(log_w),
                       is_enough_ess=enough_ess(ess, len(log_w)),
                       is_nll_bpd=nll_bits_per_dim(mean_U0, log_z, d, quantized),
                       is_nll_bpd_se=math.sqrt(se_U0 ** 2 + log_z_se ** 2) * to_bpd, is_delta_bpd=(c - log_z) * to_bpd,
                       is_log_z_reference=ref.log_z(), is_reference=ref_from)
    if config["ais_chains"] == 0:
        return results
    seeds = list(range(config["seed"], config["seed"] + config["ais_chains"]))[rank::world]
    parts = []
    for i in range(0, len(seeds), config["batch_size"]):
        log_w, info = ais(model, ref, SeededNoise(seeds[i:i + config["batch_size"]], device), **run, **tuned)
        parts.append((seeds[i:i + config["batch_size"]], log_w.cpu().numpy(), info["acceptance"], info["ess"]))
    parts = gather(parts, ddp, world)
    log_w = np.concatenate([p[1] for p in parts])
    acceptance = np.mean([p[2] for p in parts], axis=0)                 # per level, over the batches
    ess_trace = np.mean([p[3] for p in parts], axis=0)                  # ESS after each level (within a batch)
    log_z, log_z_se, ess = summarize(log_w)
    nll_ais = nll_bits_per_dim(mean_U0, log_z, d, quantized)
    every = max(1, len(acceptance) // 64)                               # per-level lists: at most ~64 entries
    return results | dict(ais_log_z=log_z, ais_log_z_se=log_z_se, ais_nll_bpd=nll_ais,
                ais_nll_bpd_se=math.sqrt(se_U0 ** 2 + log_z_se ** 2) * to_bpd, ais_delta_bpd=(c - log_z) * to_bpd,
                ais_delta_bpd_se=log_z_se * to_bpd, ais_ess=ess, ais_enough_ess=enough_ess(ess, len(log_w)),
                ais_chains=len(log_w), ais_levels=config["ais_steps"],
                ais_nfe_per_chain=info["nfe"], ais_acceptance_min=float(acceptance.min()),
                ais_acceptance_mean=float(acceptance.mean()), ais_acceptance=acceptance[::every].tolist(),
                ais_log_z_reference=info["log_z_ref"], ais_reference=ref_from, ais_length=info["length"],
                ais_tuned=bool(tuned), ais_pilot_chains=config["ais_tune"] if tuned else 0,
                ais_nfe_per_pilot_chain=pilot_nfe, ais_h=info["steps"][::every].tolist(), ais_t=info["t"][1:-1][::every].tolist(),
                ais_ess_trace=ess_trace[::max(1, len(ess_trace) // 64)].tolist(), ais_seconds=time.time() - t0)


def print_table(r, path):
    unit = "bits/dim (+8 offset, uint8 images)" if r["quantized"] else "bits/dim (differential entropy)"
    print(f"d = {r['d']}, {r['n_images']} images, constant from {r['n_const_images']} images x {r['n_draws']} draws")
    print(f"log_norm_const c = {r['log_norm_const']:.3f} +- {r['log_norm_const_stderr']:.3f} nats")
    print(f"NLL              = {r['nll_bpd']:.4f} +- {r['nll_bpd_stderr']:.4f} {unit}")
    print(f"mean log p       = {r['mean_logp_db_per_dim']:.3f} dB/dim")
    if "psnr" in r:
        p = r["psnr"]
        print(f"denoising PSNR (dB) on {p['n_images']} images:")
        print("  input   " + " ".join(f"{v:7.0f}" for v in p["psnr_in"]))
        print("  energy  " + " ".join(f"{v:7.2f}" for v in p["energy"]))
        if "denoiser" in p:
            print("  denoiser" + " ".join(f"{v:7.2f}" for v in p["denoiser"]))
    if "ode" in r:
        o = r["ode"]
        print(f"ODE NLL on {o['n_images']} images = {o['nll_bpd']:.4f} +- {o['nll_bpd_stderr']:.4f} (one-pass "
              f"{o['onepass_nll_bpd']:.4f}; ODE - one-pass = {o['minus_onepass_bpd']:.4f} +- "
              f"{o['minus_onepass_bpd_stderr']:.4f}), {o['nfe_per_image']} evaluations/image, "
              f"{o['time_ratio']:.0f}x the one-pass time")
    if "bracket_nll_bpd_lo" in r:
        print(f"NLL bracket      = [{r['bracket_nll_bpd_lo']:.4f}, {r['bracket_nll_bpd_hi']:.4f}] {unit} by the energy bound "
              f"(|log Z(0) - log Z_G| <= B d; normalized by Z_G: {r['gaussian_normalized_nll_bpd']:.4f})")
    warn = ("  (ESS too low for the standard error to mean anything: read the certified NLL as a lower "
            "estimate, docs/normalization.md §4)")
    if "is_log_z" in r:
        print(f"importance sampling from the Gaussian ({r['is_draws']} draws, ESS {r['is_ess']:.1f}): log Z(0) = "
              f"{r['is_log_z']:.3f} +- {r['is_log_z_se']:.3f} nats; certified NLL = {r['is_nll_bpd']:.4f} +- "
              f"{r['is_nll_bpd_se']:.4f}; one-pass - certified = {r['is_delta_bpd']:.4f} bits/dim"
              + ("" if r["is_enough_ess"] else warn))
    if "ais_log_z" in r:
        print(f"AIS ({r['ais_chains']} chains x {r['ais_levels']} levels, {r['ais_nfe_per_chain']} evaluations/chain, "
              f"ESS {r['ais_ess']:.1f}, MALA acceptance min {r['ais_acceptance_min']:.2f} mean {r['ais_acceptance_mean']:.2f}): "
              f"log Z(0) = {r['ais_log_z']:.3f} +- {r['ais_log_z_se']:.3f} nats (reference Gaussian {r['ais_log_z_reference']:.3f})")
        print(f"certified NLL    = {r['ais_nll_bpd']:.4f} +- {r['ais_nll_bpd_se']:.4f} {unit}; one-pass - certified = "
              f"{r['ais_delta_bpd']:.4f} +- {r['ais_delta_bpd_se']:.4f} bits/dim" + ("" if r["ais_enough_ess"] else warn))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
