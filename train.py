"""Train an energy model U(y, t) by dual score matching (docs/method.md §3), or the plain denoiser baseline.

    python train.py                                      # the paper's colour ImageNet64 run, one GPU (or CPU)
    python train.py --preset=cpu                         # small grayscale model on data/patches, ~10 min on a CPU
    torchrun --standalone --nproc_per_node=8 train.py    # the same run on 8 GPUs (DDP, NCCL)
    torchrun --nnodes=2 --node_rank=0 --master_addr=HOST --master_port=29500 --nproc_per_node=8 train.py
    torchrun --standalone --nproc_per_node=2 train.py --preset=cpu   # DDP on CPU (gloo)

Overrides are typed `--key=value` (configurator.py: unknown keys and bad values are one-line errors);
the model keys are model.py's UNetConfig fields (--base_width=32 --groups=None ...); --help lists all. Prepare data first with
`python data/imagenet64/prepare.py --src=DIR` or `python data/patches/prepare.py`.
Everything goes to out_dir: config.json, log.jsonl (one JSON object per log line and per eval),
ckpt.pt (and the one before it, ckpt_prev.pt). A run resumes from out_dir/ckpt.pt by itself.
"""
import json
import math
import os
import platform
import sys
import time
from contextlib import nullcontext
from dataclasses import fields
from functools import lru_cache
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from backends import full_precision, keep_freed_memory, setup_device
from configurator import config_block, configure, fail, require
from dataset import check_finite, covariance_spectrum, load_split, stationary_spectrum, to_tensor
from eval import json_safe, log_norm_const, nll_bits_per_dim, noisy_energies, score_matching_terms
from losses import denoiser_score_matching, dual_score_matching, mass_penalty
from model import UNetConfig, build_model, count_parameters

# ----------------------------------------------------------------------------- config
# defaults: the paper's colour ImageNet64 run (docs/method.md §3); every key is a --key=value option
data_dir = "data/imagenet64"      # folder with train.npy and val.npy, (N, H, W, C) uint8 or float32
out_dir = "out/imagenet64"        # config, logs and checkpoints; an existing ckpt.pt is resumed
kind: Literal["energy", "denoiser"] = "energy"   # "energy": U(y, t) by dual SM; "denoiser": the plain score network baseline
time_weight = 1.0                 # weight of the time score matching term; 0 = single score matching
norm_weight = 1.0                 # weight of the off-data mass penalty (losses.mass_penalty, docs/method.md §10); 0 = off;
                                  # acts on the network term of an energy with a Gaussian term, no effect without one
norm_draws = 8                    # Gaussian draws per micro-batch for the penalty; 0 = as many as images (costlier)
max_steps = 1_000_000             # optimizer steps
batch_size = 128                  # GLOBAL batch (images per step), split across ranks and grad_accum
grad_accum = 1                    # micro-batches per rank and step (same result, less memory)
lr = 5e-4                         # Adam learning rate at step 0
lr_halve_every = 100_000          # steps between halvings of the learning rate
beta1 = 0.9                       # Adam beta1
beta2 = 0.999                     # Adam beta2
flip = True                       # random horizontal flips of the training images
ema_halflife_images = 0           # EMA of the weights, half-life in images seen; 0 = no EMA (the paper)
log_interval = 100                # steps between log lines
eval_interval = 10_000            # steps between evaluations (also after the last step)
eval_images = 2048                # validation images used by each evaluation (the first ones)
eval_t_max = 1e3                  # noise variance at which the normalization constant c is fixed (docs/method.md §5)
ckpt_interval = 5000              # steps between checkpoints (also after the last step)
device = "auto"                   # "auto" (cuda if available), "cpu", "cuda", "cuda:N"
seed = 0                          # seeds the initialization, data order, flips and noise
grad_dump = ""                    # tests: file to save the first step's averaged gradients in; "" = off
preset = ""                       # a named config of PRESETS applied before the other overrides
spectrum_images = 50_000          # training images whose statistics give data_var and the spectrum (see below)
spectrum_floor = 1e-4             # gaussian_term: floor of the spectrum, a fraction of the pixel variance (dataset.py)
tf32 = False                      # TF32 matrix products and convolutions on CUDA (faster, ~1e-3 relative error); False = fp32 (the paper)
deterministic = False             # deterministic cuDNN / cuBLAS algorithms: bit-exact GPU resume, slower (docs/training.md)
# model: the fields of model.UNetConfig but channels, data_spectrum and image_size (measured on the data).
# Defaults: the paper's UNet (docs/method.md §2.1) with a confining energy (docs/normalization.md, §9):
# U = U_G + B d tanh(r / (B d)), U_G the stationary Gaussian fitted to the training set, B = energy_bound
# nats/dim, r = 0.5 <y - m, f> / (s^2 + t), the last conv zeroed so training starts from U_G, log-t noise
# conditioning, and the penalty on mass off the data (norm_weight, docs/method.md §10). Other settings:
#   confining, no penalty: --norm_weight=0
#   the previous default:  --gaussian_term=False --energy_bound=None --zero_init_out=False --analytic_term=True
#   the paper's model:     --gaussian_term=False --energy_bound=None --zero_init_out=False --scale_energy=False --t_embedding=paper
base_width = 64                   # channels at the finest scale; doubles at each coarser scale
num_scales = 3                    # scales of the encoder/decoder (image sides must be divisible by 2^num_scales)
layers_per_block = 3              # convs per block (>= 2), the down/up convs included
groups: int | None = None         # groups of every norm layer; None = one per channel (the reference)
preserve_scale = True             # scale-preserving GroupNorm (docs/method.md §2.2); False = plain GroupNorm
emb_dim = 256                     # width of the noise-conditioning MLP
num_freqs = 32                    # sinusoidal frequencies of the t embedding
kernel_impl: Literal["auto", "derived", "triton", "reference", "torch"] = "auto"   # group_norm_silu path: auto = triton on CUDA, derived on CPU; reference (alias torch) = autograd (kernels/)
t_embedding: Literal["paper", "log"] = "log"   # "paper": sinusoids of t; "log": of log(t + t_floor)
t_floor = 1e-6                    # "log" only: the embedding is flat for t << t_floor (variance units)
data_var: float | None = None     # s^2, the per-pixel data variance; None = measured on the training set (a value: isotropic analytic term)
# (data_var = None: it and the spectrum are measured on spectrum_images training images, or read from the
# checkpoint on resume; --data_var=VALUE makes analytic_term isotropic, (d/2) log(1 + t / data_var))
analytic_term = False             # U += the log-det of the data's Gaussian (docs/method.md §2; the previous default)
scale_energy = True               # r = 0.5 <y, f> / (data_var + t); False = 0.5 <y, f> (the paper)
gaussian_term = True              # U = U_G + R: the stationary Gaussian fitted to the data, exact normalizer (docs/normalization.md)
energy_bound: float | None = 1.0  # B, nats/dim: R = B d tanh(r / (B d)), so Z(t) is within e^(+-B d) of Z_G; None = unbounded
zero_init_out = True              # zero the last conv: training starts from U_G

PRESETS = {
    "cpu": dict(                  # ~10 min on one CPU core: grayscale 32x32 patches of photographs
        data_dir="data/patches", out_dir="out/patches", device="cpu",
        base_width=16, num_scales=2, layers_per_block=2, emb_dim=64,
        batch_size=32, max_steps=600, lr=1e-3, lr_halve_every=200,
        log_interval=25, eval_interval=300, eval_images=256, ckpt_interval=100),
}
MODEL_KEYS = [f.name for f in fields(UNetConfig) if f.name not in ("channels", "data_spectrum", "image_size")]
config = configure(config_block(globals()), doc=__doc__, presets=PRESETS)
require(all(k in config for k in MODEL_KEYS), f"train.py defines no key for the UNetConfig fields "
        f"{[k for k in MODEL_KEYS if k not in config]}: add them to its config block")
globals().update(config)
# -----------------------------------------------------------------------------
t_start = time.time()

# ----------------------------------------------------------------------------- data and checks
try:
    for key, ok, need in (("lr", lr > 0, "> 0"), ("beta1", 0 <= beta1 < 1, "in [0, 1)"), ("beta2", 0 <= beta2 < 1, "in [0, 1)"),
                          ("time_weight", time_weight >= 0, ">= 0"), ("eval_t_max", eval_t_max > 0, "> 0 (a noise variance)"),
                          ("ema_halflife_images", ema_halflife_images >= 0, ">= 0 (0 = no EMA)"),
                          ("data_var", data_var is None or data_var > 0, "> 0 or None (measured)"),
                          ("spectrum_floor", spectrum_floor > 0, "> 0 (a fraction of the pixel variance)"),
                          ("energy_bound", energy_bound is None or energy_bound > 0, "> 0 or None (unbounded)"),
                          ("norm_weight", norm_weight >= 0, ">= 0 (0 = no penalty)"),
                          ("norm_draws", norm_draws >= 0, ">= 0 (0 = the micro-batch size)")):
        if not (ok and math.isfinite(config[key] if config[key] is not None else 0.0)):
            raise ValueError(f"--{key}={config[key]}: must be {need}")
    for key in ("max_steps", "batch_size", "grad_accum", "lr_halve_every", "log_interval", "eval_interval",
                "ckpt_interval", "eval_images", "spectrum_images"):
        if config[key] < 1:
            raise ValueError(f"--{key}={config[key]}: must be >= 1")
    train_data, quantized = load_split(data_dir, "train")               # (N, H, W, C) memmap
    val_data, _ = load_split(data_dir, "val")
    N, H, W, C = train_data.shape
    for name, split in (("train", train_data), ("val", val_data)):
        if len(split) == 0:
            raise ValueError(f"{os.path.join(data_dir, name + '.npy')} holds no images; prepare the data again")
    if val_data.shape[1:] != (H, W, C) or val_data.dtype != train_data.dtype:
        raise ValueError(f"val.npy {val_data.shape} {val_data.dtype} does not match train.npy "
                         f"{train_data.shape} {train_data.dtype}; prepare the data again")
    if H % 2 ** num_scales or W % 2 ** num_scales:
        raise ValueError(f"image size {H}x{W} is not divisible by 2^num_scales = {2 ** num_scales}; "
                         f"lower --num_scales or crop the data")
    check_finite(train_data, os.path.join(data_dir, "train.npy"))      # float32 only: uint8 is always finite
    check_finite(val_data[:eval_images], os.path.join(data_dir, "val.npy"))
except (ValueError, FileNotFoundError) as e:
    fail(str(e))
d = H * W * C                                                           # dimensions per image

# ----------------------------------------------------------------------------- devices and DDP
ddp = "RANK" in os.environ                                              # set by torchrun
try:
    if ddp and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"                # one GPU per process
    device = setup_device(device, tf32=tf32, deterministic=deterministic)   # current device, TF32, determinism
except ValueError as e:
    fail(str(e))
if ddp:
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
else:
    rank, world_size = 0, 1
master = rank == 0                                                      # only rank 0 prints and writes
require(batch_size % (world_size * grad_accum) == 0, f"--batch_size={batch_size} must be divisible by "
        f"world_size * grad_accum = {world_size} * {grad_accum}")
chunk_size = batch_size // (world_size * grad_accum)                   # images per micro-batch


def from_rank0(value):
    """rank 0's value on every rank (pickled; CPU tensors inside stay CPU tensors)."""
    if not ddp:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------- resume, data statistics
# Rank 0 alone decides whether to resume and reads the checkpoint (to CPU), then sends it to every rank:
# on several nodes without a shared out_dir the other ranks see no checkpoint at all, and a rank that
# decided alone would skip the collective calls the others make.
ckpt_path, prev_path = os.path.join(out_dir, "ckpt.pt"), os.path.join(out_dir, "ckpt_prev.pt")
resume_path, ckpt, error = None, None, None
if master:
    resume_path = next((p for p in (ckpt_path, prev_path) if os.path.exists(p)), None)
    if resume_path:
        try:
            ckpt = torch.load(resume_path, map_location="cpu", weights_only=True)
            if not isinstance(ckpt, dict) or not all(k in ckpt for k in ("model", "model_config", "kind", "step", "optimizer")):
                raise ValueError("not a checkpoint written by train.py")
        except Exception as e:
            error = (f"checkpoint {resume_path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0][:200]}); move it "
                     f"away (the one before it is {prev_path}: rename it to ckpt.pt to resume from it) or use another out_dir")
resume_path, ckpt, error = from_rank0((resume_path, ckpt, error))
require(error is None, error)
if resume_path:
    ckpt_model_config, ckpt_kind = ckpt["model_config"], ckpt["kind"]
# gaussian_term needs the data's mean and spectrum (dataset.stationary_spectrum), analytic_term and scale_energy
# the pixel variance (and analytic_term the covariance spectrum): measured once by rank 0 on the training device,
# sent to every rank; a resumed run reads them from its checkpoint (the Gaussian term's buffers are in its state_dict)
data_stats, gaussian = dict(data_var=data_var, data_spectrum=None), None
if kind == "denoiser":              # x_hat = y - t f(y, t) has no energy: the options do not apply
    config.update(analytic_term=False, scale_energy=False, gaussian_term=False, energy_bound=None, zero_init_out=False)
elif resume_path and (gaussian_term or analytic_term or scale_energy) and data_var is None:
    data_stats = {k: ckpt_model_config.get(k) for k in data_stats}
elif gaussian_term and analytic_term:
    fail("gaussian_term already holds the log-det that analytic_term adds: turn one off (--analytic_term=False, the default)")
elif gaussian_term or ((analytic_term or scale_energy) and data_var is None):
    stats = None
    if master:
        try:
            if gaussian_term:
                mean, P, _ = stationary_spectrum(train_data, spectrum_images, spectrum_floor, device=device)
                var = P.diagonal(dim1=-2, dim2=-1).real.mean().item() / (1 + spectrum_floor)   # the pixel variance
                stats = dict(data_var=data_var or var, data_spectrum=None, gaussian=(mean.cpu(), P.cpu()))   # CPU: a pickled CUDA
                # tensor would land on rank 0's GPU on every rank
            else:
                var, spectrum = covariance_spectrum(train_data, spectrum_images, device=device)
                stats = dict(data_var=var, data_spectrum=spectrum)
        except ValueError as e:
            stats = str(e)                                              # every rank stops with the message
    stats = from_rank0(stats)
    require(not isinstance(stats, str), stats)
    gaussian = stats.pop("gaussian", None)
    data_stats = stats
try:
    model_config = UNetConfig(channels=C, image_size=(H, W) if config["gaussian_term"] else None,
                              **{**{k: config[k] for k in MODEL_KEYS}, **data_stats}).to_dict()
except ValueError as e:
    fail(str(e))
spectrum = model_config["data_spectrum"]                                # the config records what was measured
config.update(data_var=model_config["data_var"], data_spectrum=spectrum and list(spectrum),
              image_shape=[H, W, C])                                    # eval, sample, figures need no data_dir

# ----------------------------------------------------------------------------- model, optimizer, resume
torch.manual_seed(seed)
raw_model = build_model(kind, model_config).to(device)
if gaussian is not None:
    raw_model.set_gaussian(*(v.to(device) for v in gaussian))
# fused: one kernel per step, and it skips the update on device when optimizer.found_inf is 1 (see the loop)
optimizer = torch.optim.Adam(raw_model.parameters(), lr=lr, betas=(beta1, beta2), fused=True)
ema = [p.detach().clone() for p in raw_model.parameters()] if ema_halflife_images else None
step = 0
if resume_path:
    structure = lambda cfg: {k: v for k, v in cfg.items() if k != "kernel_impl"}   # the kernel path may change
    if ckpt_kind != kind or structure(ckpt_model_config) != structure(model_config):
        fail(f"{resume_path} holds a {ckpt_kind!r} model {ckpt_model_config}, not the configured "
             f"{kind!r} model {model_config}; use another out_dir")
    raw_model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])      # from CPU: moments go to the parameters' device
    for group in optimizer.param_groups:              # a checkpoint of the non-fused Adam restores its options:
        group.update(fused=True, foreach=None)        # keep the fused one, with its step counters beside the weights
    for p, state in optimizer.state.items():
        state["step"] = state["step"].to(device=p.device, dtype=torch.float32)
    if ema is not None:
        ema = [ckpt["ema"][n].to(device) for n, _ in raw_model.named_parameters()] if "ema" in ckpt else ema
    step = ckpt["step"]
    del ckpt
net = raw_model if kind == "energy" else raw_model.unet                # forward = U(y, t), or f(y, t)
model = DDP(net) if ddp else net                                        # DDP: gradients averaged over ranks


def save_checkpoint():
    """Atomic: write a temporary file, keep the current ckpt.pt as ckpt_prev.pt, rename."""
    ckpt = {"model": raw_model.state_dict(), "model_config": model_config, "kind": kind, "config": config,
            "step": step, "images_seen": step * batch_size, "optimizer": optimizer.state_dict()}
    if ema is not None:
        ckpt["ema"] = {n: e for (n, _), e in zip(raw_model.named_parameters(), ema)}
    torch.save(ckpt, ckpt_path + ".tmp")
    if os.path.exists(ckpt_path):
        os.replace(ckpt_path, prev_path)
    os.replace(ckpt_path + ".tmp", ckpt_path)


def log(record, line):
    """rank 0: print a line and append a JSON record (with seconds since this process started) to out_dir/log.jsonl."""
    if master:
        print(line, flush=True)
        with open(os.path.join(out_dir, "log.jsonl"), "a") as fh:
            fh.write(json.dumps(json_safe({**record, "elapsed_s": round(time.time() - t_start, 3)}), allow_nan=False) + "\n")


# ----------------------------------------------------------------------------- randomness and batches
# Every random draw comes from a generator seeded by (seed, purpose, step, micro-batch), so a resumed
# run repeats exactly what an uninterrupted one does, and the global batch is the same for any number
# of ranks: micro-batch k of rank r is global chunk r * grad_accum + k.
def generator(*key, on=None):
    """A torch.Generator on device `on` (default: the training device) seeded by (seed, *key)."""
    g = torch.Generator(device=on or device)
    return g.manual_seed(int(np.random.SeedSequence([seed, *key]).generate_state(1)[0]))


@lru_cache(maxsize=2)
def epoch_order(epoch):
    """A random permutation of the training set for this epoch, (N,)."""
    return torch.randperm(N, generator=generator(2, epoch, on="cpu"))


def train_batch(step, chunk, g):
    """Micro-batch `chunk` of the step's global batch, randomly flipped: (chunk_size, C, H, W) on device."""
    pos = torch.arange(step * batch_size + chunk * chunk_size, step * batch_size + (chunk + 1) * chunk_size)
    idx = torch.stack([epoch_order(int(p) // N)[int(p) % N] for p in pos])
    x = to_tensor(train_data[np.sort(idx.numpy())], device)                 # (B, C, H, W)
    if flip:
        flipped = torch.rand(x.shape[0], generator=g, device=device) < 0.5
        x = torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def loss_terms(fn, x, g, t=None):
    """Per-sample loss terms (B,) of the configured objective."""
    if kind == "energy":
        return dual_score_matching(fn, x, t=t, time_weight=time_weight, generator=g)
    return denoiser_score_matching(fn, x, t=t, generator=g)


# ----------------------------------------------------------------------------- evaluation
EVAL_PSNR = list(range(-30, 91, 15))                                    # input PSNR levels, dB; t = 10^(-PSNR/10)


def evaluate():
    """Loss terms and denoised PSNR (mean over images, peak 1) at fixed noise levels, and the NLL
    (bits/dim, constant c from t = eval_t_max), on the first eval_images validation images.

    Validation batches of the micro-batch size go round-robin to the ranks, each with noise that is
    the same at every evaluation; the sums are all-reduced over the ranks.
    """
    n_eval, B, L = min(eval_images, len(val_data)), chunk_size, len(EVAL_PSNR)
    # sums: images; per level l: space, time and output PSNR at 1 + 3l ...; U(x, 0) and U(y, t_max) at -2, -1
    sums = torch.zeros(3 + 3 * L, dtype=torch.float64, device=device)
    for j in range(rank, math.ceil(n_eval / B), world_size):
        x = to_tensor(np.array(val_data[j * B:min((j + 1) * B, n_eval)]), device)  # (B, C, H, W)
        g = generator(1, j)
        sums[0] += x.shape[0]
        for l, psnr in enumerate(EVAL_PSNR):
            t = torch.full((x.shape[0],), 10.0 ** (-psnr / 10), device=device)
            if kind == "energy":                                       # scores only: no double-backward graph
                terms = score_matching_terms(net, x, t, time_weight, g)
            else:
                with torch.no_grad():
                    terms = denoiser_score_matching(net, x, t=t, generator=g)
            terms = {k: v.detach().double() for k, v in terms.items()}
            mse = terms["space"] * t.double()                          # mean (x_hat - x)^2 per image
            sums[1 + 3 * l] += terms["space"].sum()
            sums[2 + 3 * l] += terms["time"].sum() if "time" in terms else 0.0
            sums[3 + 3 * l] += (-10 * torch.log10(mse.clamp_min(1e-30))).sum()
        if kind == "energy":
            sums[-2] += noisy_energies(raw_model, x, 0.0).sum().double()
            sums[-1] += noisy_energies(raw_model, x, eval_t_max, g).sum().double()
    if ddp:
        dist.all_reduce(sums)
    mean = (sums[1:] / sums[0]).tolist()
    levels = [{"psnr_in": psnr, "space": mean[3 * l], **({"time": mean[3 * l + 1]} if kind == "energy" else {}),
               "psnr_out": mean[3 * l + 2]} for l, psnr in enumerate(EVAL_PSNR)]
    out = {"n_images": int(sums[0]), "levels": levels}
    if kind == "energy":
        c = log_norm_const(mean[-1], d, eval_t_max)
        out.update(log_norm_const=c, nll_bpd=nll_bits_per_dim(mean[-2], c, d, quantized))
    return out


# ----------------------------------------------------------------------------- identity
if master:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "config.json"), "w") as fh:
        json.dump(config, fh, indent=1)
gpu = torch.cuda.get_device_name(device) if device.startswith("cuda") else platform.processor() or "cpu"
short = spectrum and f"{len(spectrum)} bins, {min(spectrum):.3g} .. {max(spectrum):.3g}"    # for the printout
short_config, short_run = {**model_config, "data_spectrum": short}, {**config, "data_spectrum": short}
log({"run": config, "model_config": model_config, "torch": torch.__version__, "python": platform.python_version(),
     "device": device, "gpu": gpu, "world_size": world_size, "parameters": count_parameters(raw_model), "step": step},
    f"config {json.dumps(short_run)}\nmodel {short_config}: {count_parameters(raw_model):,} parameters\n"
    f"data {data_dir}: train {train_data.shape} val {val_data.shape} {train_data.dtype}, d = {d}\n"
    f"torch {torch.__version__}, python {platform.python_version()}, device {device} ({gpu}), "
    f"world size {world_size}, {'resuming from ' + resume_path + ' at step ' + str(step) if resume_path else 'fresh start'}")

# ----------------------------------------------------------------------------- training loop
# Nothing in a step waits for the GPU: finiteness is checked on device, and a step whose loss or gradient
# is not finite sets bad_step, after which the fused Adam skips every update (found_inf = 1, on device) and
# the EMA stands still. The host reads bad_step at each log, evaluation and checkpoint step and stops there:
# the weights are those before the first bad update, and no checkpoint is written after it.
interval = torch.zeros(4, dtype=torch.float64, device=device)         # images, loss, space, time sums
bad_step = torch.zeros((), dtype=torch.int64, device=device)          # first non-finite step; 0 = none
optimizer.found_inf = torch.zeros((), dtype=torch.float32, device=device)
ema_rate = 1.0 - 0.5 ** (batch_size / ema_halflife_images) if ema is not None else 0.0
interval_start, run_steps, failed = time.time(), 0, False
if device == "cpu":
    keep_freed_memory()     # glibc's malloc keeps what a step frees: no page faults a step (kernels/README.md)
while step < max_steps:
    lr_now = lr * 0.5 ** (step // lr_halve_every)                       # halved every lr_halve_every steps
    for group in optimizer.param_groups:
        group["lr"] = lr_now
    sums = torch.zeros(4, dtype=torch.float64, device=device)
    for k in range(grad_accum):
        chunk = rank * grad_accum + k
        g = generator(0, step, chunk)
        x = train_batch(step, chunk, g)                                 # (chunk_size, C, H, W)
        with model.no_sync() if ddp and k < grad_accum - 1 else nullcontext():
            terms = loss_terms(model, x, g)
            # DDP averages the ranks' gradients: this is the gradient of the mean over the global batch
            total = terms["loss"].sum() * (world_size / batch_size)
            if norm_weight > 0 and kind == "energy" and gaussian_term:
                penalty = mass_penalty(raw_model, norm_draws or x.shape[0], g)          # a mean over draws, per micro-batch
                total = total + norm_weight * penalty * (chunk_size / batch_size) * world_size
            total.backward()
        zero = torch.zeros((), device=device)
        sums += torch.stack([zero + x.shape[0], terms["loss"].detach().sum(), terms["space"].detach().sum(),
                             terms["time"].detach().sum() if "time" in terms else zero]).double()
    if ddp:
        dist.all_reduce(sums)
    grad_norm = torch.nn.utils.get_total_norm([p.grad for p in raw_model.parameters()])
    if grad_dump and run_steps == 0 and master:
        torch.save({n: p.grad.detach().cpu() for n, p in raw_model.named_parameters()}, grad_dump)
    finite = torch.isfinite(sums).all() & torch.isfinite(grad_norm)
    bad_step = torch.where((bad_step == 0) & ~finite, step + 1, bad_step)
    optimizer.found_inf = (bad_step > 0).float()                        # 1 from the first bad step on: no update
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if ema is not None:
        torch._foreach_lerp_(ema, [p.detach() for p in raw_model.parameters()],
                             [ema_rate * (1.0 - optimizer.found_inf)] * len(ema))
    step += 1
    run_steps += 1
    interval += sums
    logging, evaluating = step % log_interval == 0 or step == max_steps, step % eval_interval == 0 or step == max_steps
    saving = step % ckpt_interval == 0 or step == max_steps             # the same on every rank: all check
    if (logging or evaluating or saving) and bad_step.item():          # the host waits for the device here only
        first = bad_step.item()
        log({"step": first, "error": "non-finite loss or gradient"},
            f"step {first}: the loss or the gradient is not finite; stopped at step {step} with the weights of step "
            f"{first - 1} (no update after it) and without a checkpoint"
            + (f" (the last good one is {ckpt_path}); lower --lr, or resume from it with another --seed"
               if os.path.exists(ckpt_path) else "; lower --lr"))
        failed = True
        break
    if logging:
        n, loss, space, time_term = interval.tolist()
        images_per_s = n / (time.time() - interval_start)
        eta_h = (max_steps - step) * batch_size / images_per_s / 3600
        log({"step": step, "images": step * batch_size, "loss": loss / n, "space": space / n, "time": time_term / n,
             "lr": lr_now, "grad_norm": grad_norm.item(), "images_per_s": images_per_s},
            f"step {step}/{max_steps} | {step * batch_size / 1e3:.1f}k img | loss {loss / n:.4f} space {space / n:.4f} "
            f"time {time_term / n:.4f} | lr {lr_now:.2e} | gnorm {grad_norm.item():.3g} | {images_per_s:.1f} img/s "
            f"| eta {eta_h:.2f} h")
        interval.zero_()
        interval_start = time.time()
    pause = time.time()
    if evaluating:
        with full_precision():                                          # fp32 whatever --tf32, as eval.py
            result = evaluate()
        nll = f"nll {result['nll_bpd']:.4f} bits/dim (c = {result['log_norm_const']:.1f} nats) | " if kind == "energy" else ""
        log({"step": step, "images": step * batch_size, "eval": result},
            f"eval step {step} | {nll}space at PSNR {EVAL_PSNR[0]}..{EVAL_PSNR[-1]} dB: "
            + " ".join(f"{lv['space']:.3f}" for lv in result["levels"])
            + " | output PSNR: " + " ".join(f"{lv['psnr_out']:.2f}" for lv in result["levels"]))
    if saving and master:
        save_checkpoint()
    interval_start += time.time() - pause                               # the rate counts training time only
if master and run_steps == 0 and not failed:
    print(f"nothing to do: {ckpt_path} is already at step {step} = max_steps")
if ddp:
    dist.destroy_process_group()
if failed:
    sys.exit(1)
