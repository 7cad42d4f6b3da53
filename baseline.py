"""The Gaussian baseline: mean and full covariance fitted on the training split, exact NLL on val.

    python baseline.py --data_dir=data/patches                      # -> data_dir's baseline.json
    python baseline.py --data_dir=data/grf --out=results/cpu/grf     # float32 data: no +8 offset
    python baseline.py --data_dir=data/patches --ckpt=out/patches/ckpt.pt   # + paired difference with a model

x ~ N(mu, Sigma) with mu and Sigma the sample mean and (maximum-likelihood) covariance of the
training images, in the same units as the models (uint8 divided by 255, float32 as is). The NLL of
each validation image is exact,

    -log p(x) = (1/2) (x - mu)^T Sigma^-1 (x - mu) + (1/2) log det(2 pi Sigma),

reported in bits/dim with the project's convention (dataset.py): + 8 for uint8 images (the density
on the 256-level scale), nothing for float32 data. The energy model must beat this number. Sigma
must be positive definite (more training images than dimensions, no constant pixel); --ridge adds a
multiple of the identity when it is not.

With --ckpt=PATH (an energy checkpoint) it also evaluates that model on the same images as eval.py
does (constant c from the whole split, one noise draw each) and reports the paired difference
model NLL - Gaussian NLL per image: its standard error is much smaller than either NLL's, since
both spread alike over the images.
"""
import math
import os
import sys

import numpy as np
import torch

from backends import bounded_heap
from configurator import configure, fail, require
from dataset import check_finite, load_split
from eval import (SPLIT, WEIGHTS, check_config, estimate_log_norm_const, load_images, load_weights, mean_and_stderr, nll,
                  progress, write_json)


def flat_chunks(images, batch_size=1024):
    """(b, D) float64 tensors of consecutive images of an (N, ...) array, in model units (uint8 / 255):
    one chunk in memory at a time, whatever N is (a memory-mapped split is never read whole)."""
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(np.asarray(images[i:i + batch_size], dtype=np.float64)).reshape(min(batch_size, len(images) - i), -1)
        yield x / 255.0 if images.dtype == np.uint8 else x


def fit_gaussian(images, batch_size=1024, desc=None):
    """(mu (D,), Sigma (D, D)) float64: sample mean and maximum-likelihood covariance of the images
    (N, ...), accumulated chunk by chunk around the first chunk's mean (no cancellation to speak of).
    desc: a progress bar with that label (eval.progress)."""
    n, shift, total, gram = 0, None, 0.0, 0.0
    for x in progress(flat_chunks(images, batch_size), math.ceil(len(images) / batch_size), desc, "chunk"):
        shift = x.mean(dim=0) if shift is None else shift
        r = x - shift
        n, total, gram = n + len(x), total + r.sum(dim=0), gram + r.T @ r
    m = total / n
    return shift + m, gram / n - torch.outer(m, m)


def cholesky(Sigma):
    """Lower Cholesky factor of Sigma, or ValueError naming the fix."""
    L, info = torch.linalg.cholesky_ex(Sigma)
    if info.item() != 0:
        raise ValueError("the training covariance is not positive definite (fewer training images than "
                         "dimensions, or constant pixels); pass --ridge=1e-6 (or larger) to add a multiple of I")
    return L


def gaussian_nll(x, mu, Sigma=None, L=None):
    """-log N(x; mu, Sigma) in nats per row of x (N, D), float64, by the Cholesky factor L of Sigma."""
    L = cholesky(Sigma) if L is None else L
    r = (x.double() - mu).T                                           # (D, N)
    w = torch.linalg.solve_triangular(L, r, upper=False)             # (D, N), w^T w = r^T Sigma^-1 r
    logdet = 2 * torch.log(torch.diagonal(L)).sum()
    return 0.5 * (w ** 2).sum(dim=0) + 0.5 * (logdet + x.shape[1] * math.log(2 * math.pi))


def mean_train_nll(L, ridge):
    """Mean -log N(x; mu, Sigma) over the training images themselves, in nats, without a pass over them:
    with Sigma = S + ridge I (S their ML covariance), mean (x - mu)^T Sigma^-1 (x - mu) = tr(Sigma^-1 S)
    = D - ridge tr(Sigma^-1)."""
    D = L.shape[0]
    quad = D - ridge * torch.cholesky_inverse(L).diagonal().sum().item() if ridge else D
    return 0.5 * (quad + 2 * torch.log(torch.diagonal(L)).sum().item() + D * math.log(2 * math.pi))


def main(argv):
    config = dict(
        data_dir="",             # dataset folder with train.npy and val.npy (required)
        split="val",             # split on which the NLL is reported
        ridge=0.0,               # added to the diagonal of Sigma (model units squared); 0 = the plain fit
        ckpt="",                 # optional energy checkpoint: its NLL minus the baseline's, paired per image
        weights="auto",          # of --ckpt: "ema", "model", or "auto" (EMA if saved)
        out="",                  # output folder of baseline.json; "" = data_dir
    )
    config = configure(config, argv, doc=__doc__, source_file=__file__, annotations=dict(split=SPLIT, weights=WEIGHTS))
    require(config["data_dir"], "needs --data_dir=DIR (a folder with train.npy and val.npy)")
    check_config(config, [("ridge", math.isfinite(config["ridge"]) and config["ridge"] >= 0, ">= 0")])
    bounded_heap()                                                    # memory must not grow with the chunks
    try:
        train, quantized = load_split(config["data_dir"], "train")    # memory-mapped, read chunk by chunk
        val, _ = load_split(config["data_dir"], config["split"])
        if val.shape[1:] != train.shape[1:] or len(train) < 2 or len(val) < 1:
            raise ValueError(f"{config['split']}.npy {val.shape} and train.npy {train.shape} of {config['data_dir']} need "
                             f"the same image shape, at least 2 training images and 1 {config['split']} image")
        check_finite(train, os.path.join(config["data_dir"], "train.npy"))   # float32 only: uint8 is finite
        check_finite(val, os.path.join(config["data_dir"], f"{config['split']}.npy"))
        if config["ckpt"]:
            model, ckpt = load_weights(config["ckpt"], "cpu", "energy", config["weights"])
            images, _ = load_images(config["data_dir"], config["split"], -1, ckpt, config["ckpt"])
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    N, d = len(train), int(np.prod(train.shape[1:]))
    mu, Sigma = fit_gaussian(train, desc="fit on train")
    Sigma.diagonal().add_(config["ridge"])
    try:
        L = cholesky(Sigma)
    except ValueError as e:
        fail(str(e))
    del Sigma
    nll_nats = torch.cat([gaussian_nll(x, mu, L=L) for x in progress(flat_chunks(val), math.ceil(len(val) / 1024),
                                                                      f"NLL on {config['split']}", "chunk")]).numpy()
    to_bpd = 1 / (d * math.log(2))
    m, se = mean_and_stderr(nll_nats * to_bpd)
    train_nll = mean_train_nll(L, config["ridge"]) * to_bpd
    offset = 8.0 if quantized else 0.0
    results = dict(nll_bpd=m + offset, nll_bpd_stderr=se, train_nll_bpd=train_nll + offset, d=d,
                   n_train=N, n_images=len(val), quantized=bool(quantized),
                   pixel_var=float(L.pow(2).sum() / d), config=config)
    if config["ckpt"]:
        c, c_se = estimate_log_norm_const(model, images, generator=torch.Generator().manual_seed(0))
        model_bpd, model_se, logp = nll(model, images, c, c_se, quantized)
        diff, diff_se = mean_and_stderr((-logp - nll_nats) * to_bpd)  # model - Gaussian, per image
        results["model"] = dict(ckpt=config["ckpt"], step=ckpt["step"], weights=ckpt["weights"], nll_bpd=model_bpd, nll_bpd_stderr=model_se,
                                minus_baseline_bpd=diff, minus_baseline_bpd_stderr=math.hypot(diff_se, c_se * to_bpd))
    out = config["out"] or config["data_dir"]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "baseline.json")
    write_json(path, results)
    unit = "bits/dim (+8 offset, uint8 images)" if quantized else "bits/dim (differential entropy)"
    print(f"Gaussian baseline (mean + full covariance of {N} training images, d = {d})")
    print(f"{config['split']} NLL = {results['nll_bpd']:.4f} +- {se:.4f} {unit} on {len(val)} images "
          f"(train NLL {results['train_nll_bpd']:.4f})")
    if "model" in results:
        r = results["model"]
        print(f"model {r['ckpt']} (step {r['step']}): NLL {r['nll_bpd']:.4f} +- {r['nll_bpd_stderr']:.4f}; "
              f"model - Gaussian = {r['minus_baseline_bpd']:+.4f} +- {r['minus_baseline_bpd_stderr']:.4f} bits/dim (paired)")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
