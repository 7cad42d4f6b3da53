"""Why the previous default is not confined along the image mean (docs/normalization.md §2): at initialization,
a fresh EnergyUNet of the CPU preset's shape with the previous default's options, on 32x32 validation patches.

    python results/cpu/normalization/mechanism.py     # -> results/cpu/normalization/mechanism.json

Every norm layer subtracts its channel's mean, so a constant added to the image survives the first conv + norm
only where zero padding breaks translation invariance: near the borders. With the scale-preserving norm the
network is homogeneous of degree 1, so f(x + b) ~ b f_inf with f_inf = lim f(x + b) / b concentrated on the
border, and U = 1/2 <y, f> / (s^2 + t) ~ b^2 <1, f_inf> / (2 s^2): quadratic in b, with the sign of <1, f_inf>,
which nothing controls. Printed per seed: U(x + b) - U(x) against the prediction b^2 <1, f_inf> / (2 s^2) (their
ratio tends to 1 as b grows; lower-order terms in b dominate below b ~ 100), and the fraction of |f_inf|^2 on
the outer 2-pixel ring (which holds 23% of the pixels).
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from dataset import load_split, to_tensor          # noqa: E402
from model import EnergyUNet, UNetConfig           # noqa: E402

torch.set_grad_enabled(False)
x = to_tensor(load_split("data/patches", "val")[0][:16])                      # (16, 1, 32, 32)
s2 = float(x.var())
ring = torch.ones(32, 32, dtype=torch.bool)
ring[2:-2, 2:-2] = False
rows = []
for seed in range(4):
    torch.manual_seed(seed)
    cfg = UNetConfig(channels=1, base_width=16, num_scales=2, layers_per_block=2, emb_dim=64, t_embedding="log",
                     analytic_term=True, scale_energy=True, data_var=s2)
    model = EnergyUNet(cfg)
    t = torch.zeros(len(x))
    big = 1e4
    f_inf = (model.unet(x + big, t) / big).mean(dim=0)                       # (1, 32, 32)
    border = float(f_inf[0][ring].pow(2).sum() / f_inf.pow(2).sum())
    slope = float(f_inf.sum() / (2 * s2))                                     # prediction: U(x + b) - U(x) ~ slope b^2
    U0 = model(x, t).mean().item()
    for b in (1.0, 16.0, 64.0, 256.0, 1024.0, 4096.0):
        rise = model(x + b, t).mean().item() - U0
        rows.append(dict(seed=seed, b=b, rise_nats=rise, predicted_nats=slope * b * b, border_fraction=border))
        print(f"seed {seed} b {b:5.0f}: U(x + b) - U(x) = {rise:12.1f} nats, b^2 <1, f_inf> / (2 s^2) = "
              f"{slope * b * b:12.1f}; |f_inf|^2 on the 2-pixel border: {border:.2f}")
with open("results/cpu/normalization/mechanism.json", "w") as f:
    json.dump(dict(data_var=s2, rows=rows), f, indent=1)
