"""An independent cross-check of the AIS certificate for a model with a Gaussian term: plain importance
sampling at t = 0 from the model's own Gaussian, Z(0) / Z_G = E_{y ~ N(m, Sigma)} exp(-R(y, 0)) (R the
network term); --t=T does the same at noise variance T (Z(T) / Z_G, draws of N(m, Sigma + T I)). Unbiased
for Z; its log is low in expectation, like AIS; blind to mass where the Gaussian's draws never go.

    python results/cpu/normalization/is_check.py --ckpt=$R/patches_new/ckpt.pt
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from configurator import configure      # noqa: E402
from model import load_model            # noqa: E402

cfg = configure(dict(ckpt="",           # checkpoint of a model with gaussian_term
                     n=1024,            # Gaussian draws
                     t=0.0,             # noise variance: draws of N(m, Sigma + t I), R(y, t), estimates Z(t) / Z_G
                     seed=0),           # seed of the draws
                sys.argv[1:], doc=__doc__, source_file=__file__)
model, _ = load_model(cfg["ckpt"])
g = torch.Generator().manual_seed(cfg["seed"])
with torch.no_grad():
    R = torch.cat([model.network_term(y, torch.full((len(y),), cfg["t"])).double()
                   for y in model.gaussian.sample(cfg["n"], cfg["t"], g).float().split(256)])
log_ratio = float(torch.logsumexp(-R, 0) - math.log(len(R)))
d = model.gaussian.eig.numel()
out = dict(ckpt=cfg["ckpt"], n=len(R), t=cfg["t"], log_z_gaussian=model.gaussian.log_z(), log_z_minus_log_z_gaussian=log_ratio,
           log_z=model.gaussian.log_z() + log_ratio, bits_per_dim=log_ratio / (d * math.log(2)),
           R_mean=float(R.mean()), R_min=float(R.min()), R_max=float(R.max()),
           ess=float(torch.exp(-R - (-R).max()).sum() ** 2 / torch.exp(2 * (-R - (-R).max())).sum()))
print(json.dumps(out))
