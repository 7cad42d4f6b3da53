"""The paper's analyses of a trained energy model (docs/method.md §7): Figs. 2-5, one function per figure.

    python figures.py fig3 --ckpt=out/ckpt.pt --data_dir=data/imagenet64        # histogram of log p + Gumbel fit
    python figures.py fig4 --ckpt=out/ckpt.pt --data_dir=data/imagenet64        # contrast/offset, Haar sparsity
    python figures.py fig5 --ckpt=out/ckpt.pt --data_dir=data/imagenet64        # log p and d_eff against t
    python figures.py subsets --data_dir=data/imagenet64 --n_train=1000         # disjoint training sets for Fig. 2
    python figures.py fig2 --ckpt_a=out/first1000/ckpt.pt --ckpt_b=out/last1000/ckpt.pt \
                           --data_dir=data/imagenet64 --n_train=1000             # strong generalization
    python figures.py fig3 --ckpt=out/ckpt.pt --data_dir=data/imagenet64 --max_images=2000 --device=cpu
    python figures.py probes --ckpt=out/ckpt.pt --data_dir=data/patches          # NLL along paths off the data

Each writes OUT/figN.png, OUT/figN.pdf and OUT/figN.json (the numbers behind the figure); OUT is
the checkpoint's folder unless --out=DIR. log p is in dB/dim: 10 log10 p(x) / d (docs/method.md §5), with the
constant c of each model from the validation split (--const_images images, --n_draws draws each).
For Fig. 2, `subsets` writes DIR_first{N}/ and DIR_last{N}/ (the first and last N training images,
val.npy linked), to train one model on each with `python train.py --data_dir=DIR_first{N} ...`.
"""
import os
import sys

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from configurator import configure, fail, require
from dataset import load_split
from eval import (DB_PER_NAT, PROBES, SPLIT, WEIGHTS, batches, check_config, energies, estimate_log_norm_const,
                  gaussian_entropy, load_images, load_weights, logp_and_deff, pick_device, positive, probes, progress,
                  write_json)


# ----------------------------------------------------------------------------- analysis tools
def gumbel_fit(x):
    """Maximum-likelihood (location mu, scale beta) of the Gumbel (maximum) law
    p(x) = exp(-(x - mu)/beta - exp(-(x - mu)/beta)) / beta. The likelihood equations reduce to
        beta = mean(x) - sum(x w) / sum(w),  w = exp(-x / beta),    mu = -beta log mean(w),
    whose left minus right side increases from min(x) - mean(x) < 0 (beta -> 0) past 0; bisection."""
    x = np.asarray(x, dtype=np.float64)
    x0 = x.min()

    def g(beta):
        w = np.exp(-(x - x0) / beta)                  # shifted by min(x): the largest weight is 1
        return beta - x.mean() + (x * w).sum() / w.sum()

    lo, hi = 1e-12 * (1 + x.std()), x.mean() - x0 + 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if g(mid) < 0 else (lo, mid)
    beta = 0.5 * (lo + hi)
    mu = x0 - beta * np.log(np.mean(np.exp(-(x - x0) / beta)))
    return float(mu), float(beta)


def gumbel_pdf(x, mu, beta):
    z = (np.asarray(x) - mu) / beta
    return np.exp(-z - np.exp(-z)) / beta


def haar(x, levels=6):
    """Orthonormal 2-D Haar transform of (B, C, H, W): (lowpass, [details of level 1, 2, ...]),
    each detail (B, 3, C, h, w). min(levels, as many as halving the size allows) levels."""
    low, details = x, []
    for _ in range(levels):
        h, w = low.shape[-2:]
        if h % 2 or w % 2 or h < 2 or w < 2:
            break
        a, b = low[..., 0::2, 0::2], low[..., 0::2, 1::2]
        c, d = low[..., 1::2, 0::2], low[..., 1::2, 1::2]
        details.append(torch.stack([a - b + c - d, a + b - c - d, a - b - c + d], dim=1) / 2)   # (B, 3, C, h/2, w/2)
        low = (a + b + c + d) / 2
    return low, details


def participation_ratio(x, levels=6):
    """||c||_1^2 / (n ||c||_2^2) per image (B,) of the n Haar detail coefficients c of x (the
    lowpass, the mean brightness, is left out): 1/n for one non-zero coefficient, ~2/pi for noise."""
    _, details = haar(x, levels)
    c = torch.cat([dt.flatten(1) for dt in details], dim=1).double()             # (B, n)
    return c.abs().sum(dim=1) ** 2 / (c.shape[1] * c.pow(2).sum(dim=1))


def logp_db(energy_fn, images, c, batch_size=256, device="cpu"):
    """log p(x) in dB/dim per image (N,) numpy: -(U(x, 0) + c) * 10 / (d ln 10)."""
    return DB_PER_NAT * -(energies(energy_fn, images, 0.0, 1, batch_size, device) + c) / images[0].size


def save(fig, numbers, out, name):
    os.makedirs(out, exist_ok=True)
    for ext in ("png", "pdf"):
        fig.savefig(os.path.join(out, f"{name}.{ext}"), dpi=150, bbox_inches="tight")
    plt.close(fig)
    write_json(os.path.join(out, f"{name}.json"), numbers)
    print(f"wrote {out}/{name}.png, .pdf, .json")


def show(ax, img):
    """img (H, W, C) in [0, 1]."""
    img = np.clip(img, 0, 1)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def as_float(images):
    """(N, H, W, C) uint8 or float32 -> float32 in the model's pixel scale."""
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)


# ----------------------------------------------------------------------------- figures
def fig_probes(model, c, images, quantized, out, batch_size=256, device="cpu", seed=0):
    """-log p along the probes of eval.probes (shift, contrast, white noise, a random direction) at t = 0 and
    t_max, for the model and, if it has one, its Gaussian term alone (docs/normalization.md)."""
    x = torch.from_numpy(as_float(np.asarray(images))).permute(0, 3, 1, 2).to(device)     # (B, C, H, W)
    g = torch.Generator(device).manual_seed(seed)
    numbers = dict(n_images=len(x), log_norm_const=c, model=probes(model, x, c, quantized, generator=g))
    if getattr(model, "gaussian", None) is not None:
        g = torch.Generator(device).manual_seed(seed)                                   # the same draws
        numbers["gaussian"] = probes(model.gaussian, x, model.gaussian.log_z(), quantized, generator=g)
    fig, axes = plt.subplots(1, len(PROBES), figsize=(4 * len(PROBES), 3.4))
    for ax, name in zip(axes, PROBES):
        for who, line in (("model", "-"), ("gaussian", ":")):
            if who not in numbers:
                continue
            r = numbers[who][name]
            for key, colour in zip([k for k in r if k.startswith("t=")], ("C0", "C3")):
                ax.plot(r["amounts"], r[key], line, color=colour, marker="o", ms=3, label=f"{who}, {key}")
        ax.set_xscale("symlog", linthresh=1)
        ax.set_yscale("symlog", linthresh=10)
        ax.set_title(name)
        ax.set_xlabel({"contrast": "a"}.get(name, "b"))
    axes[0].set_ylabel("-log p, bits/dim")
    axes[0].legend(fontsize=7)
    save(fig, numbers, out, "probes")
    return numbers


def fig2(model_a, c_a, model_b, c_b, set_a, set_b, n_train, out, batch_size=256, device="cpu"):
    """Strong generalization: log p_A(x) against log p_B(x) over both training sets (dB/dim);
    set_a, set_b: (the first images of) the n_train training images of each model."""
    la, lb = (np.concatenate([logp_db(m, s, c, batch_size, device) for s in (set_a, set_b)])    # streamed
              for m, c in ((model_a, c_a), (model_b, c_b)))
    diff = la - lb
    numbers = dict(n_train=n_train, n_a=len(set_a), n_b=len(set_b), logp_a=la.tolist(), logp_b=lb.tolist(),
                   mean_abs_diff_db=float(np.abs(diff).mean()), rms_diff_db=float(np.sqrt((diff ** 2).mean())),
                   mean_diff_db=float(diff.mean()), corr=float(np.corrcoef(la, lb)[0, 1]) if len(la) > 1 else None,
                   log_norm_const_a=c_a, log_norm_const_b=c_b)
    fig, ax = plt.subplots(figsize=(4.5, 4.5), layout="constrained")
    n = len(set_a)
    ax.scatter(la[:n], lb[:n], s=6, alpha=0.6, label="training set of A")
    ax.scatter(la[n:], lb[n:], s=6, alpha=0.6, label="training set of B")
    lim = [min(la.min(), lb.min()), max(la.max(), lb.max())]
    ax.plot(lim, lim, "k--", lw=0.8)
    ax.set_xlabel("log p_A(x) (dB/dim)")
    ax.set_ylabel("log p_B(x) (dB/dim)")
    ax.set_title(f"N = {n_train} ({n} images of each set): mean |diff| {numbers['mean_abs_diff_db']:.2f}, "
                 f"RMS {numbers['rms_diff_db']:.2f} dB/dim", fontsize=9)
    ax.legend(fontsize=8)
    save(fig, numbers, out, "fig2")
    return numbers


FIG2_CURVES = [     # (panel title, y label, [(key, label)]): the quantities of toy/strong_gen.py against N
    ("A/B disagreement", "dB/dim", [("rms_heldout", "RMS A - B, held-out"), ("mean_abs_heldout", "mean |A - B|, held-out"),
                                    ("rms_train", "RMS A - B, training sets"),
                                    ("rms_heldout_gauss", "RMS A - B, held-out, Gaussian terms alone")]),
    ("memorization", "dB/dim", [("own_vs_heldout", "own set - held-out"), ("own_vs_other", "own model - other model"),
                                ("own_vs_heldout_gauss", "own set - held-out, Gaussian term alone")]),
    ("held-out NLL - exact entropy", "bits/dim", [("gap_a", "model A"), ("gap_b", "model B"),
                                                  ("gap_gauss_a", "Gaussian term of A alone")]),
]


def fig2_panels(panels, out, entropy_bpd=None, name="fig2", curves=FIG2_CURVES):
    """Fig. 2's layout for several N: top, one scatter of log p_A against log p_B (dB/dim) per N over
    both training sets (held-out fields in gray); bottom, one curve per quantity against N.

    panels: one dict per N with n_train, logp_a and logp_b (both models on set A then set B), n_a (how
    many of them are set A), heldout_a and heldout_b (both on held-out), and the keys of FIG2_CURVES
    (those missing are left out, e.g. the entropy gap on data without an exact entropy); curves: the
    bottom row, (title, y label, [(key, label)]) per panel, FIG2_CURVES by default."""
    panels = sorted(panels, key=lambda p: p["n_train"])
    fig = plt.figure(figsize=(3.2 * max(3, len(panels)), 7.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.05])
    for ax, p in zip(np.atleast_1d(top.subplots(1, len(panels))), panels):
        la, lb, n = np.asarray(p["logp_a"]), np.asarray(p["logp_b"]), p["n_a"]
        ax.scatter(p["heldout_a"], p["heldout_b"], s=3, c="0.75", label="held-out", rasterized=True)
        ax.scatter(la[:n], lb[:n], s=8, alpha=0.7, label="training set A", rasterized=True)
        ax.scatter(la[n:], lb[n:], s=8, alpha=0.7, label="training set B", rasterized=True)
        every = np.concatenate([la, lb, p["heldout_a"], p["heldout_b"]])
        lim = [every.min(), every.max()]
        ax.plot(lim, lim, "k--", lw=0.7)
        ax.set_title(f"N = {p['n_train']}", fontsize=10)
        ax.set_xlabel("log p_A(x) (dB/dim)")
    top.axes[0].set_ylabel("log p_B(x) (dB/dim)")
    top.axes[0].legend(fontsize=7, loc="upper left")
    ns = [p["n_train"] for p in panels]
    for ax, (title, unit, keys) in zip(bottom.subplots(1, len(curves)), curves):
        shown = [[p[key] for p in panels] for key, _ in keys if all(key in p for p in panels)]
        for values, (key, label) in zip(shown, [k for k in keys if all(k[0] in p for p in panels)]):
            ax.plot(ns, values, "o-", label=label)
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xscale("log")
        ax.set_xticks(ns, [f"{n:g}" for n in ns])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_yscale("symlog", linthresh=0.1)                    # linear within +-0.1, logarithmic beyond
        if min(min(v) for v in shown) >= 0:
            ax.set_ylim(bottom=0)
        ax.set_xlabel("N (training fields of each model)")
        ax.set_ylabel(unit)
        ax.set_title(title + (f" ({entropy_bpd:.3f})" if unit == "bits/dim" and entropy_bpd is not None else ""),
                     fontsize=10)
        ax.legend(fontsize=7)
    curve_keys = [k for _, _, keys in curves for k, _ in keys]
    numbers = dict(entropy_bpd=entropy_bpd, panels=[
        {**{k: p[k] for k in ("n_train", "n_a") + tuple(curve_keys) if k in p},
         **{k: np.round(np.asarray(p[k], dtype=np.float64), 4).tolist() for k in ("logp_a", "logp_b", "heldout_a", "heldout_b")}}
        for p in panels])
    save(fig, numbers, out, name)
    return numbers


def fig3(energy_fn, c, images, quantized, out, n_shown=10, batch_size=256, device="cpu", seed=0):
    """Histogram of log p (dB/dim) with its maximum-likelihood Gumbel fit, markers for uniform noise
    and the best constant (gray) image, and images at evenly spaced log p."""
    H, W, C = images.shape[1:]
    lp = logp_db(energy_fn, images, c, batch_size, device)
    mu, beta = gumbel_fit(lp)
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (16, H, W, C), dtype=np.uint8) if quantized else rng.random((16, H, W, C), dtype=np.float32)
    uniform = float(logp_db(energy_fn, noise, c, batch_size, device).mean())
    levels = np.linspace(0, 1, 101, dtype=np.float32)
    const = logp_db(energy_fn, np.broadcast_to(levels[:, None, None, None], (101, H, W, C)), c, batch_size, device)
    targets = np.linspace(*np.percentile(lp, [1, 99]), n_shown)
    shown = [int(np.abs(lp - v).argmin()) for v in targets]
    numbers = dict(n_images=len(lp), median_db=float(np.median(lp)), mean_db=float(lp.mean()), std_db=float(lp.std()),
                   gumbel_loc=mu, gumbel_scale=beta, uniform_noise_db=uniform,
                   best_constant_db=float(const.max()), best_constant_level=float(levels[const.argmax()]),
                   shown_indices=shown, shown_logp_db=[float(lp[i]) for i in shown], logp_db=lp.tolist(),
                   log_norm_const=c)
    fig = plt.figure(figsize=(10, 5.5))
    ax = fig.add_axes([0.08, 0.38, 0.88, 0.57])
    ax.hist(lp, bins=min(100, max(10, len(lp) // 20)), density=True, color="0.7", label=f"{len(lp)} images")
    grid = np.linspace(min(lp.min(), uniform), max(lp.max(), const.max()), 500)
    ax.plot(grid, gumbel_pdf(grid, mu, beta), "k", lw=1.2, label=f"Gumbel fit (loc {mu:.2f}, scale {beta:.2f})")
    ax.axvline(uniform, color="C3", ls="--", label=f"uniform noise ({uniform:.1f})")
    ax.axvline(const.max(), color="C0", ls="--", label=f"best constant image ({const.max():.1f})")
    ax.set_xlabel("log p(x) (dB/dim)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    for k, i in enumerate(shown):
        sub = fig.add_axes([0.08 + 0.88 * k / n_shown, 0.03, 0.88 / n_shown * 0.92, 0.22])
        show(sub, as_float(images[i:i + 1])[0])
        sub.set_title(f"{lp[i]:.1f}", fontsize=8)
    save(fig, numbers, out, "fig3")
    return numbers


def fig4(energy_fn, c, images, out, n_curves=6, n_grid=21, levels=6, batch_size=256, device="cpu"):
    """log p(a x + b) against contrast a (b = 0) for a few images and over (a, b), a + b <= 1, for the
    median one; log p against the participation ratio of Haar detail coefficients, with a line fit."""
    lp = logp_db(energy_fn, images, c, batch_size, device)
    pr = torch.cat([participation_ratio(x, levels) for x in batches(images, batch_size, "cpu")]).numpy()
    order = np.argsort(lp)
    chosen = [int(order[i]) for i in np.linspace(0, len(lp) - 1, min(n_curves, len(lp))).round().astype(int)]
    x = as_float(np.asarray(images[chosen]))                                         # (k, H, W, C)
    a = np.linspace(0.02, 1, 50, dtype=np.float32)
    curves = [logp_db(energy_fn, a[:, None, None, None] * xi[None], c, batch_size, device) for xi in x]
    median = x[len(chosen) // 2]
    ab = [(ai, bi) for ai in np.linspace(0, 1, n_grid) for bi in np.linspace(0, 1, n_grid) if ai + bi <= 1 + 1e-9]
    heat = logp_db(energy_fn, np.stack([ai * median + bi for ai, bi in ab]).astype(np.float32), c, batch_size, device)
    heat_grid = np.full((n_grid, n_grid), np.nan)
    for (ai, bi), v in zip(ab, heat):
        heat_grid[round(bi * (n_grid - 1)), round(ai * (n_grid - 1))] = v
    slope, intercept = np.polyfit(pr, lp, 1) if len(lp) > 1 else (float("nan"), float("nan"))
    numbers = dict(chosen_indices=chosen, contrast=a.tolist(), curves_db=[cv.tolist() for cv in curves],
                   heatmap_a=np.linspace(0, 1, n_grid).tolist(), heatmap_b=np.linspace(0, 1, n_grid).tolist(),
                   heatmap_db=[[None if np.isnan(v) else float(v) for v in row] for row in heat_grid],
                   heatmap_image=chosen[len(chosen) // 2], haar_levels=len(haar(torch.zeros(1, x.shape[3], *x.shape[1:3]), levels)[1]),
                   participation_ratio=pr.tolist(), logp_db=lp.tolist(), fit_slope=float(slope),
                   fit_intercept=float(intercept), corr=float(np.corrcoef(pr, lp)[0, 1]) if len(lp) > 1 else None)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4), layout="constrained")
    for cv, i in zip(curves, chosen):
        axes[0].plot(a, cv, label=f"image {i}")
    axes[0].set_xlabel("contrast a (b = 0)")
    axes[0].set_ylabel("log p(a x) (dB/dim)")
    axes[0].legend(fontsize=7)
    im = axes[1].imshow(heat_grid, origin="lower", extent=[0, 1, 0, 1], aspect="auto")
    fig.colorbar(im, ax=axes[1], label="log p(a x + b) (dB/dim)")
    axes[1].set_xlabel("contrast a")
    axes[1].set_ylabel("offset b")
    axes[1].set_title(f"image {chosen[len(chosen) // 2]}", fontsize=9)
    axes[2].scatter(pr, lp, s=4, alpha=0.5)
    axes[2].plot(np.sort(pr), slope * np.sort(pr) + intercept, "k", lw=1, label=f"fit: slope {slope:.1f}")
    axes[2].set_xlabel("participation ratio of Haar coefficients")
    axes[2].set_ylabel("log p(x) (dB/dim)")
    axes[2].legend(fontsize=8)
    save(fig, numbers, out, "fig4")
    return numbers


def fig5(energy_fn, c, images, out, n_chosen=4, n_t=31, n_draws=1, batch_size=256, device="cpu", seed=0):
    """Mean log p(x + sqrt(t) z, t) (dB/dim) and d_eff(x, t) / d for t from 1e-12 to 1e3, for chosen
    images (least to most probable) and averaged over the images."""
    d = images[0].size
    lp = logp_db(energy_fn, images, c, batch_size, device)
    order = np.argsort(lp)
    chosen = [int(order[i]) for i in np.linspace(0, len(lp) - 1, min(n_chosen, len(lp))).round().astype(int)]
    ts = np.logspace(-12, 3, n_t)
    gen = torch.Generator(device).manual_seed(seed)
    logp_t, deff_t = [], []                                                        # (n_t, N) each
    for t in progress(ts, len(ts), "fig5 noise levels", "level"):
        lps, dfs = [], []
        for x in batches(images, batch_size, device):
            l, df = logp_and_deff(energy_fn, x, float(t), c, n_draws, gen)
            lps.append(l.cpu())
            dfs.append(df.cpu())
        logp_t.append((DB_PER_NAT * torch.cat(lps) / d).numpy())
        deff_t.append(torch.cat(dfs).numpy() / d)
    logp_t, deff_t = np.stack(logp_t), np.stack(deff_t)
    gauss = [-DB_PER_NAT * gaussian_entropy(d, t) / d for t in ts]                  # N(m, t I): the large-t limit
    numbers = dict(t=ts.tolist(), chosen_indices=chosen, d=d, n_images=len(lp), n_draws=n_draws,
                   mean_logp_db=logp_t.mean(axis=1).tolist(), mean_deff_over_d=deff_t.mean(axis=1).tolist(),
                   chosen_logp_db=logp_t[:, chosen].T.tolist(), chosen_deff_over_d=deff_t[:, chosen].T.tolist(),
                   gaussian_logp_db=gauss)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for i in chosen:
        axes[0].semilogx(ts, logp_t[:, i], label=f"image {i} (log p {lp[i]:.1f})")
        axes[1].semilogx(ts, deff_t[:, i])
    axes[0].semilogx(ts, logp_t.mean(axis=1), "k", lw=2, label=f"mean over {len(lp)} images")
    large = ts >= 1
    axes[0].semilogx(ts[large], np.array(gauss)[large], "k:", lw=1, label="N(m, t I), t >= 1")
    axes[1].semilogx(ts, deff_t.mean(axis=1), "k", lw=2)
    axes[0].set_ylabel("mean log p(x + sqrt(t) z, t) (dB/dim)")
    axes[1].set_ylabel("d_eff(x, t) / d")
    for ax in axes:
        ax.set_xlabel("noise variance t")
    axes[0].legend(fontsize=7)
    save(fig, numbers, out, "fig5")
    return numbers


def subsets(data_dir, n_train, out_prefix=""):
    """DIR_first{N}/ and DIR_last{N}/: the first and the last n_train training images (disjoint),
    each with a link to DIR/val.npy. Returns the two folders."""
    train, _ = load_split(data_dir, "train")
    load_split(data_dir, "val")
    if 2 * n_train > len(train):
        raise ValueError(f"--n_train={n_train}: two disjoint sets need 2 N <= {len(train)} training images of {data_dir}")
    prefix = out_prefix or os.path.abspath(data_dir).rstrip("/")
    folders = []
    for name, part in ((f"{prefix}_first{n_train}", train[:n_train]), (f"{prefix}_last{n_train}", train[len(train) - n_train:])):
        os.makedirs(name, exist_ok=True)
        copy = np.lib.format.open_memmap(os.path.join(name, "train.npy"), mode="w+", dtype=part.dtype, shape=part.shape)
        for i in range(0, len(part), 4096):                              # chunk by chunk: memory stays bounded
            copy[i:i + 4096] = part[i:i + 4096]
        copy.flush()
        del copy
        val = os.path.join(name, "val.npy")
        if os.path.lexists(val):
            os.remove(val)
        os.symlink(os.path.join(os.path.abspath(data_dir), "val.npy"), val)
        folders.append(name)
        print(f"wrote {name}/train.npy ({n_train} images) and linked val.npy")
    return folders


# ----------------------------------------------------------------------------- command line
COMMON = dict(
    data_dir="",                 # dataset folder with train.npy and val.npy (required)
    split="val",                 # images analysed
    max_images=-1,               # first N images of the split; -1 = all
    const_images=2048,           # validation images for each model's constant c
    n_draws=1,                   # noise draws per image (constant; Fig. 5)
    t_max=1e3,                   # noise variance of the constant
    weights="auto",              # "ema": the EMA of the weights, "model": the raw ones, "auto": EMA if saved
    batch_size=256,              # images per forward pass
    device="auto",               # "auto" = cuda if available, else cpu; cpu, cuda, cuda:N
    seed=0,                      # seed of the noise draws
    out="",                      # output folder; "" = the (first) checkpoint's folder
)
COMMANDS = dict(
    fig2=dict(
        ckpt_a="",         # energy checkpoint trained on the first n_train training images
        ckpt_b="",         # energy checkpoint trained on the last n_train training images
        n_train=1000,      # size of each disjoint training set
        **COMMON),
    fig3=dict(
        ckpt="",           # energy checkpoint written by train.py
        n_shown=10,        # images shown at evenly spaced log p
        **COMMON),
    fig4=dict(
        ckpt="",           # energy checkpoint written by train.py
        n_curves=6,        # images whose log p(a x) is drawn against the contrast a
        n_grid=21,         # grid points per axis of the (contrast, offset) map
        haar_levels=6,     # levels of the Haar transform of the participation ratio
        **COMMON),
    fig5=dict(
        ckpt="",           # energy checkpoint written by train.py
        n_chosen=4,        # images drawn one by one (least to most probable)
        n_t=31,            # noise levels from 1e-12 to 1e3
        **COMMON),
    probes=dict(
        ckpt="",           # energy checkpoint written by train.py
        **{**COMMON, "max_images": 64}),   # images moved along each probe
    subsets=dict(
        data_dir="",       # dataset folder whose training split is cut in two
        n_train=1000,      # images in each of the two disjoint sets
        out_prefix=""),    # output folders PREFIX_first{N}, PREFIX_last{N}; "" = data_dir
)


def load_energy(path, cfg, device):
    """(model, checkpoint, c) with c from the first const_images validation images."""
    try:
        model, ckpt = load_weights(path, device, "energy", cfg["weights"])
        val, _ = load_images(cfg["data_dir"], "val", cfg["const_images"], ckpt, path)
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    c, c_se = estimate_log_norm_const(model, val, cfg["t_max"], cfg["n_draws"], cfg["batch_size"], device,
                                      torch.Generator(device).manual_seed(cfg["seed"]))
    print(f"{path}: c = {c:.2f} +- {c_se:.2f} nats from {len(val)} validation images")
    return model, ckpt, c


FIGURE_DOCS = dict(fig2="strong generalization, log p of two models trained on disjoint sets",
                   fig3="histogram of log p with a Gumbel fit", fig4="log p against contrast, offset and Haar sparsity",
                   fig5="log p and d_eff against the noise variance t",
                   probes="-log p along shift, contrast, noise and a random direction, at t = 0 and t_max",
                   subsets="two disjoint training sets (the first and last n_train images) for fig2")


def main(argv):
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip() + f"\n\ncommands: {', '.join(COMMANDS)}; `python figures.py COMMAND --help` lists its keys")
        raise SystemExit(0)
    if not argv or argv[0] not in COMMANDS:
        fail(f"usage: python figures.py {{{','.join(COMMANDS)}}} --key=value ...; the first argument must be a "
             f"command, got {argv[0] if argv else 'nothing'!r}")
    name = argv[0]
    cfg = configure(COMMANDS[name], argv[1:], doc=f"python figures.py {name}: {FIGURE_DOCS[name]}", source_file=__file__,
                    annotations=dict(split=SPLIT, weights=WEIGHTS))
    require(cfg["data_dir"], f"{name} needs --data_dir=DIR (a folder with train.npy and val.npy)")
    check_config(cfg, positive(cfg, *[k for k in ("n_train", "n_shown", "n_curves", "n_grid", "haar_levels", "n_chosen",
                                                   "n_t", "const_images", "n_draws", "t_max", "batch_size") if k in cfg]))
    if name == "subsets":
        try:
            return subsets(cfg["data_dir"], cfg["n_train"], cfg["out_prefix"])
        except (ValueError, FileNotFoundError) as e:
            fail(str(e))
    check_config(cfg, [("max_images", cfg["max_images"] == -1 or cfg["max_images"] >= 1, ">= 1, or -1 for all")])
    ckpts = [cfg["ckpt_a"], cfg["ckpt_b"]] if name == "fig2" else [cfg["ckpt"]]
    need = "--ckpt_a=PATH --ckpt_b=PATH" if name == "fig2" else "--ckpt=PATH"
    require(all(ckpts), f"{name} needs {need} (energy checkpoints written by train.py) and --data_dir=DIR")
    device = pick_device(cfg["device"])
    out = cfg["out"] or os.path.dirname(os.path.abspath(ckpts[0]))
    bs = cfg["batch_size"]
    model, ckpt, c = load_energy(ckpts[0], cfg, device)
    try:
        if name == "fig2":
            model_b, _, c_b = load_energy(ckpts[1], cfg, device)
            train, _ = load_images(cfg["data_dir"], "train", -1, ckpt, ckpts[0])
            n = cfg["n_train"]
            if 2 * n > len(train):
                raise ValueError(f"--n_train={n}: two disjoint sets need 2 N <= {len(train)} training images of "
                                 f"{cfg['data_dir']}")
            k = n if cfg["max_images"] < 0 else min(n, cfg["max_images"])
        else:
            images, quantized = load_images(cfg["data_dir"], cfg["split"], cfg["max_images"], ckpt, ckpts[0])
    except (ValueError, FileNotFoundError) as e:
        fail(str(e))
    if name == "fig2":
        return fig2(model, c, model_b, c_b, train[:k], train[len(train) - n:len(train) - n + k], n, out, bs, device)
    if name == "fig3":
        return fig3(model, c, images, quantized, out, cfg["n_shown"], bs, device, cfg["seed"])
    if name == "probes":
        return fig_probes(model, c, images, quantized, out, bs, device, cfg["seed"])
    if name == "fig4":
        return fig4(model, c, images, out, cfg["n_curves"], cfg["n_grid"], cfg["haar_levels"], bs, device)
    return fig5(model, c, images, out, cfg["n_chosen"], cfg["n_t"], cfg["n_draws"], bs, device, cfg["seed"])


if __name__ == "__main__":
    main(sys.argv[1:])
