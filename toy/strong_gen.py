"""Memorization -> generalization as the training set grows (the paper's Fig. 2) on the warped GRF.

    python toy/strong_gen.py                                         # N = 1 ... 1e4: 10 models, ~6 min each on one core
    python toy/strong_gen.py --ns=1,100 --max_steps=500 --out=/tmp/sg_quick --work_dir=/tmp/sg_quick/runs
    python toy/strong_gen.py --report_only=True                      # metrics and figure from finished runs
    python toy/strong_gen.py --data=patches --size=8 --work_dir=/tmp/strong_gen_patches8 --out=results/cpu/strong_gen/patches8

Data: the warped Gaussian random field of data/grf/prepare.py (16x16, non-Gaussian pixels), whose
log p(x) is exact for every image and whose entropy is exact (docs/method.md §7). Two independent
draws (different seeds) give the pools of training sets A and B, a third the held-out fields; the
model of size N on side A trains on the first N fields of pool A (so A and B never share a field,
and every held-out field is new to both). For each N in ns, two models (A, B) train with train.py,
`workers` processes at a time, each into work_dir/N{N}_{A,B}/ (train.py resumes a run that stopped).
Each model gets its own constant c from the held-out fields (t_max, docs/method.md §5), then

    log p in dB/dim = 10 log10 p(x) / d, per image, of both models on set A, set B and held-out
    rms_heldout, mean_abs_heldout   A/B disagreement: log p_A - log p_B on held-out fields
    rms_train, mean_abs_train       the same over both training sets (the paper's scatter)
    own_vs_heldout                  memorization: mean log p of a model's own training fields minus
                                    its mean on held-out fields (average of A and B)
    own_vs_heldout_se               its standard error over the images scored (the four means independent)
    own_vs_other                    mean over each training set of (own model - other model)
    gap_a, gap_b                    held-out NLL minus the exact entropy, bits/dim (>= 0 up to noise)
    rms_true_a, rms_true_b          RMS of log p_model - exact log p on held-out fields, dB/dim
    own_vs_heldout_gauss, rms_heldout_gauss, gap_gauss_a, gap_gauss_b
                                    the same for the models' Gaussian terms alone (train.py's default
                                    gaussian_term: fitted to the N training fields, exactly normalized), to
                                    tell what the Gaussian fit memorizes from what the network does

--data=patches: the same on photograph patches (data/patches/prepare.py --size=SIZE --stride=SIZE:
non-overlapping SIZE x SIZE grayscale uint8 patches, made in patches_dir if it has no train.npy). Its
train and val patches are pooled, shuffled with seed, and cut into pool A, pool B and the held-out
set (disjoint as patches; identical pixel values, e.g. saturated flat patches, are counted in the JSON
as shared_heldout, shared_pools). No exact density: instead of gap and rms_true, each model's held-out NLL,

    nll_a, nll_b, nll_gauss_a, nll_gauss_b   held-out NLL in bits/dim on the 256-level scale (+8, eval.py)

Writes OUT/strong_gen.json (config, every number), OUT/strong_gen.md (the table) and
OUT/fig2.png, .pdf, .json (figures.fig2_panels: the scatters of the paper's layout and one curve
per quantity against N). Runs and datasets stay in work_dir (checkpoints, not committed).
"""
import json
import math
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import torch

from configurator import configure, fail, require
from dataset import load_split, to_tensor
from data.grf.prepare import grf_eigenvalues, grf_energy, grf_entropy, sample_grf, warp_entropy_shift, warp_field
from eval import estimate_log_norm_const
from figures import FIG2_CURVES, fig2_panels, logp_db
from model import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DB_PER_BIT = 10 * math.log10(2)           # 1 bit/dim = 3.01 dB/dim
DB_PER_NAT = 10 / math.log(10)            # 1 nat/dim = 4.34 dB/dim


# ----------------------------------------------------------------------------- data
def seeded(seed, purpose):
    """A torch.Generator seeded by (seed, purpose): independent streams for pool A, pool B, held-out."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0]))


def warped_grf_logp(y, lam, mean, amplitude, w):
    """Exact log p(y) in nats, (B,), of the warped field y = mean + amplitude sinh(w z) / w, z = (x - mean) / amplitude,
    x ~ N(mean, Sigma): change of variables, log p(y) = log p_x(x(y)) - sum_pixels log cosh(w z). y (B, H, W)."""
    if w == 0:
        return -grf_energy(y, 0.0, lam, mean)
    z = torch.asinh(w * (y - mean) / amplitude) / w
    log_cosh = (w * z).abs() + torch.log1p(torch.exp(-2 * (w * z).abs())) - math.log(2)    # no overflow
    return -grf_energy(mean + amplitude * z, 0.0, lam, mean) - log_cosh.flatten(1).sum(dim=1)


def make_data(cfg, lam):
    """work_dir/data/{pool_a, pool_b, heldout}.npy (N, n, n, 1) float32, drawn once; returns the three arrays."""
    folder = os.path.join(cfg["work_dir"], "data")
    os.makedirs(folder, exist_ok=True)
    n_pool = max(cfg["ns"])
    arrays = {}
    for purpose, (name, n) in enumerate((("pool_a", n_pool), ("pool_b", n_pool), ("heldout", cfg["n_heldout"]))):
        path = os.path.join(folder, f"{name}.npy")
        if not (os.path.exists(path) and np.load(path, mmap_mode="r").shape[0] == n):
            x = sample_grf(n, lam, cfg["mean"], generator=seeded(cfg["seed"], purpose))
            x = warp_field(x, cfg["mean"], cfg["amplitude"], cfg["warp"])
            np.save(path, x.float().numpy()[..., None])                               # (n, size, size, 1)
        arrays[name] = np.load(path, mmap_mode="r")
    return arrays["pool_a"], arrays["pool_b"], arrays["heldout"]


def make_patch_data(cfg):
    """Photograph patches: train + val of patches_dir (made by data/patches/prepare.py --size=size
    --stride=size if absent), shuffled with seed and cut into pool A, pool B (max(ns) each) and the
    held-out set, saved as work_dir/data/{pool_a, pool_b, heldout}.npy (uint8); returns the three arrays."""
    src = cfg["patches_dir"] or os.path.join(cfg["work_dir"], "patches")
    if not os.path.exists(os.path.join(src, "train.npy")):
        r = subprocess.run([sys.executable, os.path.join(ROOT, "data", "patches", "prepare.py"), f"--size={cfg['size']}",
                            f"--stride={cfg['size']}", f"--out={src}"], capture_output=True, text=True)
        require(r.returncode == 0, f"data/patches/prepare.py failed: {(r.stderr.strip().splitlines() or ['?'])[-1]}")
    x = np.concatenate([load_split(src, split)[0] for split in ("train", "val")])
    require(x.shape[1:] == (cfg["size"], cfg["size"], 1) and x.dtype == np.uint8,
            f"{src}: patches of shape {x.shape[1:]} {x.dtype}; need ({cfg['size']}, {cfg['size']}, 1) uint8 "
            f"(data/patches/prepare.py --size={cfg['size']} --stride={cfg['size']})")
    n_pool = max(cfg["ns"])
    need = 2 * n_pool + cfg["n_heldout"]
    require(len(x) >= need, f"{src} has {len(x)} patches; two pools of {n_pool} and {cfg['n_heldout']} held-out need {need}")
    x = x[np.random.default_rng(cfg["seed"]).permutation(len(x))[:need]]
    folder = os.path.join(cfg["work_dir"], "data")
    os.makedirs(folder, exist_ok=True)
    parts = dict(pool_a=x[:n_pool], pool_b=x[n_pool:2 * n_pool], heldout=x[2 * n_pool:])
    for name, part in parts.items():
        np.save(os.path.join(folder, f"{name}.npy"), part)
    return parts["pool_a"], parts["pool_b"], parts["heldout"]


def shared_count(x, others):
    """How many images of x have the exact pixel values of some image in others."""
    seen = {im.tobytes() for im in np.asarray(others)}
    return int(sum(im.tobytes() in seen for im in np.asarray(x)))


def write_training_set(folder, images, heldout_path):
    """folder/train.npy (the N training fields) and folder/val.npy, a link to the held-out fields."""
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "train.npy"), np.asarray(images))
    val = os.path.join(folder, "val.npy")
    if os.path.lexists(val):
        os.remove(val)
    os.symlink(os.path.abspath(heldout_path), val)


# ----------------------------------------------------------------------------- training
def train_command(cfg, data_dir, run_dir, seed):
    s = cfg["max_steps"]
    args = dict(data_dir=data_dir, out_dir=run_dir, device="cpu", max_steps=s, batch_size=cfg["batch_size"],
                lr=cfg["lr"], lr_halve_every=cfg["lr_halve_every"], base_width=cfg["base_width"],
                num_scales=cfg["num_scales"], layers_per_block=cfg["layers_per_block"], emb_dim=cfg["emb_dim"],
                flip=cfg["flip"], seed=seed, log_interval=max(1, s // 20), eval_interval=s,
                eval_images=min(256, cfg["n_heldout"]), ckpt_interval=max(1, s // 4))
    return [sys.executable, os.path.join(ROOT, "train.py"), *(f"--{k}={v}" for k, v in args.items()),
            *cfg["train_args"].split()]


def last_step(run_dir):
    """The last step logged in run_dir/log.jsonl (0 if none)."""
    try:
        with open(os.path.join(run_dir, "log.jsonl")) as fh:
            lines = fh.read().splitlines()
    except OSError:
        return 0
    steps = [json.loads(l).get("step", 0) for l in lines[-3:] if l.strip()]
    return max(steps, default=0)


def run_trainings(jobs, workers, total_steps, status_every=60.0):
    """Run the (name, command, run_dir) jobs, `workers` at a time, each with its output in run_dir/train.out.
    Prints one line per finished job and a status line (steps/s, ETA) every status_every seconds."""
    pending, running, failed, t0 = list(jobs), [], [], time.time()
    start_steps = sum(last_step(run_dir) for _, _, run_dir in jobs)
    next_status = t0 + status_every
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    while pending or running:
        while pending and len(running) < workers:
            name, cmd, run_dir = pending.pop(0)
            os.makedirs(run_dir, exist_ok=True)
            out = open(os.path.join(run_dir, "train.out"), "a")
            running.append((name, subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT),
                            run_dir, out, time.time()))
        time.sleep(1.0)
        for job in list(running):
            name, proc, run_dir, out, started = job
            if proc.poll() is None:
                continue
            out.close()
            running.remove(job)
            if proc.returncode:
                with open(os.path.join(run_dir, "train.out")) as fh:
                    tail = (fh.read().strip().splitlines() or ["(no output)"])[-1]
                failed.append(f"{name}: {tail}")
            print(f"{name}: {'done' if not proc.returncode else 'FAILED'} after {time.time() - started:.0f} s "
                  f"({len(jobs) - len(pending) - len(running)}/{len(jobs)} finished)", flush=True)
        if time.time() >= next_status and running:
            done = sum(last_step(run_dir) for _, _, run_dir in jobs)
            rate = (done - start_steps) / (time.time() - t0)
            eta = (total_steps - done) / rate / 60 if rate > 0 else float("nan")
            print(f"  {done}/{total_steps} steps | {rate:.1f} steps/s over {len(running)} processes | "
                  f"eta {eta:.1f} min", flush=True)
            next_status = time.time() + status_every
    return failed


# ----------------------------------------------------------------------------- metrics
def pair_metrics(la, lb):
    """Fig. 2's numbers from log p in dB/dim: la[s], lb[s] are models A and B on set s in "A", "B", "H"
    (A's training set, B's, held-out); arrays (n_s,). Means over images, differences in dB/dim."""
    diff_h = la["H"] - lb["H"]
    diff_t = np.concatenate([la["A"] - lb["A"], la["B"] - lb["B"]])
    own_a, own_b = la["A"].mean() - la["H"].mean(), lb["B"].mean() - lb["H"].mean()
    se = lambda l, s: math.sqrt(l[s].var(ddof=1) / len(l[s])) if len(l[s]) > 1 else 0.0   # standard error of a mean
    own_se = 0.5 * math.sqrt(se(la, "A") ** 2 + se(la, "H") ** 2 + se(lb, "B") ** 2 + se(lb, "H") ** 2)
    other_a, other_b = (la["A"] - lb["A"]).mean(), (lb["B"] - la["B"]).mean()
    return dict(rms_heldout=float(np.sqrt((diff_h ** 2).mean())), mean_abs_heldout=float(np.abs(diff_h).mean()),
                rms_train=float(np.sqrt((diff_t ** 2).mean())), mean_abs_train=float(np.abs(diff_t).mean()),
                own_vs_heldout=float((own_a + own_b) / 2), own_vs_heldout_se=float(own_se), own_vs_heldout_a=float(own_a),
                own_vs_heldout_b=float(own_b), own_vs_other=float((other_a + other_b) / 2),
                own_vs_other_a=float(other_a), own_vs_other_b=float(other_b))


def truth_metrics(l_model, l_true, entropy_bpd):
    """Held-out NLL minus the exact entropy (bits/dim) and RMS of log p_model - exact log p (dB/dim);
    l_model, l_true: log p of the held-out fields in dB/dim."""
    return dict(gap=float(-l_model.mean() / DB_PER_BIT - entropy_bpd),
                rms_true=float(np.sqrt(((l_model - l_true) ** 2).mean())))


@torch.no_grad()
def gaussian_logp_db(model, images):
    """log p in dB/dim, (N,), of the model's Gaussian term alone, -(U_G(x, 0) + log Z_G) (model.StationaryGaussian,
    exactly normalized): the part of the density fitted to the training set's spectrum before any training."""
    y = to_tensor(np.asarray(images))                                             # (N, C, H, W), uint8 / 255
    U = model.gaussian(y, torch.zeros(len(y))).double().numpy()
    return DB_PER_NAT * -(U + model.gaussian.log_z()) / y[0].numel()


def evaluate_pair(cfg, ckpts, sets, l_true, entropy_bpd, generator):
    """Constants, log p (dB/dim) of both models on every set, and every metric of one N (with the
    memorization and entropy gap of the models' Gaussian terms alone, when they have one). l_true None
    (patches: no exact density): the held-out NLL of each model and of its Gaussian term instead."""
    la, lb, ga, gb, consts, steps = {}, {}, {}, {}, [], []
    heldout = sets["H"]
    for path, l, g in zip(ckpts, (la, lb), (ga, gb)):
        model, ckpt = load_model(path, "cpu", kind="energy")
        c, c_se = estimate_log_norm_const(model, heldout[:cfg["const_images"]], cfg["t_max"], cfg["n_draws"],
                                          cfg["eval_batch_size"], "cpu", generator)
        consts.append((c, c_se))
        steps.append(ckpt["step"])
        for s, images in sets.items():
            l[s] = logp_db(model, images, c, cfg["eval_batch_size"], "cpu")
            if model.gaussian is not None:
                g[s] = gaussian_logp_db(model, images)
    metrics = pair_metrics(la, lb)
    offset = 8.0 if sets["H"].dtype == np.uint8 else 0.0                          # bits/dim on the 256-level scale
    for side, l, g in (("a", la, ga), ("b", lb, gb)):
        if l_true is None:
            metrics[f"nll_{side}"] = float(-l["H"].mean() / DB_PER_BIT + offset)
            if g:
                metrics[f"nll_gauss_{side}"] = float(-g["H"].mean() / DB_PER_BIT + offset)
            continue
        metrics.update({f"{k}_{side}": v for k, v in truth_metrics(l["H"], l_true, entropy_bpd).items()})
        if g:
            metrics[f"gap_gauss_{side}"] = truth_metrics(g["H"], l_true, entropy_bpd)["gap"]
    if ga:
        gauss = pair_metrics(ga, gb)
        metrics.update(own_vs_heldout_gauss=gauss["own_vs_heldout"], rms_heldout_gauss=gauss["rms_heldout"])
    metrics.update(c_a=consts[0][0], c_a_se=consts[0][1], c_b=consts[1][0], c_b_se=consts[1][1],
                   steps_a=steps[0], steps_b=steps[1])
    return metrics, la, lb


# ----------------------------------------------------------------------------- report
COLUMNS = [("n", "N"), ("rms_heldout", "RMS A-B held-out"), ("mean_abs_heldout", "mean abs A-B held-out"),
           ("rms_train", "RMS A-B train sets"), ("own_vs_heldout", "own - held-out"), ("own_vs_heldout_se", "(its s.e.)"),
           ("own_vs_other", "own - other"),
           ("own_vs_heldout_gauss", "own - held-out, Gaussian term"), ("rms_heldout_gauss", "RMS A-B held-out, Gaussian terms"), ("gap_a", "gap A (bits/dim)"),
           ("gap_b", "gap B (bits/dim)"), ("gap_gauss_a", "gap A, Gaussian term"), ("rms_true_a", "RMS A-true"),
           ("nll_a", "held-out NLL A (bits/dim)"), ("nll_b", "held-out NLL B (bits/dim)"),
           ("nll_gauss_a", "held-out NLL A, Gaussian term"), ("nll_gauss_b", "held-out NLL B, Gaussian term")]
PATCH_CURVES = FIG2_CURVES[:2] + [("held-out NLL", "bits/dim", [("nll_a", "model A"), ("nll_b", "model B"),
                                                                ("nll_gauss_a", "Gaussian term of A alone")])]


def markdown_table(rows, entropy_bpd, command):
    columns = [(k, title) for k, title in COLUMNS if all(k in r for r in rows)]   # no Gaussian term: no such columns
    head = "| " + " | ".join(title for _, title in columns) + " |"
    rule = "|" + "|".join("---:" for _ in columns) + "|"
    body = ["| " + " | ".join(str(r[k]) if k == "n" else f"{r[k]:.3f}" for k, _ in columns) + " |" for r in rows]
    note = (f"gap = held-out NLL minus the exact entropy ({entropy_bpd:.4f} bits/dim)" if entropy_bpd is not None else
            "held-out NLL in bits/dim on the 256-level scale (no exact density)")
    return "\n".join([f"`{command}`", "", f"log p differences in dB/dim (10 log10 p / d); {note}", "", head, rule,
                      *body, ""])


# -----------------------------------------------------------------------------
if __name__ == "__main__":
    cfg = configure(dict(
        ns=(1, 10, 100, 1000, 10000),     # training set sizes N (each of A and B), trained in this order
        out="results/cpu/strong_gen",     # strong_gen.json, strong_gen.md and fig2.png/.pdf/.json
        work_dir="/tmp/strong_gen",       # datasets and training runs (checkpoints)
        workers=2,                        # trainings run at once, one process each
        report_only=False,                # skip data and training: evaluate the runs already in work_dir
        seed=0,                           # seeds the three draws of fields; model A trains with seed, B with seed + 1
        data="grf",                       # "grf": the warped GRF (exact log p); "patches": photograph patches
        patches_dir="",                   # --data=patches: folder of data/patches/prepare.py; "" = work_dir/patches
        # data: the warped GRF of data/grf/prepare.py
        size=16,                          # field side n (pixels); d = n^2 (--data=patches: the patch side)
        alpha=2.5,                        # spectral slope of the field
        k0=2.0,                           # spectral knee (cycles per image)
        mean=0.5,                         # mean pixel value
        amplitude=0.15,                   # standard deviation of the unwarped field
        warp=1.0,                         # pointwise warp (0 = Gaussian field)
        n_heldout=2000,                   # held-out fields: every model's val.npy, its constant c, held-out metrics
        # training: train.py with these keys, the same for every N
        max_steps=4000,                   # optimizer steps of every model
        batch_size=32,                    # images per step (N < batch_size: the N fields repeat in the batch)
        lr=1e-3,                          # Adam learning rate at step 0
        lr_halve_every=1600,              # steps between halvings of the learning rate
        base_width=16,                    # UNet channels at the finest scale
        num_scales=2,                     # UNet scales
        layers_per_block=2,               # convs per UNet block
        emb_dim=64,                       # width of the noise-conditioning MLP
        flip=False,                       # random flips (False: a model sees exactly its N fields)
        train_args="",                    # more train.py overrides, space-separated (e.g. "--energy_bound=None")
        # evaluation
        eval_images=1000,                 # fields per set scored (a training set: min(N, this); held-out: this)
        const_images=1000,                # held-out fields for each model's constant c
        n_draws=2,                        # noise draws per field for c
        t_max=1e3,                        # noise variance at which c is fixed (docs/method.md §5)
        eval_batch_size=500,              # fields per forward pass
    ), doc=__doc__)
    require(len(cfg["ns"]) >= 1 and min(cfg["ns"]) >= 1, f"--ns={cfg['ns']}: need training set sizes >= 1, e.g. --ns=1,10,100")
    require(cfg["workers"] >= 1, f"--workers={cfg['workers']}: need at least 1 training process")
    require(cfg["n_heldout"] >= 2 and cfg["eval_images"] >= 1 and cfg["const_images"] >= 1,
            f"need --n_heldout >= 2, --eval_images >= 1, --const_images >= 1; got {cfg['n_heldout']}, "
            f"{cfg['eval_images']}, {cfg['const_images']}")
    require(cfg["data"] in ("grf", "patches"), f"--data={cfg['data']}: must be grf or patches")
    require(cfg["warp"] >= 0, f"--warp={cfg['warp']}: must be >= 0 (0 = the Gaussian field)")
    require(cfg["size"] % 2 ** cfg["num_scales"] == 0,
            f"--size={cfg['size']} is not divisible by 2^num_scales = {2 ** cfg['num_scales']}; change one of them")
    try:
        lam = grf_eigenvalues(cfg["size"], cfg["alpha"], cfg["k0"], cfg["amplitude"])
    except ValueError as e:
        fail(str(e))
    torch.set_num_threads(1)
    command = "python toy/strong_gen.py " + " ".join(sys.argv[1:])
    d = cfg["size"] ** 2
    grf = cfg["data"] == "grf"
    entropy_bpd = (grf_entropy(lam) + warp_entropy_shift(cfg["warp"], d)) / (d * math.log(2)) if grf else None
    ns = sorted(set(cfg["ns"]))
    pool_a, pool_b, heldout = make_data(cfg, lam) if grf else make_patch_data(cfg)
    run = lambda n, side: os.path.join(cfg["work_dir"], f"N{n}_{side}")
    t0 = time.time()
    if not cfg["report_only"]:
        jobs = []
        for n in dict.fromkeys(cfg["ns"]):
            for side, pool, seed in (("A", pool_a, cfg["seed"]), ("B", pool_b, cfg["seed"] + 1)):
                data_dir = os.path.join(cfg["work_dir"], "data", f"N{n}_{side}")
                write_training_set(data_dir, pool[:n], os.path.join(cfg["work_dir"], "data", "heldout.npy"))
                jobs.append((f"N={n} {side}", train_command(cfg, data_dir, run(n, side), seed), run(n, side)))
        print(f"{len(jobs)} trainings of {cfg['max_steps']} steps, {cfg['workers']} at a time; outputs in "
              f"{cfg['work_dir']}/N*_*/train.out", flush=True)
        failed = run_trainings(jobs, cfg["workers"], len(jobs) * cfg["max_steps"])
        require(not failed, "training failed: " + "; ".join(failed))
    heldout_eval = np.array(heldout[:cfg["eval_images"]])
    l_true, extra = None, {}
    if grf:
        y = torch.from_numpy(heldout_eval[..., 0]).double()                               # (n, size, size)
        l_true = DB_PER_NAT * warped_grf_logp(y, lam, cfg["mean"], cfg["amplitude"], cfg["warp"]).numpy() / d
    else:                                                 # disjoint as patches; equal pixel values can still recur
        extra = dict(shared_pools=shared_count(pool_b, pool_a),
                     shared_heldout=shared_count(heldout, np.concatenate([pool_a, pool_b])))
    rows, panels = [], []
    for n in ns:
        ckpts = [os.path.join(run(n, side), "ckpt.pt") for side in ("A", "B")]
        missing = [p for p in ckpts if not os.path.exists(p)]
        if missing:
            fail(f"no checkpoint {missing[0]}: train first (run without --report_only)")
        k = min(n, cfg["eval_images"])
        sets = dict(A=np.asarray(pool_a[:k]), B=np.asarray(pool_b[:k]), H=heldout_eval)
        metrics, la, lb = evaluate_pair(cfg, ckpts, sets, l_true, entropy_bpd, seeded(cfg["seed"], 10 + n))
        rows.append(dict(n=n, **metrics))
        panels.append(dict(n_train=n, logp_a=np.concatenate([la["A"], la["B"]]), logp_b=np.concatenate([lb["A"], lb["B"]]),
                           n_a=k, heldout_a=la["H"], heldout_b=lb["H"], **metrics))
        side_a, side_b = ("gap_a", "gap_b") if grf else ("nll_a", "nll_b")
        print(f"N={n}: RMS A-B held-out {metrics['rms_heldout']:.3f} dB/dim, own - held-out "
              f"{metrics['own_vs_heldout']:.3f}, own - other {metrics['own_vs_other']:.3f}, {side_a[:-2]} A "
              f"{metrics[side_a]:.3f} B {metrics[side_b]:.3f} bits/dim", flush=True)
    os.makedirs(cfg["out"], exist_ok=True)
    result = dict(command=command, config=cfg, d=d, entropy_bpd=entropy_bpd, **extra,
                  true_logp_heldout_db=float(l_true.mean()) if grf else None, rows=rows, eval_seconds=time.time() - t0)
    with open(os.path.join(cfg["out"], "strong_gen.json"), "w") as fh:
        json.dump(result, fh, indent=1)
    with open(os.path.join(cfg["out"], "strong_gen.md"), "w") as fh:
        fh.write(markdown_table(rows, entropy_bpd, command))
    fig2_panels(panels, cfg["out"], entropy_bpd, curves=FIG2_CURVES if grf else PATCH_CURVES)
    print(markdown_table(rows, entropy_bpd, command))
