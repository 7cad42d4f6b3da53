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
import json
import math
import os
import sys

import numpy as np
import torch

from configurator import configure
from dataset import load_split, to_tensor
from eval import estimate_log_norm_const, load_images, mean_and_stderr, nll
from model import load_model


def fit_gaussian(x):
    """(mu (D,), Sigma (D, D)) float64: sample mean and maximum-likelihood covariance of x (N, D)."""
    x = x.double()
    mu = x.mean(dim=0)
    r = x - mu                                                        # (N, D)
    return mu, r.T @ r / x.shape[0]


def gaussian_nll(x, mu, Sigma):
    """-log N(x; mu, Sigma) in nats per row of x (N, D), float64, by a Cholesky factor of Sigma."""
    L, info = torch.linalg.cholesky_ex(Sigma)
    if info.item() != 0:
        raise ValueError("the training covariance is not positive definite (fewer training images than "
                         "dimensions, or constant pixels); pass --ridge=1e-6 (or larger) to add a multiple of I")
    r = (x.double() - mu).T                                           # (D, N)
    w = torch.linalg.solve_triangular(L, r, upper=False)             # (D, N), w^T w = r^T Sigma^-1 r
    logdet = 2 * torch.log(torch.diagonal(L)).sum()
    return 0.5 * (w ** 2).sum(dim=0) + 0.5 * (logdet + x.shape[1] * math.log(2 * math.pi))


def load_flat(data_dir, split, batch_size=4096):
    """(N, D) float64 images of a split, in model units, and whether they are quantized."""
    images, quantized = load_split(data_dir, split)
    x = torch.cat([to_tensor(images[i:i + batch_size]).flatten(1).double() for i in range(0, len(images), batch_size)])
    return x, quantized


def main(argv):
    config = dict(
        data_dir="",             # dataset folder with train.npy and val.npy (required)
        split="val",             # split on which the NLL is reported
        ridge=0.0,               # added to the diagonal of Sigma (model units squared); 0 = the plain fit
        ckpt="",                 # optional energy checkpoint: its NLL minus the baseline's, paired per image
        out="",                  # output folder of baseline.json; "" = data_dir
    )
    config = configure(config, argv, doc=__doc__, source_file=__file__)
    if not config["data_dir"]:
        raise SystemExit("baseline.py needs --data_dir=DIR (a folder with train.npy and val.npy)")
    torch.set_num_threads(1)
    x_train, quantized = load_flat(config["data_dir"], "train")
    x_val, _ = load_flat(config["data_dir"], config["split"])
    N, d = x_train.shape
    if x_val.shape[1] != d:
        raise SystemExit(f"{config['split']}.npy has {x_val.shape[1]} dimensions per image, train.npy has {d}")
    mu, Sigma = fit_gaussian(x_train)
    Sigma = Sigma + config["ridge"] * torch.eye(d, dtype=Sigma.dtype)
    try:
        nll_nats = gaussian_nll(x_val, mu, Sigma).numpy()             # (N_val,)
    except ValueError as e:
        raise SystemExit(f"baseline.py: {e}")
    to_bpd = 1 / (d * math.log(2))
    m, se = mean_and_stderr(nll_nats * to_bpd)
    train_nll = float(gaussian_nll(x_train, mu, Sigma).mean()) * to_bpd
    offset = 8.0 if quantized else 0.0
    results = dict(nll_bpd=m + offset, nll_bpd_stderr=se, train_nll_bpd=train_nll + offset, d=d,
                   n_train=N, n_images=len(x_val), quantized=bool(quantized),
                   pixel_var=float(torch.diagonal(Sigma).mean()), config=config)
    if config["ckpt"]:
        model, ckpt = load_model(config["ckpt"], "cpu", kind="energy")
        images, _ = load_images(config["data_dir"], config["split"], -1, ckpt, config["ckpt"])
        c, c_se = estimate_log_norm_const(model, images, generator=torch.Generator().manual_seed(0))
        model_bpd, model_se, logp = nll(model, images, c, c_se, quantized)
        diff, diff_se = mean_and_stderr((-logp - nll_nats) * to_bpd)  # model - Gaussian, per image
        results["model"] = dict(ckpt=config["ckpt"], step=ckpt["step"], nll_bpd=model_bpd, nll_bpd_stderr=model_se,
                                minus_baseline_bpd=diff, minus_baseline_bpd_stderr=math.hypot(diff_se, c_se * to_bpd))
    out = config["out"] or config["data_dir"]
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "baseline.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    unit = "bits/dim (+8 offset, uint8 images)" if quantized else "bits/dim (differential entropy)"
    print(f"Gaussian baseline (mean + full covariance of {N} training images, d = {d})")
    print(f"{config['split']} NLL = {results['nll_bpd']:.4f} +- {se:.4f} {unit} on {len(x_val)} images "
          f"(train NLL {results['train_nll_bpd']:.4f})")
    if "model" in results:
        r = results["model"]
        print(f"model {r['ckpt']} (step {r['step']}): NLL {r['nll_bpd']:.4f} +- {r['nll_bpd_stderr']:.4f}; "
              f"model - Gaussian = {r['minus_baseline_bpd']:+.4f} +- {r['minus_baseline_bpd_stderr']:.4f} bits/dim (paired)")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
