"""Tables and figures of the README "results" section, from the small files under results/cpu/.

    python results/cpu/report.py          # -> results/cpu/summary.json, results/cpu/grf/nll_vs_steps.png

Reads what results/cpu/run.sh copied there (log.jsonl and results.json of each run, baseline.json,
fig2.json); prints the tables in Markdown. Missing pieces are skipped with a note.
"""
import json
import os

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROOT = os.path.dirname(os.path.abspath(__file__))


def load(*path):
    p = os.path.join(ROOT, *path)
    if not os.path.exists(p):
        print(f"(missing {os.path.relpath(p)})")
        return None
    with open(p) as f:
        return json.load(f)


def evals(*path):
    """[(step, eval dict)] from the eval records of a train.py log.jsonl."""
    p = os.path.join(ROOT, *path)
    if not os.path.exists(p):
        print(f"(missing {os.path.relpath(p)})")
        return []
    with open(p) as f:
        records = [json.loads(line) for line in f]
    return [(r["step"], r["eval"]) for r in records if "eval" in r]


summary = {}

# ----------------------------------------------------------------------------- GRF: NLL against the exact entropy
meta = load("grf", "meta.json")
if meta:
    H = meta["entropy_bits_per_dim"]
    base = load("grf", "baseline.json")
    summary["grf"] = dict(entropy_bpd=H, gaussian_baseline_bpd=base and base["nll_bpd"])
    print(f"\nGRF 16x16: exact entropy {H:.4f} bits/dim; Gaussian fit {base['nll_bpd']:.4f} +- {base['nll_bpd_stderr']:.4f}")
    print("| run | step | NLL (bits/dim) | gap to exact (bits/dim) |\n|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(5, 3.5), layout="constrained")
    for run, label in (("grf_dual", "dual SM"), ("grf_single", "single SM"),
                       ("isotropic_grf_dual", "dual SM, isotropic term"), ("isotropic_grf_single", "single SM, isotropic term")):
        ev = evals("grf", run, "log.jsonl")
        final = load("grf", run, "results.json")
        rows = [dict(step=s, nll_bpd=e["nll_bpd"], gap_bpd=e["nll_bpd"] - H) for s, e in ev]
        for r in rows:
            print(f"| {label} (train.py eval, 256 val) | {r['step']} | {r['nll_bpd']:.4f} | {r['gap_bpd']:+.4f} |")
        if final:
            print(f"| {label} (eval.py, {final['n_images']} val) | {final['checkpoint_step']} | "
                  f"{final['nll_bpd']:.4f} +- {final['nll_bpd_stderr']:.4f} | {final['nll_bpd'] - H:+.4f} |")
        if final and "ode" in final:
            o = final["ode"]
            print(f"| {label} (probability-flow ODE, {o['n_images']} val) | {final['checkpoint_step']} | "
                  f"{o['nll_bpd']:.4f} +- {o['nll_bpd_stderr']:.4f} | {o['nll_bpd'] - H:+.4f} |")
        summary["grf"][run] = dict(by_step=rows, final=final and dict(
            step=final["checkpoint_step"], nll_bpd=final["nll_bpd"], nll_bpd_stderr=final["nll_bpd_stderr"],
            gap_bpd=final["nll_bpd"] - H))
        if rows and not run.startswith("isotropic"):
            ax.plot([r["step"] for r in rows], [abs(r["gap_bpd"]) for r in rows], "o-", label=label)
    if base:
        ax.axhline(abs(base["nll_bpd"] - H), color="gray", ls=":", label="Gaussian fit (baseline.py)")
    ax.set_yscale("log")
    ax.set_xlabel("training step (batch 32)")
    ax.set_ylabel("|NLL - exact entropy| (bits/dim)")
    ax.set_title("16x16 GRF: distance to the exact NLL", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(os.path.join(ROOT, "grf", "nll_vs_steps.png"), dpi=120)

# ----------------------------------------------------------------------------- warped GRF: non-Gaussian, exact entropy
meta = load("grf_warp", "meta.json")
if meta:
    H = meta["entropy_bits_per_dim"]
    base = load("grf_warp", "baseline.json")
    summary["grf_warp"] = dict(entropy_bpd=H, gaussian_baseline_bpd=base and base["nll_bpd"])
    print(f"\nwarped GRF (warp {meta['warp']}): exact entropy {H:.4f} bits/dim; Gaussian fit "
          f"{base['nll_bpd']:.4f} +- {base['nll_bpd_stderr']:.4f} (gap {base['nll_bpd'] - H:+.4f})")
    print("| run | NLL by step (train.py, 256 val) | final NLL (eval.py, all val) | gap to exact |\n|---|---|---|---|")
    for run in ("warp_dual", "warp_single", "warp_dual_iso", "warp_dual_4800", "warp_single_4800"):
        ev, final = evals("grf_warp", run, "log.jsonl"), load("grf_warp", run, "results.json")
        if final:
            by_step = ", ".join(f"{s}: {e['nll_bpd']:.3f}" for s, e in ev)
            print(f"| {run} | {by_step} | {final['nll_bpd']:.4f} +- {final['nll_bpd_stderr']:.4f} | {final['nll_bpd'] - H:+.4f} |")
            summary["grf_warp"][run] = dict(by_step=[(s, e["nll_bpd"]) for s, e in ev], nll_bpd=final["nll_bpd"],
                                            nll_bpd_stderr=final["nll_bpd_stderr"], gap_bpd=final["nll_bpd"] - H)

# ----------------------------------------------------------------------------- patches: NLL and Table 1
base = load("patches", "baseline.json")
if base:
    summary["patches"] = dict(gaussian_baseline_bpd=base["nll_bpd"], gaussian_baseline_stderr=base["nll_bpd_stderr"])
    print(f"\npatches: Gaussian baseline {base['nll_bpd']:.4f} +- {base['nll_bpd_stderr']:.4f} bits/dim "
          f"({base['n_images']} val)")
    print("| model | steps | val NLL (bits/dim) | minus Gaussian baseline (paired per image) |\n|---|---|---|---|")
    for run in ("patches_dual", "patches_single", "patches_dual_long", "patches_single_long", "patches_dual_4800",
                "patches_single_4800", "isotropic_patches_dual",
                "isotropic_patches_single", "isotropic_patches_dual_long", "isotropic_patches_single_long"):
        r, paired = load("patches", run, "results.json"), load("patches", run, "baseline.json")
        if r and paired:
            m = paired["model"]
            print(f"| {run} | {r['checkpoint_step']} | {r['nll_bpd']:.4f} +- {r['nll_bpd_stderr']:.4f} | "
                  f"{m['minus_baseline_bpd']:+.4f} +- {m['minus_baseline_bpd_stderr']:.4f} |")
            summary["patches"][run] = dict(step=r["checkpoint_step"], nll_bpd=r["nll_bpd"],
                                           nll_bpd_stderr=r["nll_bpd_stderr"], n_images=r["n_images"],
                                           minus_baseline_bpd=m["minus_baseline_bpd"],
                                           minus_baseline_bpd_stderr=m["minus_baseline_bpd_stderr"], psnr=r.get("psnr"))
    for run in ("patches_dual", "patches_dual_long"):                    # the probability-flow ODE check
        ode = load("patches", run + "_ode", "results.json")
        if ode and "ode" in ode:
            o = ode["ode"]
            print(f"{run}: probability-flow ODE NLL {o['nll_bpd']:.4f} +- {o['nll_bpd_stderr']:.4f} on {o['n_images']} "
                  f"val patches; one-pass on the same patches {o['onepass_nll_bpd']:.4f} (ODE - one-pass "
                  f"{o['minus_onepass_bpd']:+.4f} +- {o['minus_onepass_bpd_stderr']:.4f})")
            summary["patches"][run + "_ode"] = o
    pairs = {"patches_dual": "energy 600 steps vs denoiser 600 steps",
             "patches_dual_long": "energy 1500 steps vs denoiser 1500 steps"}
    for run, title in pairs.items():
        r = load("patches", run, "results.json")
        if r and "psnr" in r and "denoiser" in r["psnr"]:
            p = r["psnr"]
            print(f"\nTable 1 at CPU scale ({title}, {p['n_images']} val patches), output PSNR (dB):")
            print("| input PSNR | " + " | ".join(f"{v:g}" for v in p["psnr_in"]) + " |")
            print("|---" * (len(p["psnr_in"]) + 1) + "|")
            print("| denoiser | " + " | ".join(f"{v:.2f}" for v in p["denoiser"]) + " |")
            print("| energy | " + " | ".join(f"{v:.2f}" for v in p["energy"]) + " |")

# ----------------------------------------------------------------------------- strong generalization
# toy/strong_gen.py writes its own table (strong_gen/strong_gen.md); the summary keeps its JSON
sg = load("strong_gen", "strong_gen.json")
if sg:
    summary["strong_generalization"] = sg
    print("\nstrong generalization: see results/cpu/strong_gen/strong_gen.md")

with open(os.path.join(ROOT, "summary.json"), "w") as f:
    json.dump(summary, f, indent=1)
print(f"\nwrote {os.path.relpath(os.path.join(ROOT, 'summary.json'))}")
