"""Samples from a trained energy model by reverse diffusion driven by its score -grad_y U.

    python sample.py --ckpt=out/ckpt.pt                                    # 64 samples, GPU if present
    python sample.py --ckpt=out/ckpt.pt --num_samples=16 --n_steps=128 --device=cpu
    python sample.py --ckpt=out/ckpt.pt --mala_steps=2                     # + Metropolis correction
    torchrun --standalone --nproc_per_node=8 sample.py --ckpt=out/ckpt.pt --num_samples=1024

Discretization (variance-exploding, t the noise variance; n_steps + 1 + n_steps * mala_steps network
evaluations per sample, each a forward and a gradient, plus one forward for log p):
    t_0 = t_max > t_1 > ... > t_N = t_min, geometric (equal steps in log t)
    y_0 = prior_mean + sqrt(t_max) xi
    y_{k+1} = y_k - (t_k - t_{k+1}) grad_y U(y_k, t_k) + sqrt(t_k - t_{k+1}) xi_k   (reverse SDE, Euler-Maruyama)
    then mala_steps Metropolis-adjusted Langevin steps targeting p(y, t_{k+1}) = exp(-U - c),
    step size h = mala_step * t_{k+1}; the sample is x_hat(y_N, t_min) = y_N - t_min grad_y U.
MALA is possible because U is an energy, not just a score: the acceptance ratio needs
U(y', t) - U(y, t), where the constant c cancels (a plain score network cannot do this).

Each sample has its own generator seeded by its seed (seed, seed + 1, ..., seed + num_samples - 1), so a
sample does not depend on the batch size or the number of ranks; under torchrun rank r draws seeds
r, r + world, ... and rank 0 gathers them. Writes OUT/samples.png (a grid), OUT/samples.npy
(N, H, W, C) in [0, 1], OUT/samples.json (seeds, log p per sample, acceptance rate, evaluations)
and prints the mean log p of the samples: -(U(x, 0) + c) with c (docs/method.md §5) from the validation split
of --data_dir if given, else from constant images at prior_mean: at t_max the noise (std ~32)
swamps the images, so U(x + sqrt(t_max) z, t_max) hardly depends on x (on a trained 32x32 model, c
from gray images at 0, 0.45 or 0.5 matched c from the data within its standard error of 1.3 nats).
"""
import json
import math
import os
import sys

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.distributed as dist

from configurator import configure
from dataset import load_split
from eval import DB_PER_NAT, check_images, estimate_log_norm_const, pick_device, trained_image_shape
from model import energy_and_scores, load_model


class SeededNoise:
    """One torch.Generator per sample seed (as EDM's StackedRandomGenerator); draws are (B, ...)."""

    def __init__(self, seeds, device):
        self.device = device
        self.generators = [torch.Generator(device).manual_seed(int(s)) for s in seeds]

    def randn(self, shape):
        return torch.stack([torch.randn(shape, generator=g, device=self.device) for g in self.generators])

    def rand(self):
        return torch.stack([torch.rand((), generator=g, device=self.device) for g in self.generators])


def reverse_diffusion(energy_fn, noise, shape, t_max=1e3, t_min=1e-4, n_steps=256, mala_steps=0, mala_step=0.05,
                      prior_mean=0.5):
    """Samples x (B, *shape) and stats {nfe, acceptance} (module docstring for the scheme)."""
    t = np.exp(np.linspace(math.log(t_max), math.log(t_min), n_steps + 1))     # t_0 = t_max ... t_N = t_min

    def U_and_grad(y, tk):
        U, grad_y, _ = energy_and_scores(energy_fn, y, torch.full((y.shape[0],), float(tk), device=y.device))
        return U, grad_y

    y = prior_mean + math.sqrt(t_max) * noise.randn(shape)                        # (B, *shape)
    U, grad_y = U_and_grad(y, t[0])
    nfe, accepted, proposed = 1, 0.0, 0
    for k in range(n_steps):
        dt = t[k] - t[k + 1]
        y = y - dt * grad_y + math.sqrt(dt) * noise.randn(shape)
        U, grad_y = U_and_grad(y, t[k + 1])
        nfe += 1
        for _ in range(mala_steps):
            h = mala_step * t[k + 1]
            y_new = y - h * grad_y + math.sqrt(2 * h) * noise.randn(shape)
            U_new, grad_new = U_and_grad(y_new, t[k + 1])
            log_q_fwd = -(y_new - y + h * grad_y).flatten(1).pow(2).sum(dim=1) / (4 * h)
            log_q_bwd = -(y - y_new + h * grad_new).flatten(1).pow(2).sum(dim=1) / (4 * h)
            log_alpha = (U - U_new) + log_q_bwd - log_q_fwd                     # (B,); c cancels
            accept = torch.log(noise.rand()) < log_alpha
            a = accept.view(-1, *[1] * len(shape))
            y, U, grad_y = torch.where(a, y_new, y), torch.where(accept, U_new, U), torch.where(a, grad_new, grad_y)
            accepted, proposed, nfe = accepted + accept.float().sum().item(), proposed + accept.numel(), nfe + 1
    x = y - t[-1] * grad_y                                                          # x_hat(y_N, t_min)
    return x.detach(), dict(nfe=nfe, acceptance=accepted / proposed if proposed else None)


def grid(images, cols):
    """(N, H, W, C) in [0, 1] -> one (rows * (H + 1) + 1, cols * (W + 1) + 1, C) image, 1-pixel white borders."""
    N, H, W, C = images.shape
    rows = math.ceil(N / cols)
    out = np.ones((rows * (H + 1) + 1, cols * (W + 1) + 1, C), dtype=np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        out[1 + r * (H + 1):1 + r * (H + 1) + H, 1 + c * (W + 1):1 + c * (W + 1) + W] = img
    return out


def main(argv):
    config = dict(
        ckpt="",                 # energy checkpoint written by train.py (required)
        num_samples=64,          # number of samples (seeds seed ... seed + num_samples - 1)
        seed=0,                  # first sample seed
        n_steps=256,             # reverse diffusion steps, geometric in t
        t_max=1e3,               # starting noise variance
        const_t=1e3,             # noise variance of the constant c (docs/method.md §5), whatever t_max is
        t_min=1e-4,              # last noise variance (PSNR 40 dB), then one denoising step
        prior_mean=0.5,          # mean of the starting Gaussian (pixels are in [0, 1])
        mala_steps=0,            # Metropolis-adjusted Langevin steps after each step; 0 = none
        mala_step=0.05,          # MALA step size h relative to t (proposal variance 2h)
        image_size=0,            # H = W of the samples; 0 = the training images' size
        data_dir="",             # optional: c from this dataset's val split, not from gray images
        const_draws=4,           # noise draws per image for the constant
        batch_size=64,           # samples per batch and rank
        device="auto",           # "auto" = cuda if available, else cpu
        out="",                  # output folder; "" = the checkpoint's folder
    )
    config = configure(config, argv, doc=__doc__, source_file=__file__)
    if not config["ckpt"]:
        raise SystemExit("sample.py needs --ckpt=PATH (an energy checkpoint written by train.py)")
    ddp = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = pick_device(config["device"])
    if ddp and device == "cuda":
        device = f"cuda:{os.environ['LOCAL_RANK']}"
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    model, ckpt = load_model(config["ckpt"], device, kind="energy")
    C = ckpt["model_config"]["channels"]
    size = config["image_size"] or image_size_of(ckpt, config["ckpt"])
    shape = (C, size, size)
    d = math.prod(shape)

    seeds = list(range(config["seed"], config["seed"] + config["num_samples"]))
    mine, xs, stats = seeds[rank::world], [], []
    for i in range(0, len(mine), config["batch_size"]):
        batch = mine[i:i + config["batch_size"]]
        x, s = reverse_diffusion(model, SeededNoise(batch, device), shape, config["t_max"], config["t_min"],
                                 config["n_steps"], config["mala_steps"], config["mala_step"], config["prior_mean"])
        xs.append(x.cpu())
        stats.append(s | {"n": len(batch)})
    x = torch.cat(xs) if xs else torch.zeros(0, *shape)
    if ddp:
        parts = [None] * world
        dist.all_gather_object(parts, (mine, x, stats))
        dist.destroy_process_group()
    else:
        parts = [(mine, x, stats)]
    if rank != 0:
        return None
    order = np.argsort(np.concatenate([p[0] for p in parts]))
    x = torch.cat([p[1] for p in parts])[order]                                       # (n, C, H, W), seed order
    stats = [s for p in parts for s in p[2]]
    accept = [s["acceptance"] * s["n"] for s in stats if s["acceptance"] is not None]

    images = x.permute(0, 2, 3, 1).numpy()                                            # (n, H, W, C)
    if config["data_dir"]:
        val, _ = load_split(config["data_dir"], "val")
        check_images(val, os.path.join(config["data_dir"], "val.npy"), ckpt, config["ckpt"])
        const_images, const_from = val[:4096], f"{min(len(val), 4096)} images of {config['data_dir']}/val.npy"
    else:
        const_images = np.full((256, size, size, C), config["prior_mean"], dtype=np.float32)
        const_from = f"256 constant images at prior_mean={config['prior_mean']}"
    gen = torch.Generator(device).manual_seed(config["seed"])
    c, c_se = estimate_log_norm_const(model, const_images, config["const_t"], config["const_draws"],
                                      config["batch_size"], device, gen)
    with torch.no_grad():
        U0 = torch.cat([model(xb.to(device), torch.zeros(xb.shape[0], device=device)).double().cpu()
                        for xb in x.split(config["batch_size"])])
    logp = -(U0 + c)                                                                 # nats
    result = dict(n=len(x), seeds=seeds, n_steps=config["n_steps"], mala_steps=config["mala_steps"],
                  nfe_per_sample=stats[0]["nfe"] + 1, acceptance=sum(accept) / len(x) if accept else None,
                  log_norm_const=c, log_norm_const_stderr=c_se, log_norm_const_from=const_from,
                  mean_logp_nats=float(logp.mean()), mean_logp_db_per_dim=float(DB_PER_NAT * logp.mean() / d),
                  mean_nll_bpd=float(-logp.mean() / (d * math.log(2))), logp_nats=logp.tolist(), config=config)
    out = config["out"] or os.path.dirname(os.path.abspath(config["ckpt"]))
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "samples.npy"), images)
    png = grid(images.clip(0, 1), cols=math.ceil(math.sqrt(len(images))))
    plt.imsave(os.path.join(out, "samples.png"), png[..., 0] if C == 1 else png, cmap="gray", vmin=0, vmax=1)
    with open(os.path.join(out, "samples.json"), "w") as f:
        json.dump(result, f, indent=1)
    acc = f", MALA acceptance {result['acceptance']:.3f}" if accept else ""
    print(f"{len(x)} samples {C}x{size}x{size}, {result['nfe_per_sample']} network evaluations each{acc}")
    print(f"mean log p = {result['mean_logp_db_per_dim']:.3f} dB/dim ({result['mean_nll_bpd']:.4f} bits/dim "
          f"without the +8 offset), c = {c:.2f} +- {c_se:.2f} nats from {const_from}")
    print(f"wrote {out}/samples.png, samples.npy, samples.json")
    return result


def image_size_of(ckpt, path):
    """The training images' size H (= W), from the checkpoint (eval.trained_image_shape)."""
    shape = trained_image_shape(ckpt)
    if shape is None:
        raise SystemExit(f"the image size is neither in checkpoint {path} nor readable from its dataset "
                         f"{(ckpt.get('config') or {}).get('data_dir', '')!r}; pass --image_size=H")
    return shape[0]


if __name__ == "__main__":
    main(sys.argv[1:])
