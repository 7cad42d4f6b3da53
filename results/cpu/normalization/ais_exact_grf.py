"""The AIS certificate (ais.py) on an energy whose log Z is known: the exact U*(y, t) = -log p(y, t) of the 16x16
GRF of data/grf (log Z(t) = 0 for every t). The reference Gaussian is fitted to the training split, as eval.py
does for an energy without a Gaussian term of its own, so it is close to the truth but not equal to it.

    python results/cpu/normalization/ais_exact_grf.py      # -> results/cpu/normalization/ais_exact_grf.json

Prints log Z_AIS(0) +- its standard error (nats and bits/dim) for K and 2K levels, with and without the
Gaussian transport between levels.
"""
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
from ais import SeededNoise, ais, fitted_reference, summarize          # noqa: E402
from data.grf.prepare import grf_eigenvalues, grf_energy               # noqa: E402

meta = json.load(open("data/grf/meta.json"))
lam = grf_eigenvalues(meta["size"], meta["alpha"], meta["k0"], meta["amplitude"])
energy = lambda y, t: grf_energy(y, t, lam, meta["mean"]).to(y.dtype)
ref = fitted_reference(np.load("data/grf/train.npy", mmap_mode="r"))
d = meta["size"] ** 2
rows = []
for transport, levels in ((True, 256), (True, 512), (True, 1024), (False, 1024), (False, 2048)):
    t0 = time.time()
    log_w, info = ais(energy, ref, SeededNoise(range(256), "cpu"), n_levels=levels, transport=transport)
    log_z, se, ess = summarize(log_w.numpy())
    row = dict(transport=transport, levels=levels, chains=256, log_z=log_z, log_z_se=se, log_z_bpd=log_z / (d * math.log(2)),
               log_z_se_bpd=se / (d * math.log(2)), ess=ess, acceptance_min=float(info["acceptance"].min()),
               acceptance_mean=float(info["acceptance"].mean()), nfe_per_chain=info["nfe"], seconds=time.time() - t0)
    rows.append(row)
    print(f"transport={transport} levels={levels}: log Z(0) = {log_z:+.4f} +- {se:.4f} nats ({row['log_z_bpd']:+.5f} +- "
          f"{row['log_z_se_bpd']:.5f} bits/dim; truth 0), ESS {ess:.1f}/256, MALA acceptance min {row['acceptance_min']:.2f}",
          flush=True)
out = "results/cpu/normalization/ais_exact_grf.json"
with open(out, "w") as f:
    json.dump(dict(data=meta, reference="stationary Gaussian fitted to data/grf/train.npy", rows=rows), f, indent=1)
print(f"wrote {out}")
