"""Fig. 1 toy: single vs dual score matching on a d-dimensional Gaussian scale mixture (docs/toy.md).

    python toy/gaussian_mixture.py                                  # d=1000, sigmas 1,4: our recipe
    python toy/gaussian_mixture.py --recipe=paper                   # the paper's recipe as written
    python toy/gaussian_mixture.py --d=300 --sigmas=1,2.5 --weights=0.3,0.7 --out=out/toy_d300
    python toy/gaussian_mixture.py --d=300 --sigmas=1,2,5 --weights=0.2,0.3,0.5 --seed=1

x ~ sum_k w_k N(0, s_k^2 I_d). Its noisy density p(y, t), y = x + sqrt(t) z, is again a scale
mixture, so the true energy U*(y, t) = -log p(y, t) is analytic. The model is a radial energy whose
family contains the truth: an MLP of log(t + 0.01) gives (a_k, b_k) per component and
U(y, t) = -logsumexp_k -(a_k ||y||^2 + d b_k). It is trained twice with the loss of
losses.dual_score_matching, time_weight=0 (single score matching) and time_weight>0 (dual). Each
model gets one constant fixed at t = t_max, then its log p at t = t_eval is compared with the truth
on 500 radii. Both models train side by side in one batched MLP (independent weights and Adam
states), and every quantity is computed from three scalars per sample (||x||^2, <x, z>, ||z||^2),
so a step costs the same at d = 10 and d = 5000 (docs/toy.md, "Cost").
Writes results.json, gaussian_mixture.png/.pdf and summary.txt into --out. CPU only.
"""
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from configurator import configure, fail, require

DB = 10 / math.log(10)              # nats -> dB: 10 log10 p = DB * log p
SQRT_2PI = math.sqrt(2 * math.pi)
A_FLOOR = 1e-4                      # param "scaled": a_k >= A_FLOOR / (2 (v_k + t)) > 0

# the two recipes (docs/toy.md): the keys below whose default is None take their value from here
RECIPES = {
    # the paper's Fig. 1 as written: raw MLP outputs, 4 x 256, lr 1e-4 halved every 2000 steps, 20k steps
    "paper": dict(param="raw", width=256, depth=4, steps=20000, lr=1e-4, schedule="halving", lr_halving=2000,
                  time_warmup=0.0, t_max=1e2),
    # ours: positive precisions around data-initialized scales, a small MLP, lr 1e-3 then linear to 0;
    # steps from ours_steps(d)
    "ours": dict(param="scaled", width=16, depth=3, steps=None, lr=1e-3, schedule="linear", lr_halving=2000,
                 time_warmup=0.0, t_max=1e3),
}


def ours_steps(d):
    """Steps of recipe ours: 1000 for d >= 100, 3000 below. The time term's target has variance 0.5/d
    per sample, while the constant must be right to the same dB/dim at every d, so small d needs more
    samples (docs/toy.md: at d = 10, 1000 steps leave 0.125 dB/dim)."""
    return 1000 if d >= 100 else 3000

# ----------------------------------------------------------------------------------------------
# the analytic mixture: p(y, t) = sum_k w_k N(0, (s_k^2 + t) I_d)


def radial_logits(sq, a, b, d):
    """-(a_k ||y||^2 + d b_k), (..., K), from sq = ||y||^2 (...), a, b (..., K) and d a number or a
    tensor broadcastable to sq."""
    return -(a * sq[..., None] + (d[..., None] if torch.is_tensor(d) else d) * b)


def radial_energy(sq, a, b, d):
    """U = -logsumexp_k -(a_k ||y||^2 + d b_k), (...)."""
    return -torch.logsumexp(radial_logits(sq, a, b, d), dim=-1)


def radial_score(sq, a, b, d):
    """Score along y / ||y||, divided by sqrt(d): -dU/d||y|| / sqrt(d) = -2 sum_k resp_k a_k ||y|| / sqrt(d)."""
    resp = torch.softmax(radial_logits(sq, a, b, d), dim=-1)             # (..., K) responsibilities
    return -2 * (resp * a).sum(dim=-1) * sq.sqrt() / math.sqrt(d)


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

    def sample_sq(self, n, rng):
        """(n,) float64 samples of ||x||^2 = s_k^2 chi^2_d, k ~ w (numpy Generator rng)."""
        k = rng.choice(len(self.weights), size=n, p=self.weights.numpy() / self.weights.sum().item())
        return torch.from_numpy(self.sigmas.numpy()[k] ** 2 * rng.chisquare(self.d, size=n))

    def coefficients(self, t):
        """(a_k, b_k) of U*(y, t), each (B, K) float64: a_k = 1 / (2 (s_k^2 + t)),
        d b_k = (d/2) log(2 pi (s_k^2 + t)) - log w_k."""
        var = self.sigmas ** 2 + t.double()[:, None]                    # (B, K)
        return 0.5 / var, 0.5 * torch.log(2 * math.pi * var) - torch.log(self.weights) / self.d

    def energy(self, y, t):
        """U*(y, t) = -log p(y, t), y (B, d), t (B,) -> (B,) float64 nats."""
        return self.energy_sq(y.double().pow(2).sum(dim=1), t)

    def energy_sq(self, sq, t):
        """U* from sq = ||y||^2 (B,)."""
        return radial_energy(sq.double(), *self.coefficients(t), self.d)

    def score(self, y, t):
        """grad_y log p(y, t) = -sum_k resp_k y / (s_k^2 + t), (B, d) float64."""
        y = y.double()
        a, b = self.coefficients(t)
        resp = torch.softmax(radial_logits(y.pow(2).sum(dim=1), a, b, self.d), dim=1)   # (B, K)
        return -2 * (resp * a).sum(dim=1, keepdim=True) * y


# ----------------------------------------------------------------------------------------------
# the model: R independent radial energies in one batched MLP


def reference_variances(sq_over_d, K, n_quantiles=400):
    """K component scales from the data alone: split n_quantiles quantiles of log(||x||^2 / d) into K
    segments with the least within-segment variance (1-D k-means, solved exactly by dynamic
    programming), then v_k = the mean of ||x||^2 / d over the data in segment k. Each model component
    then starts on its own shell of data (docs/toy.md, "Why it works")."""
    x = np.log(np.asarray(sq_over_d, dtype=np.float64))
    qs = np.quantile(x, (np.arange(n_quantiles) + 0.5) / n_quantiles)
    n = len(qs)
    s1, s2 = np.concatenate([[0], np.cumsum(qs)]), np.concatenate([[0], np.cumsum(qs ** 2)])
    i, j = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")          # segment [i, j)
    with np.errstate(divide="ignore", invalid="ignore"):
        cost = np.where(j > i, (s2[j] - s2[i]) - (s1[j] - s1[i]) ** 2 / np.maximum(j - i, 1), np.inf)
    best, arg = cost[0].copy(), []                                                  # best[j]: segments of [0, j)
    for _ in range(K - 1):
        total = best[:, None] + cost                                                # last segment [i, j)
        arg.append(total.argmin(axis=0))
        best = total.min(axis=0)
    starts, j = [], n
    for a in reversed(arg):
        j = int(a[j])
        starts.append(j)
    starts = sorted(starts)                                                          # first quantile of segments 2..K
    cuts = [0.5 * (qs[k - 1] + qs[k]) for k in starts]
    seg = np.searchsorted(np.array(cuts), x)                                         # segment of every sample
    return [float(np.exp(x[seg == k]).mean()) for k in range(K)]


class RadialEnergy(torch.nn.Module):
    """R independent models U_r(y, t) = -logsumexp_k -(a_k(t) ||y||^2 + d b_k(t)), k < K, each
    from its own MLP of log(t + 0.01) (depth hidden layers of width, GELU), batched with bmm.

    param="raw" (the paper): (a_k, b_k) are the MLP's 2K outputs as they are; a negative a_k makes
    exp(-U) non-integrable. param="scaled" (ours): 2K + 1 outputs (u_k, w_k, c) and reference
    variances v_k (from the data, reference_variances),
        a_k = (exp(u_k / d) + 1e-4) / (2 (v_k + t)),   b_k = c + (1/2) [log(v_k + t) - mean_j log(v_j + t)] + w_k / d
    Same family (any a_k > 1e-4 / (2 (v_k + t)), i.e. any component variance below 1e4 (v_k + t),
    any b_k), normalizable by construction: a_k > 0 (also in floating point, where exp can underflow), so
    int exp(-U) dy = sum_k exp(-d b_k) (pi / a_k)^(d/2) < infinity. With the output layer at zero,
    every component starts as N(0, (v_k + t) I) with equal weights. The outputs that tell the
    components apart (u_k, w_k) move the logits by O(1) nats at every d, the common part c (the
    only part single SM cannot see) by O(d) (docs/toy.md, "Why it works").
    ref_var (R, K) and dims (R,) (each model's d) are needed for "scaled"; seeds (R,) seed each
    model's initialization."""

    def __init__(self, R, K, width=256, depth=4, param="raw", ref_var=None, seeds=None, dims=None):
        super().__init__()
        if param not in ("raw", "scaled"):
            raise ValueError(f"param must be 'raw' or 'scaled', got {param!r}")
        self.R, self.K, self.param = R, K, param
        sizes = [1] + [width] * depth + [2 * K + (param == "scaled")]
        weights = [[] for _ in sizes[1:]]
        biases = [[] for _ in sizes[1:]]
        for r in range(R):                          # nn.Linear's default init, one generator per model
            g = torch.Generator().manual_seed(int(seeds[r]) if seeds is not None else r)
            for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
                bound = 1 / math.sqrt(n_in)
                weights[i].append((torch.rand(n_in, n_out, generator=g) * 2 - 1) * bound)
                biases[i].append((torch.rand(1, n_out, generator=g) * 2 - 1) * bound)
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(torch.stack(w)) for w in weights])
        self.biases = torch.nn.ParameterList([torch.nn.Parameter(torch.stack(b)) for b in biases])
        if param == "scaled":
            require(ref_var is not None and dims is not None, "param='scaled' needs ref_var and dims")
            with torch.no_grad():
                self.weights[-1].zero_()
                self.biases[-1].zero_()
            self.register_buffer("ref_var", torch.as_tensor(ref_var, dtype=torch.float32).reshape(R, 1, K))
        self.register_buffer("dim", torch.as_tensor(dims if dims is not None else [1.0] * R, dtype=torch.float32).reshape(R, 1, 1))

    def outputs(self, t):
        """t (R, B) -> the MLP's outputs (R, B, 2K) and their derivatives in t (forward mode)."""
        x = torch.log(t + 0.01)[..., None]                                 # (R, B, 1)
        dx = (1 / (t + 0.01))[..., None]
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i == 0:
                pre, dpre = x * w + b, dx * w                              # a (R, 1, width) weight
            else:
                pre, dpre = torch.baddbmm(b, x, w), torch.bmm(dx, w)
            if i == n - 1:
                return pre, dpre
            cdf = 0.5 * (1 + torch.erf(pre / math.sqrt(2)))
            x, dx = pre * cdf, (cdf + pre * torch.exp(-0.5 * pre * pre) / SQRT_2PI) * dpre   # GELU and GELU'

    def coefficients_and_derivatives(self, t):
        """t (R, B) -> a, b, da/dt, db/dt, each (R, B, K)."""
        out, dout = self.outputs(t)
        o, p = out[..., :self.K], out[..., self.K:2 * self.K]
        do, dp = dout[..., :self.K], dout[..., self.K:2 * self.K]
        if self.param == "raw":
            return o, p, do, dp
        c, dc = out[..., 2 * self.K:], dout[..., 2 * self.K:]               # (R, B, 1)
        vt = self.ref_var + t[..., None]                                   # (R, B, K)
        e = torch.exp(o / self.dim)
        a = (e + A_FLOOR) / (2 * vt)
        log_vt, inv = torch.log(vt), 1 / vt
        b = c + 0.5 * (log_vt - log_vt.mean(dim=-1, keepdim=True)) + p / self.dim
        db = dc + 0.5 * (inv - inv.mean(dim=-1, keepdim=True)) + dp / self.dim
        return a, b, e * do / (2 * vt * self.dim) - a * inv, db

    def coefficients(self, t):
        """t (R, B) -> a, b, each (R, B, K)."""
        return self.coefficients_and_derivatives(t)[:2]


# ----------------------------------------------------------------------------------------------
# the loss from scalars


def radial_dsm_terms(a, b, da, db, q, g, chi, t, d):
    """The per-sample space and time terms of losses.dual_score_matching for a radial energy, from
    three scalars: with y = x + sqrt(t) z, q = ||x||^2, g = <x, z> / ||x|| ~ N(0, 1) and
    chi = ||z||^2 - g^2 ~ chi^2_(d-1) (independent of g), so ||z||^2 = g^2 + chi, <x, z> = sqrt(q) g,
    ||y||^2 = q + 2 sqrt(t q) g + t ||z||^2, <y, z> = sqrt(q) g + sqrt(t) ||z||^2. With U' = dU/d||y||^2
    = sum_k resp_k a_k, grad_y U = 2 U' y, so
        space = (1/d) ||sqrt(t) grad_y U - z||^2 = (4 t U'^2 ||y||^2 - 4 sqrt(t) U' <y, z> + ||z||^2) / d
        time  = (0.5 (1 - ||z||^2 / d) - (t/d) dU/dt)^2,  dU/dt = sum_k resp_k (a_k' ||y||^2 + d b_k').
    a, b, da, db (..., B, K); q, g, chi, t (..., B); d a number or (..., 1). Returns (space, time)."""
    zz = g * g + chi
    xz = q.sqrt() * g
    st = t.sqrt()
    sq = q + 2 * st * xz + t * zz
    yz = xz + st * zz
    resp = torch.softmax(radial_logits(sq, a, b, d), dim=-1)
    u1 = (resp * a).sum(dim=-1)
    dk = d[..., None] if torch.is_tensor(d) else d
    u_t = (resp * (da * sq[..., None] + dk * db)).sum(dim=-1)
    space = (4 * t * u1 * u1 * sq - 4 * st * u1 * yz + zz) / d
    time_term = (0.5 * (1 - zz / d) - (t / d) * u_t) ** 2
    return space, time_term


# ----------------------------------------------------------------------------------------------
# training, normalization, evaluation


def make_run(d, sigmas, weights, seed, method):
    """One training run: a mixture, a seed (data, noise and init), a method ("single" or "dual")."""
    return dict(d=int(d), sigmas=tuple(float(s) for s in sigmas), weights=tuple(float(w) for w in weights),
                seed=int(seed), method=method)


def run_data(run, n_data):
    """(n_data,) float64 ||x||^2 of the run's training set (the same for single and dual)."""
    rng = np.random.default_rng([run["seed"], 0])
    return ScaleMixture(run["sigmas"], run["weights"], run["d"]).sample_sq(n_data, rng)


def fit(runs, cfg, log=print, name="runs"):
    """Train len(runs) models side by side (all runs have the same K). Adam on the sum over runs of
    each run's batch mean of space + time_weight * ramp * time (time_weight 0 for single SM); Adam is
    elementwise, so the runs are independent. t log-uniform on [t_min, t_max]. lr schedule
    "halving": lr / 2 every lr_halving steps (paper); "linear": constant for the first half, then
    linearly to 0 at the last step. Returns (model, data, per-run dimensions (R, 1) float64)."""
    R, K = len(runs), len(runs[0]["sigmas"])
    require(all(len(r["sigmas"]) == K for r in runs), "fit: every run of a batch needs the same K")
    data = torch.stack([run_data(r, cfg["n_data"]) for r in runs])                      # (R, n_data)
    d = torch.tensor([[r["d"]] for r in runs], dtype=torch.float64)                      # (R, 1)
    ref_var = None
    ablation = cfg.get("ablation", "none")
    if cfg["param"] == "scaled":
        if ablation == "quantile_scales":           # v_k at the quantiles (k + 0.5) / K of ||x||^2 / d
            ref_var = [np.quantile((q / r["d"]).numpy(), (np.arange(K) + 0.5) / K).tolist() for q, r in zip(data, runs)]
        else:
            ref_var = [reference_variances((q / r["d"]).numpy(), K) for q, r in zip(data, runs)]
    dims = [1 if ablation == "per_dim_outputs" else r["d"] for r in runs]
    model = RadialEnergy(R, K, cfg["width"], cfg["depth"], cfg["param"], ref_var, [r["seed"] for r in runs], dims)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    tw = torch.tensor([[cfg["time_weight"] if r["method"] == "dual" else 0.0] for r in runs], dtype=torch.float64)
    rngs = [np.random.default_rng([r["seed"], 1]) for r in runs]
    B, steps = cfg["batch_size"], cfg["steps"]
    log_t = (math.log(cfg["t_min"]), math.log(cfg["t_max"]))
    t0 = time.time()
    for step in range(steps):
        if cfg["schedule"] == "halving":
            lr = cfg["lr"] * 0.5 ** (step // cfg["lr_halving"])
        else:
            lr = cfg["lr"] * min(1.0, 2 * (steps - step) / steps)
        for group in opt.param_groups:
            group["lr"] = lr
        draws = np.stack([np.stack([rng.integers(0, cfg["n_data"], B), rng.random(B), rng.standard_normal(B),
                                    rng.chisquare(r["d"] - 1, B) if r["d"] > 1 else np.zeros(B)])
                          for rng, r in zip(rngs, runs)])                                # (R, 4, B)
        draws = torch.from_numpy(draws)
        q = torch.gather(data, 1, draws[:, 0].long())
        t = torch.exp(log_t[0] + draws[:, 1] * (log_t[1] - log_t[0]))
        a, b, da, db = (c.double() for c in model.coefficients_and_derivatives(t.float()))
        space, time_term = radial_dsm_terms(a, b, da, db, q, draws[:, 2], draws[:, 3], t, d)
        ramp = min(1.0, step / (cfg["time_warmup"] * steps)) if cfg["time_warmup"] > 0 else 1.0
        loss = (space + tw * ramp * time_term).mean(dim=1)                               # (R,)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
        if (step + 1) % cfg["log_every"] == 0 or step + 1 == steps:
            rate = (step + 1) / (time.time() - t0)
            log(f"{name} step {step + 1:6d}/{steps} | space {space.mean():.5f} time {time_term.mean():.3e} "
                f"| lr {lr:.2e} | {rate:.1f} steps/s, eta {(steps - step - 1) / rate:.0f} s")
    return model, data, d


def sample_noisy_sq(q, d, t, rng):
    """(R, n) ||y||^2 with y = x + sqrt(t) z for data with ||x||^2 = q (R, n) and dimensions d (R, 1)."""
    R, n = q.shape
    g = torch.from_numpy(rng.standard_normal((R, n)))
    chi = torch.from_numpy(np.stack([rng.chisquare(max(int(dr) - 1, 1), n) if dr > 1 else np.zeros(n)
                                     for dr in d[:, 0].tolist()]))
    return q + 2 * math.sqrt(t) * q.sqrt() * g + t * (g * g + chi)


def log_norm_const(energy_of_sq, q, d, t_max, rng):
    """c with log p = -(U + c), fixed at t_max (docs/method.md §5): p(y, t_max) ~ N(0, (v + t_max) I_d),
    v = E||x||^2 / d, so c = (d/2) log(2 pi e (v + t_max)) - E[U(x + sqrt(t_max) z, t_max)].
    energy_of_sq (sq (R, n), t (R, n)) -> U (R, n); q (R, n) data ||x||^2; d (R, 1). Returns (R,)."""
    sq = sample_noisy_sq(q, d, t_max, rng)
    U = energy_of_sq(sq, torch.full_like(sq, t_max)).double()
    v = q.mean(dim=1) / d[:, 0]
    return 0.5 * d[:, 0] * torch.log(2 * math.pi * math.e * (v + t_max)) - U.mean(dim=1)


def model_energy_sq(model, d):
    """(sq (R, n), t (R, n)) -> U (R, n) float64 of the batched model."""
    def energy(sq, t):
        with torch.no_grad():
            a, b = model.coefficients(t.float())
        return radial_energy(sq.double(), a.double(), b.double(), d)
    return energy


def truth_energy_sq(runs):
    """The analytic U* of each run's mixture, batched like model_energy_sq."""
    mixtures = [ScaleMixture(r["sigmas"], r["weights"], r["d"]) for r in runs]
    return lambda sq, t: torch.stack([m.energy_sq(s, tt) for m, s, tt in zip(mixtures, sq, t)])


def radial_curves(coefficients, r, t, c, d):
    """log p in dB/dim, radial score and dominant component at radii r = ||y|| / sqrt(d), noise t;
    coefficients(t (n,)) -> a, b (n, K)."""
    with torch.no_grad():
        a, b = coefficients(torch.full(r.shape, t, dtype=torch.float64))
    a, b, sq = a.double(), b.double(), r.pow(2) * d
    logits = radial_logits(sq, a, b, d)
    return -DB * (radial_energy(sq, a, b, d) + c) / d, radial_score(sq, a, b, d), logits.argmax(dim=-1)


def switch_radius(r, dominant):
    """First radius where the dominant component changes (midpoint of the grid cell); None if never."""
    change = (dominant[1:] != dominant[:-1]).nonzero()
    return None if len(change) == 0 else round(float(0.5 * (r[change[0, 0]] + r[change[0, 0] + 1])), 4)


def evaluate(model, data, d, runs, cfg):
    """Per run: errors of log p at t_eval on 500 radii against the truth, with the constant from
    t_max, and for single SM also with its constant re-fitted on noisy data at t_eval. Returns
    (results per run, curves per run)."""
    rng = np.random.default_rng([runs[0]["seed"], 2])
    q = data[:, :cfg["n_norm"]]
    c_model = log_norm_const(model_energy_sq(model, d), q, d, cfg["t_max"], rng)
    c_truth = log_norm_const(truth_energy_sq(runs), q, d, cfg["t_max"], rng)
    sq_eval = sample_noisy_sq(q, d, cfg["t_eval"], rng)
    t_eval = torch.full_like(sq_eval, cfg["t_eval"])
    c_refit = (truth_energy_sq(runs)(sq_eval, t_eval) - model_energy_sq(model, d)(sq_eval, t_eval)).mean(dim=1)
    t_grid = torch.logspace(math.log10(cfg["t_min"]), math.log10(cfg["t_max"]), 200)
    with torch.no_grad():
        a_grid = model.coefficients(t_grid.expand(len(runs), -1).contiguous())[0]        # (R, 200, K)
    out, all_curves = [], []
    for i, run in enumerate(runs):
        sigmas, dim = run["sigmas"], run["d"]
        mixture = ScaleMixture(sigmas, run["weights"], dim)
        r = torch.linspace(0, max(5.0, 1.25 * max(sigmas)), 500, dtype=torch.float64)
        coef = lambda t, i=i: tuple(c[i] for c in model.coefficients(t.float().expand(len(runs), -1).contiguous()))
        curves = {"truth": radial_curves(mixture.coefficients, r, cfg["t_eval"], 0.0, dim),
                  "model": radial_curves(coef, r, cfg["t_eval"], c_model[i].item(), dim),
                  "refit": radial_curves(coef, r, cfg["t_eval"], c_refit[i].item(), dim), "r": r}
        support = torch.zeros_like(r, dtype=torch.bool)
        for s in sigmas:
            support |= (r >= 0.9 * s) & (r <= 1.1 * s)
        grid = (r >= 0.5) & (r <= max(5.0, 1.25 * max(sigmas)))
        res = {}
        for key, c in (("model", c_model[i].item()), ("refit", c_refit[i].item())):
            err = (curves[key][0] - curves["truth"][0]).abs()
            res[key] = {"max_err_support_db": round(err[support].max().item(), 4),
                        "rms_err_support_db": round(err[support].pow(2).mean().sqrt().item(), 4),
                        "max_err_grid_db": round(err[grid].max().item(), 4),
                        "switch_radius": switch_radius(r, curves[key][2]),
                        "log_norm_const": round(c, 3)}
        res["truth_switch_radius"] = switch_radius(r, curves["truth"][2])
        res["truth_log_norm_const"] = round(c_truth[i].item(), 3)
        res["min_precision"] = float(a_grid[i].min())                # > 0: exp(-U) integrable at every t
        out.append(res)
        all_curves.append(curves)
    return out, all_curves


def parse_floats(text, flag):
    """A tuple of numbers from the configurator, or comma-separated text."""
    if isinstance(text, (tuple, list)):
        return [float(v) for v in text]
    try:
        return [float(v) for v in str(text).split(",")]
    except ValueError:
        fail(f"--{flag} must be comma-separated numbers like 1,4; got {text!r}")


def check_mixture(sigmas, weights):
    """Clear errors before any training: one weight per sigma, sigmas > 0, weights > 0 summing to 1."""
    require(len(sigmas) == len(weights), f"--sigmas has {len(sigmas)} values but --weights has {len(weights)}: "
                                         f"give one weight per component")
    require(min(sigmas) > 0, f"--sigmas must all be > 0 (standard deviations), got {','.join(map(str, sigmas))}")
    require(min(weights) > 0 and abs(sum(weights) - 1) <= 1e-6,
            f"--weights must all be > 0 and sum to 1, got {','.join(map(str, weights))} (sum {sum(weights):g})")


def check_config(cfg):
    """One-line errors for values no run can use."""
    for key in ("d", "steps", "batch_size", "lr_halving", "n_norm", "log_every", "width", "depth", "workers"):
        if key in cfg:
            require(cfg[key] >= 1, f"--{key}={cfg[key]}: must be >= 1")
    require(cfg["n_data"] >= max(cfg["batch_size"], cfg["n_norm"]),
            f"--n_data={cfg['n_data']}: must be >= --batch_size ({cfg['batch_size']}) and --n_norm ({cfg['n_norm']})")
    require(0 < cfg["t_min"] <= cfg["t_eval"] < cfg["t_max"],
            f"need 0 < t_min <= t_eval < t_max; got t_min={cfg['t_min']}, t_eval={cfg['t_eval']}, t_max={cfg['t_max']}")
    require(cfg["time_weight"] > 0, f"--time_weight={cfg['time_weight']}: must be > 0 (dual SM)")
    require(cfg["lr"] > 0, f"--lr={cfg['lr']}: must be > 0")
    require(0 <= cfg["time_warmup"] < 1, f"--time_warmup={cfg['time_warmup']}: must be in [0, 1)")


def with_recipe(cfg, d=1000):
    """The recipe's values for every key left at None (steps of recipe ours: ours_steps(d))."""
    cfg = dict(cfg)
    for key, value in RECIPES[cfg["recipe"]].items():
        if cfg.get(key) is None:
            cfg[key] = value
    if cfg["steps"] is None:
        cfg["steps"] = ours_steps(d)
    return cfg


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


def make_figure(path, r, curves, data_r, sigmas, d):
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
    fig.suptitle(f"Gaussian scale mixture, d = {d}, sigmas {','.join(f'{s:g}' for s in sigmas)}: single vs dual score matching")
    fig.tight_layout()
    fig.savefig(path + ".png", dpi=120)
    fig.savefig(path + ".pdf")
    plt.close(fig)


# ----------------------------------------------------------------------------------------------


def main(argv=None):
    annotations = {k: (int | None if isinstance(v, int) else float | None if isinstance(v, float) else str | None)
                   for k, v in RECIPES["paper"].items()}
    cfg = configure(dict(
        recipe="ours",          # ours | paper: defaults of the keys below marked "(recipe)"
        param=None,             # (recipe) raw: MLP outputs (a_k, b_k); scaled: a_k = exp(o_k) / (2 (v_k + t)), v_k from the data
        width=None,             # (recipe) MLP hidden width
        depth=None,             # (recipe) MLP hidden layers
        steps=None,             # (recipe) training steps per method (ours: 1000 for d >= 100, else 3000)
        lr=None,                # (recipe) Adam learning rate at step 0
        schedule=None,          # (recipe) lr schedule: halving (lr / 2 every lr_halving steps) or linear (to 0 over the second half)
        lr_halving=None,        # (recipe) steps between lr halvings (schedule=halving)
        time_warmup=None,       # (recipe) fraction of steps over which time_weight ramps up from 0
        t_max=None,             # (recipe) largest training noise variance; the constant c is fixed here
        time_weight=1.0,        # weight of the time term in dual SM
        d=1000,                 # dimension
        sigmas=(1.0, 4.0),      # component standard deviations s_k
        weights=(0.5, 0.5),     # component weights w_k, summing to 1
        seed=0,                 # seed of data, noise draws and init
        out="results/toy",      # output folder
        n_data=100000,          # training samples
        batch_size=512,         # samples per step
        t_min=1e-2,             # smallest training noise variance
        t_eval=1e-2,            # noise variance at which log p is compared
        n_norm=20000,           # data samples for c and for the re-fit
        log_every=500,          # steps between progress lines
        threads=1,              # torch CPU threads
        ablation="none",        # param=scaled only: quantile_scales (v_k at quantiles (k+0.5)/K) or per_dim_outputs (u_k, w_k not divided by d)
    ), argv, doc=__doc__, annotations={**annotations, "recipe": str})
    require(cfg["recipe"] in RECIPES, f"--recipe={cfg['recipe']}: expected one of {', '.join(RECIPES)}")
    require(cfg["d"] >= 1, f"--d={cfg['d']}: must be >= 1")
    cfg = with_recipe(cfg, cfg["d"])
    require(cfg["param"] in ("raw", "scaled"), f"--param={cfg['param']}: expected raw or scaled")
    require(cfg["schedule"] in ("halving", "linear"), f"--schedule={cfg['schedule']}: expected halving or linear")
    require(cfg["ablation"] in ("none", "quantile_scales", "per_dim_outputs"),
            f"--ablation={cfg['ablation']}: expected none, quantile_scales or per_dim_outputs")
    require(cfg["ablation"] == "none" or cfg["param"] == "scaled", f"--ablation={cfg['ablation']} needs --param=scaled")
    sigmas, weights = parse_floats(cfg["sigmas"], "sigmas"), parse_floats(cfg["weights"], "weights")
    check_mixture(sigmas, weights)
    check_config(cfg)
    torch.set_num_threads(cfg["threads"])
    t_start = time.time()
    print(f"config: {cfg} | torch {torch.__version__}, {torch.get_num_threads()} thread(s)", flush=True)

    runs = [make_run(cfg["d"], sigmas, weights, cfg["seed"], m) for m in ("single", "dual")]
    model, data, d = fit(runs, cfg, log=lambda s: print(s, flush=True), name="single+dual")
    evals, curves = evaluate(model, data, d, runs, cfg)
    single, dual = evals
    results = {"single": single["model"], "single_refit": single["refit"], "dual": dual["model"],
               "truth_switch_radius": dual["truth_switch_radius"], "truth_log_norm_const": dual["truth_log_norm_const"],
               "min_precision": {"single": single["min_precision"], "dual": dual["min_precision"]},
               "seconds": round(time.time() - t_start, 1), "config": {k: (list(v) if isinstance(v, tuple) else v)
                                                                     for k, v in cfg.items()}}
    os.makedirs(cfg["out"], exist_ok=True)
    with open(os.path.join(cfg["out"], "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    figure_curves = {"truth": curves[1]["truth"], "single": curves[0]["model"], "single_refit": curves[0]["refit"],
                     "dual": curves[1]["model"]}
    data_r = (data[1, :cfg["n_norm"]] / cfg["d"]).sqrt().numpy()
    make_figure(os.path.join(cfg["out"], "gaussian_mixture"), curves[1]["r"], figure_curves, data_r, sigmas, cfg["d"])
    lines = [f"{'method':14s} {'max err support':>16s} {'rms err support':>16s} {'max err grid':>16s} {'switch r':>9s}"]
    for name in ("single", "single_refit", "dual"):
        m = results[name]
        lines.append(f"{name:14s} {m['max_err_support_db']:13.3f} dB {m['rms_err_support_db']:13.3f} dB "
                     f"{m['max_err_grid_db']:13.3f} dB {str(m['switch_radius']):>9s}")
    lines.append(f"{'truth':14s} {'':16s} {'':16s} {'':16s} {str(results['truth_switch_radius']):>9s}")
    lines.append(f"errors of log p at t = {cfg['t_eval']} in dB/dim; wall time {results['seconds']} s "
                 f"on {torch.get_num_threads()} thread(s), both methods")
    summary = "\n".join(lines)
    print(summary)
    with open(os.path.join(cfg["out"], "summary.txt"), "w") as f:
        f.write(f"python {' '.join(['toy/gaussian_mixture.py', *(sys.argv[1:] if argv is None else argv)])}\n{summary}\n")
    return results


if __name__ == "__main__":
    main()
