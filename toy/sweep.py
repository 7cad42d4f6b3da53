"""The toy of Fig. 1 on a grid of Gaussian scale mixtures x seeds, both recipes (docs/toy.md, "Sweep").

    nice -n 10 python toy/sweep.py --workers=1            # the grid of docs/toy.md -> results/toy/sweep/
    python toy/sweep.py --ds=100 --seeds=0 --recipes=ours --out=out/sweep_small      # a quick look
    python toy/sweep.py --report_only=True                # table + figure from results/toy/sweep/jobs/

Every cell is one mixture (d, sigmas, weights) and one seed, trained as in toy/gaussian_mixture.py
(single and dual SM from the same data, noise and initialization, the same evaluation). Runs of the
same recipe and number of components are trained side by side in one batched MLP (toy/gaussian_mixture.py,
fit): each run keeps its own weights, Adam state, data and noise, so a cell's numbers do not depend
on which runs share its batch beyond floating-point rounding. Batches go to --workers processes;
each finished batch is written to OUT/jobs/ at once and skipped when the sweep is run again, so an
interrupted sweep resumes. Writes OUT/sweep.json, OUT/sweep.md and OUT/sweep.png.
"""
import json
import math
import multiprocessing
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from configurator import configure, require
from toy import gaussian_mixture as gm

TARGET_DB = 0.1                 # dual SM, our recipe: max |log p - log p*| on the support, every cell
SWITCH_TOL = 0.05               # |switch radius - truth|, two-component mixtures
FLOOR_DB = 1e-4                 # the figure's lowest error (the results round to 4 decimals)


def grid(cfg):
    """[(d, sigmas, weights)]: every d x sigma set x weight set with as many components."""
    weight_sets = {2: [(0.5, 0.5), tuple(cfg["weights2"])], 3: [(1 / 3, 1 / 3, 1 / 3), tuple(cfg["weights3"])]}
    mixtures = []
    for d in cfg["ds"]:
        for sigmas in cfg["sigma_sets"].split(";"):
            sig = tuple(float(s) for s in sigmas.split(","))
            for w in weight_sets[len(sig)]:
                mixtures.append((int(d), sig, tuple(w)))
    return mixtures


def paper_cells(cfg):
    """[(d, sigmas, weights)] of --paper_cells, "d:sigmas:weights" separated by ;."""
    cells = []
    for item in cfg["paper_cells"].split(";"):
        if item.strip():
            d, s, w = item.split(":")
            cells.append((int(d), tuple(float(v) for v in s.split(",")), tuple(float(v) for v in w.split(","))))
    return cells


def jobs(cfg):
    """Batches of runs: (name, recipe, [runs]), at most batch_cells cells (2 runs each) per batch."""
    out = []
    for recipe in cfg["recipes"]:
        seeds = cfg["seeds"] if recipe == "ours" else cfg["paper_seeds"]
        mixtures = grid(cfg) if recipe == "ours" else paper_cells(cfg)
        for K in (2, 3):
            for small in (False, True):             # recipe ours trains d < 100 longer (gm.ours_steps)
                cells = [(d, s, w, seed) for d, s, w in mixtures if len(s) == K and (d < 100) == small for seed in seeds]
                size = cfg["batch_cells"] if recipe == "ours" else 1          # recipe paper: one cell per batch
                for i in range(0, len(cells), size):
                    chunk = cells[i: i + size]
                    methods = ("single", "dual") if recipe == "ours" else cfg["paper_methods"]
                    runs = [gm.make_run(d, s, w, seed, m) for d, s, w, seed in chunk for m in methods]
                    if recipe == "ours":
                        name = f"ours_K{K}_{'small_d_' if small else ''}{i // size:02d}"
                    else:                                                    # named by its cell and methods
                        d, s, w, seed = chunk[0]
                        name = (f"paper_d{d}_s{'-'.join(f'{v:g}' for v in s)}_w{'-'.join(f'{v:g}' for v in w)}"
                                f"_seed{seed}_{'-'.join(methods)}")
                    out.append((name, recipe, runs))
    return out


def train_cfg(cfg, recipe, d=1000):
    """The toy's config of one recipe at dimension d (its defaults, then the sweep's shared keys)."""
    keys = dict(recipe=recipe, param=None, width=None, depth=None, steps=None, lr=None, schedule=None,
                lr_halving=None, time_warmup=None, t_max=None)
    steps = cfg["steps"] if recipe == "ours" else cfg["paper_steps"]
    if steps is not None:
        keys["steps"] = steps
    shared = {k: cfg[k] for k in ("time_weight", "n_data", "batch_size", "t_min", "t_eval", "n_norm", "log_every")}
    return gm.with_recipe({**keys, **shared}, d)


def run_job(job):
    """Train and evaluate one batch; write OUT/jobs/<name>.json. Returns its path."""
    name, recipe, runs, cfg = job
    torch.set_num_threads(1)
    tcfg = train_cfg(cfg, recipe, min(r["d"] for r in runs))
    t0, c0 = time.time(), time.process_time()
    model, data, d = gm.fit(runs, tcfg, log=lambda s: print(f"[{name}] {s}", flush=True), name=f"{len(runs)} runs")
    evals, _ = gm.evaluate(model, data, d, runs, tcfg)
    seconds = time.time() - t0
    path = os.path.join(cfg["out"], "jobs", f"{name}.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(name=name, recipe=recipe, config=tcfg, seconds=round(seconds, 1),
                       cpu_seconds=round(time.process_time() - c0, 1), runs=runs, evals=evals), f)
    os.replace(path + ".tmp", path)
    print(f"[{name}] done: {len(runs)} runs in {seconds:.0f} s", flush=True)
    return path


def collect(cfg):
    """{(recipe, d, sigmas, weights): {seed: {method: eval}}} from every OUT/jobs/*.json, and the jobs."""
    cells, records = {}, []
    folder = os.path.join(cfg["out"], "jobs")
    for fname in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        if not fname.endswith(".json"):
            continue
        with open(os.path.join(folder, fname)) as f:
            rec = json.load(f)
        records.append(rec)
        for run, ev in zip(rec["runs"], rec["evals"]):
            key = (rec["recipe"], run["d"], tuple(run["sigmas"]), tuple(run["weights"]))
            cells.setdefault(key, {}).setdefault(run["seed"], {})[run["method"]] = ev
    return cells, records


def fmt_mix(sigmas, weights):
    return f"{','.join(f'{s:g}' for s in sigmas)} | {','.join(f'{w:.2g}' for w in weights)}"


def report(cfg):
    """OUT/sweep.json (every cell and seed), OUT/sweep.md (one row per mixture and recipe), OUT/sweep.png."""
    cells, records = collect(cfg)
    require(cells, f"no finished batches in {cfg['out']}/jobs: run the sweep first")
    rows, flat = [], []
    for (recipe, d, sigmas, weights), seeds in sorted(cells.items(), key=lambda kv: (kv[0][0] != "ours", len(kv[0][2]),
                                                                                       kv[0][2], kv[0][3], kv[0][1])):
        per_seed = []
        for seed, m in sorted(seeds.items()):
            if "single" not in m:                   # a recipe run for dual SM only
                m = {**m, "single": {"model": {"max_err_support_db": float("nan")}, "refit": {"max_err_support_db": float("nan")}}}
            dual, single = m["dual"]["model"], m["single"]["model"]
            truth_r = m["dual"]["truth_switch_radius"]
            entry = dict(recipe=recipe, d=d, sigmas=list(sigmas), weights=list(weights), seed=seed,
                         dual_max_db=dual["max_err_support_db"], dual_rms_db=dual["rms_err_support_db"],
                         single_max_db=single["max_err_support_db"],
                         single_refit_max_db=m["single"]["refit"]["max_err_support_db"],
                         ratio=single["max_err_support_db"] / max(dual["max_err_support_db"], 1e-12),
                         dual_switch=dual["switch_radius"], truth_switch=truth_r,
                         min_precision_dual=m["dual"]["min_precision"], truth_log_norm_const=m["dual"]["truth_log_norm_const"])
            entry["switch_ok"] = (len(sigmas) != 2 or (dual["switch_radius"] is not None and truth_r is not None
                                                        and abs(dual["switch_radius"] - truth_r) <= SWITCH_TOL))
            per_seed.append(entry)
            flat.append(entry)
        worst = lambda k: max(e[k] for e in per_seed)
        rows.append(dict(recipe=recipe, d=d, sigmas=sigmas, weights=weights, seeds=[e["seed"] for e in per_seed],
                         dual=worst("dual_max_db"), single=min(e["single_max_db"] for e in per_seed),
                         refit=min(e["single_refit_max_db"] for e in per_seed), ratio=min(e["ratio"] for e in per_seed),
                         switch=[e["dual_switch"] for e in per_seed], truth_switch=per_seed[0]["truth_switch"],
                         switch_ok=all(e["switch_ok"] for e in per_seed),
                         min_a=min(e["min_precision_dual"] for e in per_seed)))
    ours = [e for e in flat if e["recipe"] == "ours"]
    summary = dict(
        target_db=TARGET_DB, switch_tol=SWITCH_TOL,
        ours_cells=len(ours), ours_dual_max_db=max((e["dual_max_db"] for e in ours), default=None),
        ours_dual_below_target=sum(e["dual_max_db"] <= TARGET_DB for e in ours),
        ours_switch_ok=sum(e["switch_ok"] for e in ours),
        ours_ratio_min=min((e["ratio"] for e in ours), default=None),
        ours_ratio_at_least_10=sum(e["ratio"] >= 10 for e in ours),
        wall_seconds_sum_of_batches=round(sum(r["seconds"] for r in records), 1),
        batches={r["name"]: dict(runs=len(r["runs"]), seconds=r["seconds"], steps=r["config"]["steps"]) for r in records},
    )
    nan_to_none = lambda e: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in e.items()}
    with open(os.path.join(cfg["out"], "sweep.json"), "w") as f:
        json.dump(dict(summary=summary, cells=[nan_to_none(e) for e in flat]), f, indent=1)
    lines = ["| recipe | d | sigmas | weights | seeds | dual max err (worst seed) | single max err (best seed) | "
             "single / dual (min) | single re-fitted (best seed) | dual switch r per seed (truth) | min a_k (dual) |",
             "| --- | ---: | --- | --- | --- | ---: | ---: | ---: | ---: | --- | ---: |"]
    for r in rows:
        sw = "—" if r["truth_switch"] is None or len(r["sigmas"]) != 2 else \
            f"{', '.join('none' if s is None else f'{s:.3f}' for s in r['switch'])} ({r['truth_switch']:.3f})" + \
            ("" if r["switch_ok"] else " **off**")
        flag = "" if r["dual"] <= TARGET_DB else " **>0.1**"
        ran = not math.isnan(r["single"])                   # recipe paper may run dual SM only
        single = f"{r['single']:.2f} | {r['ratio']:.0f}x | {r['refit']:.3f}" if ran else "not run | — | not run"
        lines.append(f"| {r['recipe']} | {r['d']} | {fmt_mix(r['sigmas'], r['weights'])} | {','.join(map(str, r['seeds']))} "
                     f"| {r['dual']:.3f}{flag} | {single} | {sw} | {r['min_a']:.2g} |")
    steps = {rec: sorted({r["config"]["steps"] for r in records if r["recipe"] == rec}) for rec in ("ours", "paper")}
    head = (f"Errors: max |log p - log p*| on the support (radii within 10% of a sigma), dB/dim, at t = {cfg['t_eval']}; "
            f"single / dual: the smallest ratio over seeds. Steps per method: ours {steps['ours']}, paper {steps['paper']}. "
            f"Sum of batch wall times {summary['wall_seconds_sum_of_batches']} s.\n")
    with open(os.path.join(cfg["out"], "sweep.md"), "w") as f:
        f.write(head + "\n" + "\n".join(lines) + "\n")
    figure(flat, os.path.join(cfg["out"], "sweep.png"))
    print(head + "\n".join(lines))
    print(json.dumps({k: v for k, v in summary.items() if k != "batches"}))
    return summary


def figure(flat, path):
    """Dual and single SM error per cell (one point per seed), both recipes, log scale."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mixtures = sorted({(len(e["sigmas"]), tuple(e["sigmas"]), tuple(e["weights"]), e["d"]) for e in flat})
    index = {m: i for i, m in enumerate(mixtures)}
    fig, ax = plt.subplots(figsize=(max(8, 0.45 * len(mixtures) + 3), 5.5))
    styles = [("ours", "dual_max_db", "tab:blue", "o", "dual SM, ours"), ("ours", "single_max_db", "tab:red", "x", "single SM, ours"),
              ("ours", "single_refit_max_db", "tab:orange", "+", "single SM re-fitted, ours"),
              ("paper", "dual_max_db", "tab:cyan", "s", "dual SM, paper recipe"),
              ("paper", "single_max_db", "tab:pink", "D", "single SM, paper recipe")]
    for recipe, key, color, marker, label in styles:
        pts = [(index[(len(e["sigmas"]), tuple(e["sigmas"]), tuple(e["weights"]), e["d"])] + 0.08 * (e["seed"] - 1),
                max(e[key], FLOOR_DB)) for e in flat if e["recipe"] == recipe]
        if pts:
            ax.scatter(*zip(*pts), color=color, marker=marker, s=22, label=label, alpha=0.85, zorder=3)
    ax.axhline(TARGET_DB, color="k", ls="--", lw=1, label="target 0.1 dB/dim")
    ax.set_yscale("log")
    ax.set_xticks(range(len(mixtures)))
    weights = lambda w: "equal" if max(w) - min(w) < 1e-9 else ",".join(f"{v:.2g}" for v in w)
    ax.set_xticklabels([f"d={m[3]}\n{','.join(f'{s:g}' for s in m[1])}\n{weights(m[2])}" for m in mixtures], fontsize=6)
    ax.set_ylabel(f"max |log p - log p*| on the support [dB/dim]\n(below {FLOOR_DB:g}: drawn at {FLOOR_DB:g})")
    ax.set_title("Gaussian scale mixtures: error of the normalized log p per cell (points: seeds)")
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    cfg = configure(dict(
        recipes=("ours", "paper"),                  # recipes to run (toy/gaussian_mixture.py RECIPES)
        ds=(100, 1000, 3000),                       # dimensions
        sigma_sets="1,2;1,4;1,8;1,2,4",             # component stds, mixtures separated by ;
        weights2=(0.2, 0.8),                        # the unequal weights of two-component mixtures (equal ones always run)
        weights3=(0.2, 0.3, 0.5),                   # the unequal weights of three-component mixtures
        seeds=(0, 1, 2),                            # seeds, recipe ours
        paper_seeds=(0,),                           # seeds, recipe paper (its runs cost ~6x ours per step)
        paper_cells="1000:1,2:0.2,0.8;1000:1,4:0.5,0.5",  # mixtures of recipe paper, d:sigmas:weights separated by ;
        steps=None,                                 # steps per method of recipe ours (None: the recipe's)
        paper_steps=6000,                           # steps per method of recipe paper (None: its 20000)
        paper_methods=("dual",),                    # methods of recipe paper (single,dual doubles its cost)
        batch_cells=12,                             # cells (mixture x seed) trained side by side in one process
        workers=2,                                  # parallel processes
        time_weight=1.0,                            # weight of the time term in dual SM
        n_data=100000,                              # training samples per cell
        batch_size=512,                             # samples per step
        t_min=1e-2,                                 # smallest training noise variance
        t_eval=1e-2,                                # noise variance at which log p is compared
        n_norm=20000,                               # data samples for c and for the re-fit
        log_every=500,                              # steps between progress lines
        out="results/toy/sweep",                    # output folder
        report_only=False,                          # True: only rebuild the table and figure from OUT/jobs/
    ), argv, doc=__doc__, annotations={"paper_steps": int | None, "steps": int | None, "paper_methods": tuple[str, ...], "recipes": tuple[str, ...], "sigma_sets": str})
    require(set(cfg["recipes"]) <= set(gm.RECIPES), f"--recipes={','.join(cfg['recipes'])}: expected some of {', '.join(gm.RECIPES)}")
    try:
        mixtures = grid(cfg)
    except (ValueError, KeyError):
        mixtures = None
    require(mixtures is not None and all(len(s) in (2, 3) for _, s, _ in mixtures),
            f"--sigma_sets={cfg['sigma_sets']}: expected sets of 2 or 3 numbers separated by ; like 1,2;1,2,4")
    require(len(cfg["weights2"]) == 2 and len(cfg["weights3"]) == 3, "--weights2 needs 2 values and --weights3 3")
    for _, s, w in mixtures:
        gm.check_mixture(s, w)
    require(min(cfg["ds"]) >= 1, f"--ds={','.join(map(str, cfg['ds']))}: every d must be >= 1")
    try:
        extra = paper_cells(cfg)
    except ValueError:
        extra = None
    require(extra is not None and all(d >= 1 and len(s) in (2, 3) for d, s, _ in extra),
            f"--paper_cells={cfg['paper_cells']}: expected d:sigmas:weights separated by ; like 1000:1,4:0.5,0.5")
    for _, s, w in extra:
        gm.check_mixture(s, w)
    for key in ("steps", "paper_steps"):
        require(cfg[key] is None or cfg[key] >= 1, f"--{key}={cfg[key]}: must be >= 1 or None")
    require(cfg["batch_cells"] >= 1 and cfg["workers"] >= 1, "--batch_cells and --workers must be >= 1")
    require(cfg["paper_methods"] and set(cfg["paper_methods"]) <= {"single", "dual"},
            f"--paper_methods={','.join(cfg['paper_methods'])}: expected single, dual or single,dual")
    for recipe in cfg["recipes"]:
        gm.check_config(train_cfg(cfg, recipe))
    os.makedirs(os.path.join(cfg["out"], "jobs"), exist_ok=True)
    if not cfg["report_only"]:
        todo = [(name, recipe, runs, cfg) for name, recipe, runs in jobs(cfg)
                if not os.path.exists(os.path.join(cfg["out"], "jobs", f"{name}.json"))]
        n_runs = sum(len(j[2]) for j in todo)
        print(f"{len(todo)} batches ({n_runs} runs) to train on {cfg['workers']} worker(s); "
              f"finished batches in {cfg['out']}/jobs are kept", flush=True)
        t0 = time.time()
        if cfg["workers"] == 1:
            for i, job in enumerate(todo):
                run_job(job)
                el = time.time() - t0
                print(f"batch {i + 1}/{len(todo)} | {el:.0f} s elapsed, eta {el / (i + 1) * (len(todo) - i - 1):.0f} s", flush=True)
        else:
            with multiprocessing.get_context("spawn").Pool(cfg["workers"]) as pool:
                for i, _ in enumerate(pool.imap_unordered(run_job, todo)):
                    el = time.time() - t0
                    print(f"batch {i + 1}/{len(todo)} | {el:.0f} s elapsed, eta {el / (i + 1) * (len(todo) - i - 1):.0f} s", flush=True)
        print(f"sweep wall time {time.time() - t0:.0f} s", flush=True)
    return report(cfg)


if __name__ == "__main__":
    main()
