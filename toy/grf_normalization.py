"""How fast does dual score matching learn the normalization? An exact-truth study on a GRF.

    python toy/grf_normalization.py --variants=paper,ours --lr_halving=500 --eval_steps=0,250,500,1000,1500,2000 \
        --out=results/grf/halve500                                         # README "normalization"
    python toy/grf_normalization.py --variants=ours-analytic,ours-scale,ours-log_t --lr_halving=500 \
        --eval_steps=0,250,500,1000,1500,2000 --out=results/grf/halve500   # single-option ablations
    python toy/grf_normalization.py --variants=paper,isotropic,ours --out=results/grf/halve200   # lr halved every 200 steps
    python toy/grf_normalization.py --variants=paper,ours --steps=500 --eval_steps=0,250,500   # a quick look
    python toy/grf_normalization.py --report_only=True --out=results/grf/halve500  # table + figure, every variant

Data: a stationary Gaussian random field (data/grf/prepare.py; 16x16, alpha 2.5, k0 2, std 0.15,
mean 0.5, exact entropy -1.077 bits/dim), so the true energy U*(y, t) = -log p(y, t) is known at
every t. Each variant (a set of UNetConfig noise-conditioning options, README "normalization") is
trained with losses.dual_score_matching from the same initial seed, data order and noise, with the
CPU-sized recipe (width 16, 2 scales, 3 layers per block, batch 64, Adam lr 5e-4 halved
every 200 steps). At each step in eval_steps it measures, with delta(y, t) = U(y, t) - U*(y, t):

    gap         NLL - exact entropy (bits/dim), the constant c from t_max as in eval.py, +- stderr
    gap_cv      the same gap with the exact energy as control variate: mean delta(x, 0) - mean
                delta(y, t_max) + (H_gauss - H)(t_max); what the gap converges to with many images
    mc          gap - gap_cv: Monte Carlo error of the constant c and of mean U(x, 0)
    decomposition of gap_cv (exact identity, d/dt E_t[delta] = E_t[dU/dt - dU*/dt] + 0.5 E_t[<grad U*, grad delta>]):
      c_gauss   (H_gauss - H)(t_max): the constant's Gaussian approximation at t_max
      time      - int_0^t_max E_t[dU/dt - dU*/dt] dt       the time-score error, integrated over t
      space     - int_0^t_max 0.5 E_t[<grad_y U*, grad_y delta>] dt   the space-score error's share
      (resid    gap_cv minus the three: quadrature and Monte Carlo error of the integrals)
    the same gap as normalization: with q_t = exp(-U - c) / Z(t), gap = KL(p_0 || q_0) - log Z(0), and
      c from the mean energy at t_max sets log Z(t_max) = KL(p_t_max || q_t_max) (Jensen), so
          gap = KL(t=0) - KL(t_max) - [log Z(0) - log Z(t_max)]
      shape error at t = 0 (>= 0), minus the over-normalization that a shape error at t_max puts
      into c, minus the drift of log Z from t_max down to 0, which is the time-score error:
      d log Z / dt = -E_q[dU/dt]. The table shows KL(t) to second order, Var(delta)/2, and the
      drift as their difference; the figure shows log Z(t) (importance-sampled) and Var(delta(t))/2.
      A gap below 0 beyond its stderr is therefore a drift of log Z (or a shape error at t_max).
    time-score error vs t: t E_t[dU/dt - dU*/dt] (nats per e-fold of t; its integral in log t is
      `time`) and the per-sample RMS of (t/d)(dU/dt - dU*/dt) (the scale of the time loss)
    space loss at fixed noise levels (PSNR 90 ... -30 dB): the denoising cost of each variant, and
      its excess over the exact minimum mean_k lambda_k / (lambda_k + t) (the true posterior mean)

Variants (VARIANTS below): paper; ours (train.py's defaults: log-t embedding + scale_energy + analytic_term
with the spectrum measured on the training fields by dataset.covariance_spectrum); its three single-option
ablations ours-log_t, ours-scale, ours-analytic; isotropic (analytic term (d/2) log(1 + t/s^2)); and the
diagnostic "oracle" (the GRF's exact eigenvalues, which real data do not have). One variant per process
runs in parallel (same --out).
Writes OUT/<variant>.json per variant, then OUT/results.json (table), OUT/grf_normalization.png.
"""
import json
import math
import os
import sys
import time
from types import SimpleNamespace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

import losses
from configurator import configure, fail, require
from data.grf.prepare import grf_eigenvalues, grf_energy, grf_entropy, sample_grf
from dataset import covariance_spectrum
from eval import gaussian_entropy, log_norm_const, nll_bits_per_dim
from model import EnergyUNet, UNetConfig, count_parameters, energy_and_scores

LN2 = math.log(2)

# noise-conditioning variants: UNetConfig overrides, and where analytic_term's spectrum comes from:
# None = isotropic, s^2 = data_var (the data's pixel variance); "data" = eigenvalues of the training images'
# covariance (dataset.covariance_spectrum, what train.py does); "exact" = the GRF's true eigenvalues
OURS = dict(t_embedding="log", analytic_term=True, scale_energy=True)
VARIANTS = {
    "paper": (dict(), None),                                           # docs/method.md §2.1: sinusoids of t, U = 0.5 <y, f>
    "ours": (OURS, "data"),                                            # train.py's defaults
    "ours-log_t": ({**OURS, "t_embedding": "paper"}, "data"),          # single-option ablations of ours
    "ours-scale": ({**OURS, "scale_energy": False}, "data"),
    "ours-analytic": ({**OURS, "analytic_term": False}, None),
    "isotropic": (OURS, None),                                         # (d/2) log(1 + t / s^2): misses the log-det's spread
    "oracle": (OURS, "exact"),                                         # diagnostic: real data has no exact spectrum
}

# ----------------------------------------------------------------------------------------------
args = SimpleNamespace(**configure(dict(
    variants="paper,ours",      # comma-separated variant names (VARIANTS above)
    steps=2000,                 # training steps per variant
    eval_steps="0,250,500,1000,2000",  # comma-separated steps at which to evaluate
    batch_size=64,              # images per step
    lr=5e-4,                    # Adam learning rate
    lr_halving=200,             # steps between lr halvings
    time_weight=1.0,            # weight of the time term (0 = single SM)
    base_width=16,              # UNet width at the finest scale
    num_scales=2,               # UNet scales
    layers_per_block=3,         # convs per block
    t_floor=1e-6,               # t_floor of the log embedding (variance)
    size=16,                    # GRF image side
    alpha=2.5,                  # GRF spectral slope
    k0=2.0,                     # GRF spectral knee
    mean=0.5,                   # GRF mean
    amplitude=0.15,             # GRF pixel std; data_var = amplitude^2
    n_train=20000,              # training images
    n_eval=2000,                # validation images for the NLL
    n_grid=256,                 # images per t for the decomposition
    n_t=31,                     # noise levels of the decomposition, log-spaced
    t_min=1e-9,                 # smallest noise variance (training and grid)
    t_max=1e3,                  # largest noise variance; c is fixed here
    seed=0,                     # seed of data, init, noise
    threads=1,                  # torch CPU threads
    out="results/grf",          # output folder
    report_only=False,          # True: only rebuild results.json and the figure from OUT/*.json
), doc=__doc__))
variants = [v for v in args.variants.split(",") if v]
unknown = [v for v in variants if v not in VARIANTS]
require(not unknown, f"--variants={args.variants}: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
require(all(s.strip().lstrip("-").isdigit() for s in args.eval_steps.split(",") if s.strip()),
        f"--eval_steps={args.eval_steps}: expected comma-separated integers like 0,250,500")
eval_steps = sorted({int(s) for s in args.eval_steps.split(",") if s.strip()} | {args.steps})
require(eval_steps[0] >= 0 and eval_steps[-1] <= args.steps,
        f"--eval_steps={args.eval_steps}: must lie in [0, steps={args.steps}]")
torch.set_num_threads(args.threads)
os.makedirs(args.out, exist_ok=True)

# ----------------------------------------------------------------------------------------------
# the exact truth
lam = grf_eigenvalues(args.size, args.alpha, args.k0, args.amplitude)          # (n, n) float64
d = args.size ** 2
data_var = args.amplitude ** 2
H0 = grf_entropy(lam)                                                             # nats, t = 0
H_bpd = H0 / (d * LN2)
c_gauss = gaussian_entropy(d, args.t_max) - grf_entropy(lam, args.t_max)          # (H_gauss - H)(t_max)
lam32 = lam.float()


def U_star(y, t):
    return grf_energy(y, t, lam32, args.mean)


g = torch.Generator().manual_seed(args.seed)
x_train = sample_grf(args.n_train, lam, args.mean, generator=g).float()[:, None]  # (N, 1, n, n)
x_eval = sample_grf(args.n_eval, lam, args.mean, generator=g).float()[:, None]
data_spectrum = covariance_spectrum(x_train.permute(0, 2, 3, 1).numpy())[1]     # as train.py measures it
t_grid = torch.logspace(math.log10(args.t_min), math.log10(args.t_max), args.n_t)
fixed_t = [10 ** (-p / 10) for p in (90, 75, 60, 45, 30, 15, 0, -15, -30)]


def evaluate(model, energy):
    """Every number of the docstring for one model (energy: its U(y, t)), in a dict (nats unless _bpd)."""
    model.eval()
    ge = torch.Generator().manual_seed(args.seed + 1)                              # same noise for every variant
    with torch.no_grad():
        U0 = energy(x_eval, torch.zeros(args.n_eval)).double()
        tmax, _, Umax_y = losses.add_noise(x_eval, torch.full((args.n_eval,), args.t_max), ge)
        Umax = energy(Umax_y, tmax).double()
        c = log_norm_const(Umax.mean().item(), d, args.t_max)
        nll = nll_bits_per_dim(U0.mean().item(), c, d, quantized=False)
        delta0 = U0 - U_star(x_eval, 0.0).double()
        delta_max = Umax - U_star(Umax_y, args.t_max).double()
    gap_se = math.sqrt(U0.var().item() / args.n_eval + Umax.var().item() / args.n_eval) / (d * LN2)
    gap_cv = (delta0.mean() - delta_max.mean()).item() + c_gauss
    gap_cv_se = math.sqrt(delta0.var().item() / args.n_eval + delta_max.var().item() / args.n_eval)
    # at t = 0: with c_cv = c_gauss - mean delta(t_max), gap_cv = E[delta0 + c_cv] = KL - log Z
    shifted = delta0 + c_gauss - delta_max.mean()
    log_Z0 = (torch.logsumexp(-shifted, 0) - math.log(args.n_eval)).item()
    kl0 = shifted.mean().item() + log_Z0
    # time and space terms of d/dt E_t[delta], on a log-spaced t grid
    xg = x_eval[:args.n_grid]
    rows = []
    for t in t_grid.tolist():
        tt = torch.full((args.n_grid,), t)
        _, _, y = losses.add_noise(xg, tt, ge)
        U, gU, dU = energy_and_scores(energy, y, tt)
        Us, gUs, dUs = energy_and_scores(U_star, y, tt)
        e_t = (dU - dUs).double()                                                 # (n_grid,) time-score error
        e_s = 0.5 * (gUs * (gU - gUs)).flatten(1).sum(1).double()                 # (n_grid,) space share
        rows.append(dict(t=t, time=t * e_t.mean().item(), time_se=t * e_t.std().item() / math.sqrt(args.n_grid),
                         space=t * e_s.mean().item(), time_rms=(t / d) * e_t.pow(2).mean().sqrt().item(),
                         delta_mean=(U - Us).double().mean().item(), delta_std=(U - Us).double().std().item()))
    u = torch.log(t_grid).double()
    trap = lambda f: torch.trapezoid(torch.tensor([r[f] for r in rows], dtype=torch.float64), u).item()
    time_int, space_int = -trap("time"), -trap("space")
    # log Z(t) = log E_t exp(-(delta + c_cv)): the model's normalization at every t
    ge = torch.Generator().manual_seed(args.seed + 2)
    with torch.no_grad():
        for r in rows:
            tt = torch.full((args.n_grid,), r["t"])
            _, _, y = losses.add_noise(xg, tt, ge)
            s = (energy(y, tt) - U_star(y, tt)).double() + c_gauss - delta_max.mean()
            r["log_Z"] = (torch.logsumexp(-s, 0) - math.log(args.n_grid)).item()
    # denoising: space loss at fixed noise levels, same images and noise for every variant
    gs = torch.Generator().manual_seed(args.seed + 3)
    space_fixed = []
    for t in fixed_t:
        out = losses.dual_score_matching(energy, xg, t=torch.full((args.n_grid,), t), generator=gs)
        space_fixed.append(out["space"].mean().item())
    model.train()
    bpd = 1 / (d * LN2)
    return dict(nll_bpd=nll, gap_bpd=nll - H_bpd, gap_se_bpd=gap_se, gap_cv_bpd=gap_cv * bpd,
                gap_cv_se_bpd=gap_cv_se * bpd, mc_bpd=nll - H_bpd - gap_cv * bpd, c=c,
                c_gauss_bpd=c_gauss * bpd, time_bpd=time_int * bpd, space_bpd=space_int * bpd,
                resid_bpd=(gap_cv - c_gauss - time_int - space_int) * bpd,
                kl0_bpd=kl0 * bpd, log_Z0_bpd=log_Z0 * bpd, delta0_std=delta0.std().item(),
                space_fixed=space_fixed, space_fixed_mean=float(np.mean(space_fixed)), grid=rows)


def run(name):
    """Train one variant, evaluating at eval_steps; writes OUT/<name>.json as it goes."""
    options, source = VARIANTS[name]
    spectrum = {None: None, "data": data_spectrum, "exact": tuple(lam.flatten().sort().values.tolist())}[source]
    cfg = UNetConfig(channels=1, base_width=args.base_width, num_scales=args.num_scales,
                     layers_per_block=args.layers_per_block, t_floor=args.t_floor,
                     data_var=data_var, data_spectrum=spectrum, **options)
    torch.manual_seed(args.seed)
    model = energy = EnergyUNet(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gd = torch.Generator().manual_seed(args.seed + 10)                             # data order and noise
    record = dict(variant=name, options=options, spectrum=source, config=vars(args), model_config=cfg.to_dict(),
                  params=count_parameters(model), entropy_bpd=H_bpd, evals=[], train=[])
    t0, logged = time.time(), []
    for step in range(args.steps + 1):
        if step in eval_steps:
            te = time.time()
            e = evaluate(model, energy)
            record["evals"].append(dict(step=step, train_seconds=te - t0 - sum(logged), **e))
            logged.append(time.time() - te)
            print(f"{name:>15s} step {step:5d}  gap {e['gap_bpd']:+8.3f} +- {e['gap_se_bpd']:.3f}  "
                  f"cv {e['gap_cv_bpd']:+8.3f}  [c {e['c_gauss_bpd']:+.4f} time {e['time_bpd']:+8.3f} "
                  f"space {e['space_bpd']:+8.3f} resid {e['resid_bpd']:+.3f}]  KL0 {e['kl0_bpd']:.3f} "
                  f"logZ0 {e['log_Z0_bpd']:+.3f}  space@fixed {e['space_fixed_mean']:.4f}", flush=True)
            with open(os.path.join(args.out, f"{name}.json"), "w") as f:
                json.dump(record, f, indent=1)
        if step == args.steps:
            break
        lr = args.lr * 0.5 ** (step // args.lr_halving)
        for group in opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(args.n_train, (args.batch_size,), generator=gd)
        out = losses.dual_score_matching(energy, x_train[idx], time_weight=args.time_weight, generator=gd)
        loss = out["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0:
            record["train"].append(dict(step=step, loss=loss.item(), space=out["space"].mean().item(),
                                        time=out["time"].mean().item()))
    record["train_seconds"] = time.time() - t0 - sum(logged)
    with open(os.path.join(args.out, f"{name}.json"), "w") as f:
        json.dump(record, f, indent=1)


def report():
    """OUT/results.json and OUT/grf_normalization.png from every OUT/<variant>.json present."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    records = {}
    for v in VARIANTS:
        path = os.path.join(args.out, f"{v}.json")
        if os.path.exists(path):
            with open(path) as f:
                records[v] = json.load(f)
    if not records:
        fail(f"no <variant>.json in {args.out}: train first (run without --report_only=True)")
    keys = ("gap_bpd", "gap_se_bpd", "gap_cv_bpd", "c_gauss_bpd", "time_bpd", "space_bpd", "resid_bpd", "space_fixed_mean")
    bpd = 1 / (d * LN2)
    space_min = [(lam / (lam + t)).mean().item() for t in fixed_t]                 # exact minimum of the space loss
    table = []
    for v, r in records.items():
        for e in r["evals"]:
            # second-order KL(p_t || q_t) = Var(delta)/2: shape error; gap = KL(0) - KL(t_max) - drift of log Z
            kl0, kl_max = 0.5 * e["delta0_std"] ** 2 * bpd, 0.5 * e["grid"][-1]["delta_std"] ** 2 * bpd
            excess = float(np.mean(np.array(e["space_fixed"]) - np.array(space_min)))
            table.append(dict(variant=v, step=e["step"], train_seconds=e["train_seconds"], **{k: e[k] for k in keys},
                              kl0_bpd=kl0, kl_max_bpd=kl_max, drift_bpd=kl0 - kl_max - e["gap_cv_bpd"],
                              space_excess=excess))
    lines = ["| variant | step | gap (bits/dim) | gap_cv | = time | + space | KL(t=0) | KL(t_max) | log Z drift | "
             "space loss | excess |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in table:
        lines.append(f"| {row['variant']} | {row['step']} | {row['gap_bpd']:+.3f} +- {row['gap_se_bpd']:.3f} | "
                     f"{row['gap_cv_bpd']:+.3f} | {row['time_bpd']:+.3f} | {row['space_bpd']:+.3f} | "
                     f"{row['kl0_bpd']:.3f} | {row['kl_max_bpd']:.3f} | {row['drift_bpd']:+.3f} | "
                     f"{row['space_fixed_mean']:.4f} | {row['space_excess']:.4f} |")
    # the same, compact: the gap at every evaluated step, and the last step's split, one row per variant
    steps = sorted({row["step"] for row in table})
    compact = ["| variant | " + " | ".join(f"gap @ {s}" for s in steps) + " | KL(t=0) | log Z drift | space loss | excess |",
               "| --- " * (len(steps) + 5) + "|"]
    for v in records:
        rows = {row["step"]: row for row in table if row["variant"] == v}
        last = rows[max(rows)]
        compact.append(f"| {v} | " + " | ".join(f"{rows[s]['gap_bpd']:+.3f}" if s in rows else "-" for s in steps)
                       + f" | {last['kl0_bpd']:.3f} | {last['drift_bpd']:+.3f} | {last['space_fixed_mean']:.4f} | "
                       f"{last['space_excess']:.4f} |")
    print("\n".join(lines + [""] + compact))
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(dict(entropy_bpd=H_bpd, space_min=space_min, table=table, markdown="\n".join(lines),
                       markdown_compact="\n".join(compact)), f, indent=1)
    fig, ax = plt.subplots(1, 5, figsize=(25, 4.5))
    for v, r in records.items():
        steps = [e["step"] for e in r["evals"]]
        ax[0].errorbar(steps, [e["gap_bpd"] for e in r["evals"]], [e["gap_se_bpd"] for e in r["evals"]],
                       marker="o", capsize=3, label=v)
        last = r["evals"][-1]
        t = [p["t"] for p in last["grid"]]
        ax[1].plot(t, [p["time"] for p in last["grid"]], marker=".", label=v)
        ax[2].plot(t, [p["log_Z"] / (d * LN2) for p in last["grid"]], marker=".", label=v)
        ax[3].plot(t, [p["time_rms"] for p in last["grid"]], marker=".", label=v)
        ax[4].plot(t, [0.5 * p["delta_std"] ** 2 * bpd for p in last["grid"]], marker=".", label=v)
    ax[0].axhline(0, color="k", lw=0.8)
    ax[0].set(xlabel="training step", ylabel="NLL - exact entropy (bits/dim)", yscale="symlog", title="gap")
    ax[1].set(xscale="log", xlabel="t (noise variance)", ylabel="t E[dU/dt - dU*/dt]  (nats per e-fold)",
              title="time-score bias, last eval", yscale="symlog")
    ax[2].set(xscale="log", xlabel="t", ylabel="log Z(t) (bits/dim)", title="model normalization, c from t_max")
    ax[3].set(xscale="log", xlabel="t", ylabel="RMS (t/d)(dU/dt - dU*/dt)", yscale="log", title="time-score error")
    ax[4].set(xscale="log", xlabel="t", ylabel="Var(U - U*)/2 (bits/dim)", yscale="log", title="shape error KL(p_t || q_t)")
    for a in ax:
        a.axhline(0, color="k", lw=0.5)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.out, "grf_normalization.png"), dpi=110)
    print(f"wrote {args.out}/results.json and grf_normalization.png")


if not args.report_only:
    print(f"GRF {args.size}x{args.size}, exact entropy {H_bpd:.4f} bits/dim; variants {variants}; "
          f"{args.steps} steps, batch {args.batch_size}, threads {args.threads}", flush=True)
    for v in variants:
        run(v)
report()
