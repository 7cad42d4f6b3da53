"""Where a model with a Gaussian term puts mass the Gaussian does not: the network term R(y, 0) on draws of
the model's own Gaussian at t = 0 and on validation images, and the pixel statistics of the draws with the
lowest R (the ones that dominate Z(0) / Z_G = E exp(-R)). Prints JSON.

    python results/cpu/normalization/small/where_mass.py --ckpt=$R/p8_B1.0/ckpt.pt --data_dir=data/patches8
"""
import json
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))))
from configurator import configure      # noqa: E402
from dataset import load_split, to_tensor  # noqa: E402
from model import load_model            # noqa: E402

cfg = configure(dict(ckpt="",           # checkpoint of a model with gaussian_term
                     data_dir="",       # its data (validation split)
                     n=100_000,         # Gaussian draws
                     lowest=20,         # how many of the lowest-R draws to describe
                     seed=0),           # seed of the draws
                sys.argv[1:], doc=__doc__, source_file=__file__)
model, _ = load_model(cfg["ckpt"])
g = torch.Generator().manual_seed(cfg["seed"])


def network_term(y):
    with torch.no_grad():
        return torch.cat([model.network_term(b, torch.zeros(len(b))).double() for b in y.split(512)])


def pixels(x):
    x = x.flatten(1)
    return dict(mean=float(x.mean()), std_within=float(x.std(1).mean()), min=float(x.min(1).values.mean()),
                max=float(x.max(1).values.mean()), above_1=float((x > 1).float().mean()), below_0=float((x < 0).float().mean()))


y = model.gaussian.sample(cfg["n"], 0.0, g).float()
R = network_term(y)
val, _ = load_split(cfg["data_dir"], "val")
x = to_tensor(np.asarray(val[:2048]), "cpu")
Rv = network_term(x)
q = [0, 1e-4, 1e-3, 1e-2, 0.1, 0.5, 0.9, 1]
order = torch.argsort(R)
print(json.dumps(dict(ckpt=cfg["ckpt"], n=cfg["n"], bound=model.config.energy_bound * y[0].numel(),
                      quantiles=q, R_draws=[float(R.quantile(v)) for v in q], R_val=[float(Rv.quantile(v)) for v in q],
                      lowest_draws=pixels(y[order[:cfg["lowest"]]]), median_draws=pixels(y[order[len(R) // 2 - 500:len(R) // 2 + 500]]),
                      val=pixels(x))))
