"""NLL of the stationary Gaussian alone (the new default's U_G, fitted to the training split as train.py does)
on the validation split: the floor the network term starts from (--zero_init_out) and the analogue of
baseline.py's full-covariance Gaussian.

    python results/cpu/normalization/stationary_gaussian.py --data_dir=data/patches
"""
import json
import math
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from configurator import configure                      # noqa: E402
from dataset import load_split, stationary_spectrum, to_tensor   # noqa: E402
from model import StationaryGaussian                    # noqa: E402

cfg = configure(dict(data_dir="data/patches",           # dataset folder with train.npy and val.npy
                     spectrum_images=50_000,            # training images of the fit (train.py's default)
                     floor=1e-4,                        # spectrum floor (train.py's spectrum_floor)
                     max_images=-1),                    # first N validation images; -1 = all
                sys.argv[1:], doc=__doc__, source_file=__file__)
train, quantized = load_split(cfg["data_dir"], "train")
val, _ = load_split(cfg["data_dir"], "val")
val = val if cfg["max_images"] < 0 else val[:cfg["max_images"]]
mean, P, n = stationary_spectrum(train, cfg["spectrum_images"], cfg["floor"])
H, W, C = train.shape[1:]
G = StationaryGaussian(C, (H, W)).double()
G.set(mean.double(), P)
d = H * W * C
with torch.no_grad():
    U = torch.cat([G(to_tensor(val[i:i + 1024]).double(), torch.zeros(len(val[i:i + 1024]), dtype=torch.float64))
                   for i in range(0, len(val), 1024)])
nll = (U + G.log_z()) / (d * math.log(2)) + (8.0 if quantized else 0.0)
out = dict(data_dir=cfg["data_dir"], n_train=n, n_val=len(val), nll_bpd=float(nll.mean()),
           nll_bpd_stderr=float(nll.std() / math.sqrt(len(nll))), log_z=G.log_z())
print(json.dumps(out))
