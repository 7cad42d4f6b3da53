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

import ais
from ais import SeededNoise
from configurator import configure, fail, require
from dataset import to_tensor
from eval import (DB_PER_NAT, WEIGHTS, check_config, estimate_log_norm_const, load_images, load_weights,
                  pick_device, positive, progress, trained_image_shape, write_json)
from model import energy_and_scores


def reverse_diffusion(energy_fn, noise, shape, t_max=1e3, t_min=1e-4, n_steps=256, mala_steps=0, mala_step=0.05,
                      prior_mean=0.5, desc=None):
    """Samples x (B, *shape) and stats {nfe, acceptance} (module docstring for the scheme; the MALA step is
    ais.mala_step, the same one the AIS certificate uses); desc: a progress bar of the steps with that label
    (eval.progress)."""
    t = np.exp(np.linspace(math.log(t_max), math.log(t_min), n_steps + 1))     # t_0 = t_max ... t_N = t_min

    def U_and_grad(y, tk):
        U, grad_y, _ = energy_and_scores(energy_fn, y, torch.full((y.shape[0],), float(tk), device=y.device, dtype=y.dtype))
        return U, grad_y

    y = prior_mean + math.sqrt(t_max) * noise.randn(shape)                        # (B, *shape)
    U, grad_y = U_and_grad(y, t[0])
    nfe, accepted, proposed = 1, 0.0, 0
    for k in progress(range(n_steps), n_steps, desc, "step"):
        dt = t[k] - t[k + 1]
        y = y - dt * grad_y + math.sqrt(dt) * noise.randn(shape)
        U, grad_y = U_and_grad(y, t[k + 1])
        nfe += 1
        for _ in range(mala_steps):
            y, U, grad_y, accept = ais.mala_step(energy_fn, y, U, grad_y, t[k + 1], mala_step * t[k + 1], noise)
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
        weights="auto",          # "ema": the EMA of the weights, "model": the raw ones, "auto": EMA if saved
        batch_size=64,           # samples per batch and rank
        device="auto",           # "auto" = cuda if available, else cpu; cpu, cuda, cuda:N
        out="",                  # output folder; "" = the checkpoint's folder
    )
    config = configure(config, argv, doc=__doc__, source_file=__file__, annotations=dict(weights=WEIGHTS))
    require(config["ckpt"], "needs --ckpt=PATH (an energy checkpoint written by train.py)")
    check_config(config, positive(config, "num_samples", "n_steps", "t_max", "const_t", "t_min", "mala_step",
                                  "const_draws", "batch_size") + [
        ("t_min", config["t_min"] < config["t_max"], f"< --t_max={config['t_max']}"),
        ("mala_steps", config["mala_steps"] >= 0, ">= 0 (0 = none)"),
        ("image_size", config["image_size"] >= 0, ">= 1, or 0 for the training images' size"),
        ("prior_mean", math.isfinite(config["prior_mean"]), "finite")])
    ddp = "RANK" in os.environ
    rank, world = (int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])) if ddp else (0, 1)
    device = config["device"]
    if ddp and device in ("auto", "cuda") and torch.cuda.is_available():
        device = f"cuda:{os.environ['LOCAL_RANK']}"                          # one GPU per process
    device = pick_device(device)                                             # also the current CUDA device
    try:
        model, ckpt = load_weights(config["ckpt"], device, "energy", config["weights"])
        C = ckpt["model_config"]["channels"]
        H, W = (config["image_size"],) * 2 if config["image_size"] else image_size_of(ckpt, config["ckpt"])
        val = None
        if config["data_dir"]:
            val, _ = load_images(config["data_dir"], "val", 4096, ckpt, config["ckpt"])
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if ddp:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    shape = (C, H, W)
    d = math.prod(shape)

    seeds = list(range(config["seed"], config["seed"] + config["num_samples"]))
    mine, xs, stats = seeds[rank::world], [], []
    n_batches = math.ceil(len(mine) / config["batch_size"])
    for i in range(0, len(mine), config["batch_size"]):
        batch = mine[i:i + config["batch_size"]]
        x, s = reverse_diffusion(model, SeededNoise(batch, device), shape, config["t_max"], config["t_min"],
                                 config["n_steps"], config["mala_steps"], config["mala_step"], config["prior_mean"],
                                 desc=f"batch {i // config['batch_size'] + 1}/{n_batches}")
        xs.append(x.cpu())
        stats.append(s | {"n": len(batch)})
    x = torch.cat(xs) if xs else torch.zeros(0, *shape)
    if ddp:                                                                  # rank 0 alone receives the samples
        parts = [None] * world if rank == 0 else None
        dist.gather_object((mine, x, stats), parts, dst=0)
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
    if val is not None:
        const_images, const_from = val, f"{len(val)} images of {config['data_dir']}/val.npy"
    else:
        const_images = np.full((256, H, W, C), config["prior_mean"], dtype=np.float32)
        const_from = f"256 constant images at prior_mean={config['prior_mean']}"
    gen = torch.Generator(device).manual_seed(config["seed"])
    c, c_se = estimate_log_norm_const(model, const_images, config["const_t"], config["const_draws"],
                                      config["batch_size"], device, gen)
    with torch.no_grad():
        U0 = torch.cat([model(xb.to(device), torch.zeros(xb.shape[0], device=device, dtype=xb.dtype)).double().cpu()
                        for xb in x.split(config["batch_size"])])
    logp = -(U0 + c)                                                                 # nats
    result = dict(n=len(x), seeds=seeds, n_steps=config["n_steps"], mala_steps=config["mala_steps"],
                  nfe_per_sample=stats[0]["nfe"] + 1, acceptance=sum(accept) / len(x) if accept else None,
                  log_norm_const=c, log_norm_const_stderr=c_se, log_norm_const_from=const_from,
                  mean_logp_nats=float(logp.mean()), mean_logp_db_per_dim=float(DB_PER_NAT * logp.mean() / d),
                  mean_nll_bpd=float(-logp.mean() / (d * math.log(2))), logp_nats=logp.tolist(),
                  weights=ckpt["weights"], config=config)
    if config["data_dir"]:
        result["check"] = sample_check(model, x, const_images, c, config["data_dir"], config["batch_size"], device)
    out = config["out"] or os.path.dirname(os.path.abspath(config["ckpt"]))
    os.makedirs(out, exist_ok=True)
    np.save(os.path.join(out, "samples.npy"), images)
    png = grid(np.nan_to_num(images, nan=0.0).clip(0, 1), cols=math.ceil(math.sqrt(len(images))))
    plt.imsave(os.path.join(out, "samples.png"), png[..., 0] if C == 1 else png, cmap="gray", vmin=0, vmax=1)
    write_json(os.path.join(out, "samples.json"), result)
    acc = f", MALA acceptance {result['acceptance']:.3f}" if accept else ""
    print(f"{len(x)} samples {C}x{H}x{W}, {result['nfe_per_sample']} network evaluations each{acc}")
    print(f"mean log p = {result['mean_logp_db_per_dim']:.3f} dB/dim ({result['mean_nll_bpd']:.4f} bits/dim "
          f"without the +8 offset), c = {c:.2f} +- {c_se:.2f} nats from {const_from}")
    if "check" in result:
        k = result["check"]
        print(f"sample check: log p of samples {k['samples_logp_db_per_dim']:.3f} vs validation images "
              f"{k['val_logp_db_per_dim']:.3f} dB/dim; pixel mean {k['samples_pixel_mean']:.3f} vs {k['val_pixel_mean']:.3f}, "
              f"std {k['samples_pixel_std']:.3f} vs {k['val_pixel_std']:.3f}"
              + (f"; exact NLL of the samples {k['samples_exact_nll_bpd']:.4f} bits/dim (entropy "
                 f"{k['exact_entropy_bpd']:.4f})" if "samples_exact_nll_bpd" in k else ""))
    print(f"wrote {out}/samples.png, samples.npy, samples.json")
    return result


def sample_check(model, x, val, c, data_dir, batch_size=64, device="cpu"):
    """The model's log p of its own samples x (n, C, H, W) against that of validation images val (same c), pixel
    statistics of both and, on a Gaussian random field (data_dir/meta.json of data/grf/prepare.py), the samples'
    exact NLL beside the field's entropy (docs/normalization.md): a model that rates its samples far above the
    data, or whose samples the truth rates far below it, has mass where the data is not."""
    d = x[0].numel()
    val_x = to_tensor(np.asarray(val[:max(len(x), 256)]), "cpu")
    zero = lambda n: torch.zeros(n, device=device)
    with torch.no_grad():
        U_s = torch.cat([model(b.to(device), zero(len(b))).double().cpu() for b in x.split(batch_size)])
        U_v = torch.cat([model(b.to(device), zero(len(b))).double().cpu() for b in val_x.split(batch_size)])
    to_db = DB_PER_NAT / d
    out = dict(samples_logp_db_per_dim=float(-(U_s + c).mean() * to_db), val_logp_db_per_dim=float(-(U_v + c).mean() * to_db),
               n_val=len(val_x), samples_pixel_mean=float(x.mean()), samples_pixel_std=float(x.std()),
               val_pixel_mean=float(val_x.mean()), val_pixel_std=float(val_x.std()))
    meta_path = os.path.join(data_dir, "meta.json")
    if os.path.isfile(meta_path):
        with open(meta_path) as fh:
            meta = json.load(fh)
        if "alpha" in meta and not meta.get("warp"):
            from data.grf.prepare import grf_eigenvalues, grf_energy
            lam = grf_eigenvalues(meta["size"], meta["alpha"], meta["k0"], meta["amplitude"])
            nll = grf_energy(x.double(), 0.0, lam, meta["mean"]) / (d * math.log(2))
            out.update(samples_exact_nll_bpd=float(nll.mean()), samples_exact_nll_bpd_se=float(nll.std() / math.sqrt(len(nll))),
                       exact_entropy_bpd=meta["entropy_bits_per_dim"])
    return out


def image_size_of(ckpt, path):
    """(H, W) of the training images, from the checkpoint (eval.trained_image_shape)."""
    shape = trained_image_shape(ckpt)
    if shape is None:
        raise ValueError(f"the image size is neither in checkpoint {path} nor readable from its dataset "
                         f"{(ckpt.get('config') or {}).get('data_dir', '')!r}; pass --image_size=H")
    return shape[0], shape[1]


if __name__ == "__main__":
    main(sys.argv[1:])
