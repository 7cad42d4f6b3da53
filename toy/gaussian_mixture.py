"""Fig. 1 toy: single vs dual score matching on a d-dimensional Gaussian scale mixture (docs/method.md §7).

    python toy/gaussian_mixture.py                                  # d=1000, sigmas 1,4: our recipe
    python toy/gaussian_mixture.py --recipe=paper                   # the paper's recipe as written
    python toy/gaussian_mixture.py --steps=500 --batch_size=128 --time_warmup=0 --n_data=20000 --n_norm=5000 --out=out/toy_short
    python toy/gaussian_mixture.py --d=300 --sigmas=1,2,5 --weights=0.2,0.3,0.5

x ~ sum_k w_k N(0, s_k^2 I_d). Its noisy density p(y, t), y = x + sqrt(t) z, is again a scale
mixture, so the true energy U*(y, t) = -log p(y, t) is analytic. The model is a radial energy whose
family contains the truth: an MLP of log(t + 0.01) gives (a_k, b_k) per component and
U(y, t) = -logsumexp_k -(a_k ||y||^2 + d b_k). It is trained twice with losses.dual_score_matching,
time_weight=0 (single score matching) and time_weight>0 (dual). Each model gets one constant fixed
at t = t_max, then its log p at t = t_eval is compared with the truth on 500 radii.
Writes results.json, gaussian_mixture.png/.pdf and summary.txt into --out. CPU only.
"""
import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch
import torch.nn as nn

import losses

DB = 10 / math.log(10)              # nats -> dB: 10 log10 p = DB * log p

# ----------------------------------------------------------------------------------------------
# the analytic mixture: p(y, t) = sum_k w_k N(0, (s_k^2 + t) I_d)


def radial_logits(sq, a, b, d):
    """-(a_k ||y||^2 + d b_k), (B, K), from sq = ||y||^2 (B,) and a, b (B, K)."""
    return -(a * sq[:, None] + d * b)


def radial_energy(sq, a, b, d):
    """U = -logsumexp_k -(a_k ||y||^2 + d b_k), (B,)."""
    return -torch.logsumexp(radial_logits(sq, a, b, d), dim=1)


def radial_score(sq, a, b, d):
    """Score along y / ||y||, divided by sqrt(d): -dU/d||y|| / sqrt(d) = -2 sum_k resp_k a_k ||y|| / sqrt(d)."""
    resp = torch.softmax(radial_logits(sq, a, b, d), dim=1)              # (B, K) responsibilities
    return -2 * (resp * a).sum(dim=1) * sq.sqrt() / math.sqrt(d)


class ScaleMixture:
    """sum_k w_k N(0, s_k^2 I_d) and its noisy versions, all analytic."""

    def __init__(self, sigmas, weights, d):
        self.sigmas = torch.as_tensor(sigmas, dtype=torch.float64)      # (K,)
        self.weights = torch.as_tensor(weights, dtype=torch.float64)    # (K,)
        self.d = d

    def sample(self, n, generator):
        """(n, d) float32 samples of x."""
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        return torch.randn(n, self.d, generator=generator) * self.sigmas.float()[k, None]

    def coefficients(self, t):
        """(a_k, b_k) of U*(y, t), each (B, K) float64: a_k = 1 / (2 (s_k^2 + t)),
        d b_k = (d/2) log(2 pi (s_k^2 + t)) - log w_k."""
        var = self.sigmas ** 2 + t.double()[:, None]                    # (B, K)
        return 0.5 / var, 0.5 * torch.log(2 * math.pi * var) - torch.log(self.weights) / self.d

    def energy(self, y, t):
        """U*(y, t) = -log p(y, t), y (B, d), t (B,) -> (B,) float64 nats (docs/method.md §7)."""
        return radial_energy(y.double().pow(2).sum(dim=1), *self.coefficients(t), self.d)

    def score(self, y, t):
        """grad_y log p(y, t) = -sum_k resp_k y / (s_k^2 + t), (B, d) float64."""
        y = y.double()
        a, b = self.coefficients(t)
        resp = torch.softmax(radial_logits(y.pow(2).sum(dim=1), a, b, self.d), dim=1)   # (B, K)
        return -2 * (resp * a).sum(dim=1, keepdim=True) * y


# ----------------------------------------------------------------------------------------------
# the model: a radial energy whose family contains U*


class RadialEnergy(nn.Module):
    """U(y, t) = -logsumexp_k -(a_k(t) ||y||^2 + d b_k(t)), from an MLP of log(t + 0.01) with
    4 hidden layers of 256, GELU (docs/method.md §7). precondition=False: the MLP outputs (a_k, b_k) (paper);
    True: it outputs (a_k (1 + t), b_k), the same family, but a_k ||y||^2 ~ d a_k (s_k^2 + t) and
    d b_k are then both O(d) at every t (README, section toy)."""

    def __init__(self, d, K, precondition=True, width=256, depth=4):
        super().__init__()
        self.d, self.precondition = d, precondition
        layers, n_in = [], 1
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.GELU()]
            n_in = width
        layers.append(nn.Linear(n_in, 2 * K))
        self.mlp = nn.Sequential(*layers)

    def coefficients(self, t):
        """t (B,) -> a, b, each (B, K)."""
        a, b = self.mlp(torch.log(t + 0.01)[:, None]).chunk(2, dim=1)
        return (a / (1 + t[:, None]) if self.precondition else a), b

    def forward(self, y, t):
        return radial_energy(y.pow(2).sum(dim=1), *self.coefficients(t), self.d)


# ----------------------------------------------------------------------------------------------
# training, normalization, evaluation


def train(model, x_data, cfg, time_weight, name):
    """Adam on the batch mean of losses.dual_score_matching(time_weight); t log-uniform.
    lr schedule "halving": lr / 2 every lr_halving steps (paper); "linear": constant for the first
    half, then linearly to 0 at the last step. The time term's weight ramps linearly from 0 over the
    first time_warmup * steps steps (0: off, the paper)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if cfg.schedule == "halving":
        lr_at = lambda step: cfg.lr * 0.5 ** (step // cfg.lr_halving)
    else:
        lr_at = lambda step: cfg.lr * min(1.0, 2 * (cfg.steps - step) / cfg.steps)
    t0 = time.time()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        x = x_data[torch.randint(len(x_data), (cfg.batch_size,), generator=gen)]           # (B, d)
        t = losses.sample_t(cfg.batch_size, cfg.t_min, cfg.t_max, generator=gen)           # (B,)
        ramp = min(1.0, step / (cfg.time_warmup * cfg.steps)) if cfg.time_warmup > 0 else 1.0
        out = losses.dual_score_matching(model, x, t=t, time_weight=time_weight * ramp, generator=gen)
        opt.zero_grad(set_to_none=True)
        out["loss"].mean().backward()
        opt.step()
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rate = (step + 1) / (time.time() - t0)
            print(f"{name:6s} step {step + 1:6d} | loss {out['loss'].mean():.5f} space {out['space'].mean():.5f} "
                  f"time {out['time'].mean():.3e} | lr {lr_at(step):.2e} | {rate:.0f} steps/s, "
                  f"eta {(cfg.steps - step - 1) / rate:.0f} s", flush=True)
    return model


@torch.no_grad()
def log_norm_const(energy_fn, x, t_max, generator):
    """c with log p = -(U + c), fixed at t_max: p(y, t_max) ~ N(0, (v + t_max) I_d), v = E||x||^2 / d,
    so c = (d/2) log(2 pi e (v + t_max)) - E[U(x + sqrt(t_max) z, t_max)] (docs/method.md §5, with the data's
    variance v kept: at t_max = 100 and v = 8.5 dropping it biases log p by 0.18 dB/dim)."""
    n, d = x.shape
    y = x + math.sqrt(t_max) * torch.randn(x.shape, generator=generator)                   # (n, d)
    v = x.double().pow(2).mean().item()
    U = energy_fn(y, torch.full((n,), t_max)).double()
    return 0.5 * d * math.log(2 * math.pi * math.e * (v + t_max)) - U.mean().item()


@torch.no_grad()
def radial_curves(coefficients, r, t, c, d):
    """log p in dB/dim, radial score and dominant component at radii r = ||y|| / sqrt(d), noise t."""
    a, b = coefficients(torch.full(r.shape, t))
    a, b, sq = a.double(), b.double(), r.pow(2) * d
    logits = radial_logits(sq, a, b, d)
    return -DB * (radial_energy(sq, a, b, d) + c) / d, radial_score(sq, a, b, d), logits.argmax(dim=1)


def switch_radius(r, dominant):
    """First radius where the dominant component changes (midpoint of the grid cell); None if never."""
    change = (dominant[1:] != dominant[:-1]).nonzero()
    return None if len(change) == 0 else round(float(0.5 * (r[change[0, 0]] + r[change[0, 0] + 1])), 4)


def parse_floats(text, flag):
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(f"--{flag} must be comma-separated numbers like 1,4; got {text!r}")


def check_mixture(sigmas, weights):
    """Clear errors before any training: one weight per sigma, sigmas > 0, weights > 0 summing to 1."""
    if len(sigmas) != len(weights):
        raise SystemExit(f"--sigmas has {len(sigmas)} values but --weights has {len(weights)}: "
                         f"give one weight per component")
    if min(sigmas) <= 0:
        raise SystemExit(f"--sigmas must all be > 0 (standard deviations), got {sigmas}")
    if min(weights) <= 0 or abs(sum(weights) - 1) > 1e-6:
        raise SystemExit(f"--weights must all be > 0 and sum to 1, got {weights} (sum {sum(weights):g})")


# ----------------------------------------------------------------------------------------------
# the figure


def energy_landscape_1d(ax):
    """U(y, t) of 0.5 N(-2, 0.3^2) + 0.5 N(2, 0.3^2) over y and log10 t, with two paths between modes."""
    m, s2 = 2.0, 0.3 ** 2
    y = torch.linspace(-4, 4, 400, dtype=torch.float64)
    log_t = torch.linspace(-3.5, 2, 300, dtype=torch.float64)
    var = s2 + 10 ** log_t[:, None]                                                          # (T, 1)
    logp = lambda mean: -0.5 * (y - mean) ** 2 / var - 0.5 * torch.log(2 * math.pi * var) + math.log(0.5)
    U = -torch.logaddexp(logp(-m), logp(m))                                                  # (T, Y)
    im = ax.pcolormesh(y, log_t, U.clamp(max=12), cmap="viridis", shading="auto", rasterized=True)
    ax.contour(y, log_t, U, levels=12, colors="w", linewidths=0.4)
    ax.figure.colorbar(im, ax=ax, label="U(y, t) [nats] (clipped at 12)")
    Uat = lambda yy, lt: -math.log(0.5 * sum(math.exp(-0.5 * (yy - mu) ** 2 / (s2 + 10 ** lt))
                                             / math.sqrt(2 * math.pi * (s2 + 10 ** lt)) for mu in (-m, m)))
    direct = [(yy, -3.0) for yy in torch.linspace(-m, m, 200).tolist()]
    detour = ([(-m, lt) for lt in torch.linspace(-3, 1, 100).tolist()] + [(yy, 1.0) for yy in torch.linspace(-m, m, 100).tolist()]
              + [(m, lt) for lt in torch.linspace(1, -3, 100).tolist()])
    for path, color, label in ((direct, "r", "direct, t = 1e-3"), (detour, "orange", "through t = 10")):
        ax.plot([p[0] for p in path], [p[1] for p in path], color=color, lw=2,
                label=f"{label}: max U = {max(Uat(*p) for p in path):.1f}")
    ax.set_xlabel("y")
    ax.set_ylabel("log10 t")
    ax.set_title("1-D two-Gaussian mixture: energy landscape")
    ax.legend(loc="upper right", fontsize=7)


def make_figure(path, r, curves, data_r, sigmas):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    styles = {"truth": ("k", "-", "truth"), "single": ("tab:red", "--", "single SM"),
              "single_refit": ("tab:orange", ":", "single SM, constant re-fitted on data"),
              "dual": ("tab:blue", "-.", "dual SM")}
    ax = axes[0]
    hist_ax = ax.twinx()
    hist_ax.hist(data_r, bins=200, range=(0, float(r[-1])), color="0.85")
    hist_ax.set_yticks([])
    ax.set_zorder(hist_ax.get_zorder() + 1)
    ax.patch.set_visible(False)
    for name, (color, ls, label) in styles.items():
        ax.plot(r, curves[name][0], color=color, ls=ls, lw=1.8, label=label)
    ax.set_xlabel("radius ||x|| / sqrt(d)")
    ax.set_ylabel("log p(x) [dB/dim]")
    ax.set_title("log density (histogram: data radii)")
    ax.legend(fontsize=7)
    lo = min(float(curves[name][0][r >= 0.5].min()) for name in styles)
    ax.set_ylim(lo - 2, max(float(curves[name][0].max()) for name in styles) + 2)
    ax = axes[1]
    for name in ("truth", "single", "dual"):
        color, ls, label = styles[name]
        ax.plot(r, curves[name][1], color=color, ls=ls, lw=1.8, label=label)
    ax.set_xlabel("radius ||x|| / sqrt(d)")
    ax.set_ylabel("radial score / sqrt(d)")
    ax.set_title("radial score")
    ax.legend(fontsize=7)
    energy_landscape_1d(axes[2])
    fig.suptitle(f"Gaussian scale mixture, d = {curves['d']}, sigmas {sigmas}: single vs dual score matching")
    fig.tight_layout()
    fig.savefig(path + ".png", dpi=120)
    fig.savefig(path + ".pdf")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
if __name__ == "__main__":
    RECIPES = {  # paper: the paper's recipe as written; ours: what this toy found reliable (README, section toy)
        "paper": dict(steps=20000, lr=1e-4, schedule="halving", time_weight=1.0, precondition=0, time_warmup=0.0),
        "ours": dict(steps=3000, lr=1e-3, schedule="linear", time_weight=1.0, precondition=1, time_warmup=0.15),
    }
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    parser.add_argument("--recipe", type=str, default="ours", choices=sorted(RECIPES), help="defaults of the six flags below")
    parser.add_argument("--time_warmup", type=float, default=None, help="fraction of steps over which time_weight ramps up from 0")
    parser.add_argument("--precondition", type=int, default=None, choices=[0, 1], help="1: MLP outputs a_k (1 + t)")
    parser.add_argument("--schedule", type=str, default=None, choices=["halving", "linear"], help="lr schedule")
    parser.add_argument("--steps", type=int, default=None, help="training steps per method")
    parser.add_argument("--lr", type=float, default=None, help="Adam learning rate at step 0")
    parser.add_argument("--lr_halving", type=int, default=2000, help="steps between lr halvings (schedule=halving)")
    parser.add_argument("--time_weight", type=float, default=None, help="weight of the time term in dual SM")
    parser.add_argument("--d", type=int, default=1000, help="dimension")
    parser.add_argument("--sigmas", type=str, default="1,4", help="component standard deviations s_k")
    parser.add_argument("--weights", type=str, default="0.5,0.5", help="component weights w_k, summing to 1")
    parser.add_argument("--seed", type=int, default=0, help="seed of data, noise draws and init")
    parser.add_argument("--out", type=str, default="results/toy", help="output folder")
    parser.add_argument("--n_data", type=int, default=100000, help="training samples")
    parser.add_argument("--batch_size", type=int, default=512, help="samples per step")
    parser.add_argument("--t_min", type=float, default=1e-2, help="smallest training noise variance")
    parser.add_argument("--t_max", type=float, default=1e2, help="largest training noise variance; c is fixed here")
    parser.add_argument("--t_eval", type=float, default=1e-2, help="noise variance at which log p is compared")
    parser.add_argument("--n_norm", type=int, default=20000, help="data samples for c and for the re-fit")
    parser.add_argument("--log_every", type=int, default=500, help="steps between progress lines")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    cfg = parser.parse_args()
    for key, value in RECIPES[cfg.recipe].items():
        if getattr(cfg, key) is None:
            setattr(cfg, key, value)
    sigmas, weights = parse_floats(cfg.sigmas, "sigmas"), parse_floats(cfg.weights, "weights")
    check_mixture(sigmas, weights)
    if min(cfg.d, cfg.steps, cfg.batch_size, cfg.lr_halving, cfg.n_norm, cfg.log_every) < 1 or cfg.n_data < cfg.batch_size:
        raise SystemExit(f"--d, --steps, --batch_size, --lr_halving, --n_norm, --log_every must be >= 1 "
                         f"and --n_data >= --batch_size; got {vars(cfg)}")
    if not 0 < cfg.t_min <= cfg.t_eval < cfg.t_max or cfg.time_weight <= 0 or cfg.lr <= 0 or not 0 <= cfg.time_warmup < 1:
        raise SystemExit(f"need 0 < t_min <= t_eval < t_max, time_weight > 0, lr > 0 and 0 <= time_warmup < 1; got {vars(cfg)}")
    torch.set_num_threads(cfg.threads)
    d, K = cfg.d, len(sigmas)
    t_start = time.time()
    print(f"config: {vars(cfg)} | torch {torch.__version__}, {torch.get_num_threads()} thread(s)")

    mixture = ScaleMixture(sigmas, weights, d)
    gen = torch.Generator().manual_seed(cfg.seed)
    x_data = mixture.sample(cfg.n_data, gen)                                                 # (n_data, d)
    models = {}
    for name, time_weight in (("single", 0.0), ("dual", cfg.time_weight)):
        torch.manual_seed(cfg.seed)                                    # the same init for both methods
        models[name] = train(RadialEnergy(d, K, bool(cfg.precondition)), x_data, cfg, time_weight, name)

    # normalize each model at t_max, and re-fit single SM's constant on noisy data at t_eval
    x_norm = x_data[: cfg.n_norm]
    y_eval = x_norm + math.sqrt(cfg.t_eval) * torch.randn(x_norm.shape, generator=gen)       # (n_norm, d)
    t_eval = torch.full((len(y_eval),), cfg.t_eval)
    r = torch.linspace(0, max(5.0, 1.25 * max(sigmas)), 500, dtype=torch.float64)
    curves = {"truth": radial_curves(mixture.coefficients, r, cfg.t_eval, 0.0, d), "d": d}
    consts = {"truth": log_norm_const(mixture.energy, x_norm, cfg.t_max, gen)}               # ~0: a check
    for name, model in models.items():
        consts[name] = log_norm_const(model, x_norm, cfg.t_max, gen)
        curves[name] = radial_curves(model.coefficients, r, cfg.t_eval, consts[name], d)
    with torch.no_grad():
        consts["single_refit"] = (mixture.energy(y_eval, t_eval) - models["single"](y_eval, t_eval).double()).mean().item()
    curves["single_refit"] = radial_curves(models["single"].coefficients, r, cfg.t_eval, consts["single_refit"], d)

    # errors |log p_model - log p_true| in dB/dim on the data support and on radii [0.5, 5]
    support = torch.zeros_like(r, dtype=torch.bool)
    for s in sigmas:
        support |= (r >= 0.9 * s) & (r <= 1.1 * s)
    grid = (r >= 0.5) & (r <= 5.0)
    results = {}
    for name in ("single", "single_refit", "dual"):
        err = (curves[name][0] - curves["truth"][0]).abs()
        results[name] = {"max_err_support_db": round(err[support].max().item(), 4),
                         "rms_err_support_db": round(err[support].pow(2).mean().sqrt().item(), 4),
                         "max_err_grid_db": round(err[grid].max().item(), 4),
                         "switch_radius": switch_radius(r, curves[name][2]),
                         "log_norm_const": round(consts[name], 3)}
    results["truth_switch_radius"] = switch_radius(r, curves["truth"][2])
    results["truth_log_norm_const"] = round(consts["truth"], 3)
    results["seconds"] = round(time.time() - t_start, 1)
    results["config"] = vars(cfg)

    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    make_figure(os.path.join(cfg.out, "gaussian_mixture"), r, curves,
                (x_norm.pow(2).mean(dim=1).sqrt()).numpy(), sigmas)
    lines = [f"{'method':14s} {'max err support':>16s} {'rms err support':>16s} {'max err [0.5,5]':>16s} {'switch r':>9s}"]
    for name in ("single", "single_refit", "dual"):
        m = results[name]
        lines.append(f"{name:14s} {m['max_err_support_db']:13.3f} dB {m['rms_err_support_db']:13.3f} dB "
                     f"{m['max_err_grid_db']:13.3f} dB {str(m['switch_radius']):>9s}")
    lines.append(f"{'truth':14s} {'':16s} {'':16s} {'':16s} {str(results['truth_switch_radius']):>9s}")
    lines.append(f"errors of log p at t = {cfg.t_eval} in dB/dim; wall time {results['seconds']} s "
                 f"on {torch.get_num_threads()} thread(s), both methods")
    summary = "\n".join(lines)
    print(summary)
    with open(os.path.join(cfg.out, "summary.txt"), "w") as f:
        f.write(f"python {' '.join(sys.argv)}\n{summary}\n")
