"""The tables of docs/normalization.md §6-§7 from the files that small/run.sh copies here.

    python results/cpu/normalization/small/report.py        # prints markdown

Certified NLL = mean U(x, 0) + log Z_hat(0) over all validation patches, with log Z_hat from AIS (eval.py,
--ais_steps S and 2S) or from importance sampling of the model's Gaussian at t = 0 (is_check.py). Each
estimate is low in expectation (Jensen), so each certified NLL is too; where two independent estimates and
the doubling agree within their standard errors with a healthy ESS, the number is trusted.
"""
import json
import math
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name):
    path = os.path.join(HERE, name)
    return json.load(open(path)) if os.path.isfile(path) else None


def certified(e, log_z):
    """NLL in bits/dim (+8 for uint8) of the model normalized by log_z, from eval.py's results e."""
    d = e["d"]
    mean_U0 = (e["nll_bpd"] - (8 if e["quantized"] else 0)) * d * math.log(2) - e["log_norm_const"]
    return (mean_U0 + log_z) / (d * math.log(2)) + (8 if e["quantized"] else 0)


def rise(p, name, amount):
    """-log p rise along a probe at t = 0 (bits/dim), from the unmoved images."""
    a = p["model"][name]["amounts"]
    base = a.index(1 if name == "contrast" else 0)
    return p["model"][name]["t=0"][a.index(amount)] - p["model"][name]["t=0"][base]


def row(run, levels):
    a, b = load(f"{run}.ais{levels[0]}.json"), load(f"{run}.ais{levels[1]}.json")
    i, p = load(f"{run}.is_check.json"), load(f"{run}.probes.json")
    if a is None:
        return None
    d, to_bpd = a["d"], 1 / (a["d"] * math.log(2))
    cells = [run, f"{a['nll_bpd']:.3f} +- {a['nll_bpd_stderr']:.3f}"]
    for r in (a, b):
        if r is None:
            cells.append("n/a")
            continue
        cells.append(f"{certified(r, r['ais_log_z']):.3f} +- {r['ais_log_z_se'] * to_bpd:.3f} ({r['ais_levels']} levels, "
                     f"ESS {r['ais_ess']:.0f}/{r['ais_chains']})")
    if i is not None:
        cells.append(f"{certified(a, i['log_z']):.3f} (ESS {i['ess']:.0f}/{i['n']})")
        cells.append(f"{(a['log_norm_const'] - i['log_z']) * to_bpd:+.3f}")
        cells.append(f"{i['R_min']:.0f}")
    else:
        cells += ["n/a", "n/a", "n/a"]
    cells.append(f"{rise(p, 'shift', 16):+.2f}" if p else "n/a")
    cells.append(" ".join(f"{v:.1f}" for v in a["psnr"]["energy"][3:]) if "psnr" in a else "n/a")
    return "| " + " | ".join(cells) + " |"


def main():
    for S in (4, 8):
        base, stat = load(f"baseline_p{S}.json"), load(f"stationary_gaussian_p{S}.json")
        if base and stat:
            print(f"\n{S}x{S} patches (d = {S * S}); Gaussians on all validation patches: full covariance "
                  f"{base['nll_bpd']:.3f}, stationary {stat['nll_bpd']:.3f}\n")
        levels = (1024, 2048)
        print(f"| run | one-pass NLL | certified, AIS S levels | certified, AIS 2S levels | "
              f"certified, IS | one-pass - certified (IS) | min R on the draws (nats) | shift +16 rise | PSNR at 45 30 15 0 -15 -30 dB |")
        print("|---|---|---|---|---|---|---|---|---|")
        runs = [f"p{S}_s{s}_w{w}" for s in (600, 3000) for w in (0, 1)]
        if S == 4:
            runs += ["p4_s600_w0_seed1", "p4_s600_w1_seed1", "p4_s600_w0_single", "p4_s600_w1_single"]
        if S == 8:
            runs += [f"p8_B{B}" for B in ("0.5", "0.25", "0.1")]          # B = 1.0 is p8_s600_w0
        for run in runs:
            r = row(run, (256, 1024) if "_B" in run else levels)
            if r:
                print(r)


if __name__ == "__main__":
    main()
