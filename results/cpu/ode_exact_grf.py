"""The probability-flow ODE of eval.py with the EXACT score of the 16x16 GRF: how close is the integrator?

    python results/cpu/ode_exact_grf.py        # -> results/cpu/grf/ode_exact.json (README Results, GRF)

16 fields of data/grf's distribution, 2 Hutchinson probes, 24 and 48 RK4 steps from t = 1e-9 to 1e3;
prints ODE NLL - exact NLL (bits/dim) with its standard error over the fields.
"""
import json
import math
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

import torch

from data.grf.prepare import grf_eigenvalues, grf_energy, sample_grf
from eval import ode_nll

torch.set_num_threads(1)
lam = grf_eigenvalues(16, 2.5, 2.0, 0.15)                            # data/grf's defaults
x = sample_grf(16, lam, 0.5, generator=torch.Generator().manual_seed(5))[:, None]   # (16, 1, 16, 16) float64
energy = lambda y, t: grf_energy(y, t, lam, 0.5)
exact = energy(x, torch.zeros(16, dtype=torch.float64))              # -log p(x), nats
d = x[0].numel()
out = {}
for n_steps in (24, 48):
    nll, _ = ode_nll(energy, x, 0.5, n_steps=n_steps, n_probes=2, generator=torch.Generator().manual_seed(0))
    diff = (nll - exact) / (d * math.log(2))
    out[n_steps] = dict(ode_minus_exact_bpd=diff.mean().item(), stderr=diff.std().item() / math.sqrt(len(diff)))
    print(f"{n_steps} RK4 steps: ODE - exact = {out[n_steps]['ode_minus_exact_bpd']:+.4f} "
          f"+- {out[n_steps]['stderr']:.4f} bits/dim")
with open(os.path.join(ROOT, "results", "cpu", "grf", "ode_exact.json"), "w") as f:
    json.dump(out, f, indent=1)
