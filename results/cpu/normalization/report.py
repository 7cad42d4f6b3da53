"""The tables of docs/normalization.md §5 from the result files that run.sh copies into results/cpu/normalization/.

    python results/cpu/normalization/report.py        # prints markdown
"""
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load(run, name):
    path = os.path.join(HERE, run, name)
    return json.load(open(path)) if os.path.isfile(path) else None


def fmt(v, pattern=".3f"):
    return "n/a" if v is None else format(v, pattern)


print("| run | one-pass NLL | certified NLL (AIS, S levels) | one-pass - certified | ESS / chains | "
      "certified NLL (2S levels) | MALA acc. min |")
print("|---|---|---|---|---|---|---|")
for run in ("grf_old", "grf_new", "grf_pen", "patches_old", "patches_new", "patches_new_b025", "patches_pen"):
    a, b = load(run, "ais128.json"), load(run, "ais256.json")
    e = a or load(run, "eval.json")
    if e is None:
        continue
    cert = f"{a['ais_nll_bpd']:.4f} +- {a['ais_nll_bpd_se']:.4f}" if a and "ais_nll_bpd" in a else "n/a"
    delta = f"{a['ais_delta_bpd']:+.4f} +- {a['ais_delta_bpd_se']:.4f}" if a and "ais_delta_bpd" in a else "n/a"
    ess = f"{a['ais_ess']:.1f} / {a['ais_chains']}" if a and "ais_ess" in a else "n/a"
    cert2 = f"{b['ais_nll_bpd']:.4f} +- {b['ais_nll_bpd_se']:.4f}" if b and "ais_nll_bpd" in b else "n/a"
    acc = fmt(a.get("ais_acceptance_min"), ".2f") if a else "n/a"
    print(f"| {run} | {e['nll_bpd']:.4f} +- {e['nll_bpd_stderr']:.4f} | {cert} | {delta} | {ess} | {cert2} | {acc} |")

print()
print("| run | shift -16 | shift +16 | contrast x64 | noise std 16 | direction +16 | at t = 1e3: shift +16 |")
print("|---|---|---|---|---|---|---|")
for run in ("grf_old", "grf_new", "grf_pen", "patches_old", "patches_new", "patches_new_b025", "patches_pen"):
    p = load(run, "probes.json")
    if p is None:
        continue
    for who in ("model", "gaussian"):
        if who not in p:
            continue
        r = p[who]

        def rise(name, amount, key="t=0"):
            a = r[name]["amounts"]
            base = a.index(1 if name == "contrast" else 0)        # the unmoved images
            return r[name][key][a.index(amount)] - r[name][key][base]
        print(f"| {run} ({who}) | {rise('shift', -16):+.2f} | {rise('shift', 16):+.2f} | {rise('contrast', 64):+.2f} | "
              f"{rise('noise', 16):+.2f} | {rise('direction', 16):+.2f} | {rise('shift', 16, 't=1000'):+.3f} |")

print()
print("| run | log p samples (dB/dim) | log p validation | pixel mean / std samples | validation | exact NLL of samples | entropy |")
print("|---|---|---|---|---|---|---|")
for run in ("grf_old", "grf_new", "grf_pen", "patches_old", "patches_new", "patches_new_b025", "patches_pen"):
    s = load(run, "samples.json")
    if s is None or "check" not in s:
        continue
    k = s["check"]
    exact = f"{k['samples_exact_nll_bpd']:.3f} +- {k['samples_exact_nll_bpd_se']:.3f}" if "samples_exact_nll_bpd" in k else "-"
    ent = f"{k['exact_entropy_bpd']:.4f}" if "exact_entropy_bpd" in k else "-"
    print(f"| {run} | {k['samples_logp_db_per_dim']:.3f} | {k['val_logp_db_per_dim']:.3f} | "
          f"{k['samples_pixel_mean']:.3f} / {k['samples_pixel_std']:.3f} | {k['val_pixel_mean']:.3f} / {k['val_pixel_std']:.3f} | "
          f"{exact} | {ent} |")

print()
print("| run | denoised PSNR (dB) at input 90 75 60 45 30 15 0 -15 -30 |")
print("|---|---|")
for run in ("patches_old", "patches_new", "patches_new_b025", "patches_pen", "grf_old", "grf_new", "grf_pen"):
    e = load(run, "ais128.json") or load(run, "ais1024.json") or load(run, "eval.json")
    if e and "psnr" in e:
        print(f"| {run} | " + " ".join(f"{v:.2f}" for v in e["psnr"]["energy"]) + " |")

print()
print("| run | one-pass NLL | IS: log Z(0) - log Z_G (nats), ESS / draws | min / max R on the draws | certified NLL (IS) | "
      "AIS 1024 levels: log Z(0) - log Z_G, ESS / chains |")
print("|---|---|---|---|---|---|")
for run, name in (("patches_new", "is_check_20000.json"), ("patches_new_b025", "is_check_20000.json"), ("patches_pen", "is_check.json")):
    i, a = load(run, name), load(run, "ais1024.json")
    if i is None or a is None:
        continue
    d = a["d"]
    nll_is = a["nll_bpd"] - (a["log_norm_const"] - i["log_z"]) / (d * math.log(2))
    print(f"| {run} | {a['nll_bpd']:.3f} +- {a['nll_bpd_stderr']:.3f} | {i['log_z_minus_log_z_gaussian']:+.1f}, {i['ess']:.0f} / {i['n']} | "
          f"{i['R_min']:.0f} / {i['R_max']:.0f} | {nll_is:.3f} | {a['ais_log_z'] - a['ais_log_z_reference']:+.1f}, {a['ais_ess']:.1f} / {a['ais_chains']} |")
