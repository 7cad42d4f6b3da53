"""toy/strong_gen.py (the paper's Fig. 2 on the warped GRF): the exact log p of the warped field, the
metrics against hand computations, and the driver end to end at a tiny setting."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "toy"))

from data.grf.prepare import grf_eigenvalues, grf_energy, grf_entropy, sample_grf, warp_entropy_shift, warp_field
from dataclasses import asdict

from dataset import stationary_spectrum
from model import EnergyUNet, UNetConfig, load_model
from strong_gen import DB_PER_BIT, evaluate_pair, make_patch_data, pair_metrics, seeded, truth_metrics, warped_grf_logp

DB_PER_NAT = 10 / math.log(10)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0])
def test_warped_logp_integrates_to_one(w):
    """One pixel (d = 1): the density exp(log p) integrates to 1 on a fine grid (trapezoid rule; the
    warped tails are heavy, so the grid spans +-100: the mass beyond is below 1e-12)."""
    lam = grf_eigenvalues(1, 2.5, 2.0, 0.15)                       # (1, 1), lambda = 0.15^2
    y = torch.linspace(0.5 - 100.0, 0.5 + 100.0, 2_000_001, dtype=torch.float64)
    p = warped_grf_logp(y.view(-1, 1, 1), lam, 0.5, 0.15, w).exp()
    assert abs(torch.trapezoid(p, y).item() - 1) < 1e-6


def test_warped_logp_is_gaussian_density_over_jacobian():
    """One pixel: log p(y) = log N(x; m, a^2) - log |dy/dx| with x = warp^-1(y), dy/dx by autograd."""
    lam, m, a, w = grf_eigenvalues(1, 2.5, 2.0, 0.15), 0.5, 0.15, 1.0
    x = torch.linspace(0.1, 0.9, 33, dtype=torch.float64, requires_grad=True)
    y = warp_field(x, m, a, w)
    (dy_dx,) = torch.autograd.grad(y.sum(), x)
    expected = -0.5 * ((x - m) / a) ** 2 - math.log(a * math.sqrt(2 * math.pi)) - dy_dx.log()
    got = warped_grf_logp(y.detach().view(-1, 1, 1), lam, m, a, w)
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-10)


def test_warped_logp_mean_is_minus_exact_entropy():
    """16x16 fields: the mean of -log p over samples matches the exact entropy (quadrature) within 4 standard errors."""
    lam, m, a, w = grf_eigenvalues(16, 2.5, 2.0, 0.15), 0.5, 0.15, 1.0
    y = warp_field(sample_grf(4000, lam, m, generator=torch.Generator().manual_seed(0)), m, a, w)
    nll = -warped_grf_logp(y, lam, m, a, w)
    H = grf_entropy(lam) + warp_entropy_shift(w, 256)
    assert abs(nll.mean().item() - H) < 4 * nll.std().item() / math.sqrt(len(nll))
    torch.testing.assert_close(warped_grf_logp(y, lam, m, a, 0.0), -grf_energy(y, 0.0, lam, m))   # w = 0: Gaussian


def test_pair_metrics_by_hand():
    la = dict(A=np.array([5.0, 3.0]), B=np.array([1.0, 1.0]), H=np.array([0.0, 2.0, 1.0]))
    lb = dict(A=np.array([2.0, 2.0]), B=np.array([4.0, 6.0]), H=np.array([1.0, 1.0, 1.0]))
    r = pair_metrics(la, lb)
    assert r["rms_heldout"] == pytest.approx(math.sqrt((1 + 1 + 0) / 3))
    assert r["mean_abs_heldout"] == pytest.approx(2 / 3)
    assert r["rms_train"] == pytest.approx(math.sqrt((9 + 1 + 9 + 25) / 4))
    assert r["mean_abs_train"] == pytest.approx((3 + 1 + 3 + 5) / 4)
    assert r["own_vs_heldout_a"] == pytest.approx(4.0 - 1.0)        # A on its set minus A on held-out
    assert r["own_vs_heldout_b"] == pytest.approx(5.0 - 1.0)
    assert r["own_vs_heldout"] == pytest.approx(3.5)
    # s.e.: var(A on A) = 2, var(A on H) = 1, var(B on B) = 2, var(B on H) = 0 (ddof 1), each over its count
    assert r["own_vs_heldout_se"] == pytest.approx(0.5 * math.sqrt(2 / 2 + 1 / 3 + 2 / 2 + 0 / 3))
    assert r["own_vs_other_a"] == pytest.approx(4.0 - 2.0)          # on set A: A minus B
    assert r["own_vs_other_b"] == pytest.approx(5.0 - 1.0)          # on set B: B minus A
    same = pair_metrics(la, la)                                     # two identical models
    assert same["rms_heldout"] == same["rms_train"] == same["own_vs_other"] == 0.0
    assert same["own_vs_heldout"] == pytest.approx(((4.0 - 1.0) + (1.0 - 1.0)) / 2)


def test_truth_metrics_by_hand():
    l_true = np.array([DB_PER_BIT, 2 * DB_PER_BIT])                  # log p = 1 and 2 bits/dim
    r = truth_metrics(l_true - DB_PER_BIT, l_true, entropy_bpd=-1.5)   # a model 1 bit/dim below the truth
    assert r["gap"] == pytest.approx(-0.5 + 1.5)                     # NLL = -mean(0, 1) bits/dim, minus H
    assert r["rms_true"] == pytest.approx(DB_PER_BIT)


TINY = ["--ns=3", "--max_steps=2", "--size=8", "--n_heldout=12", "--eval_images=6", "--const_images=12",
        "--n_draws=1", "--workers=2", "--eval_batch_size=8"]


def run_driver(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, os.path.join(ROOT, "toy", "strong_gen.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_driver_end_to_end(tmp_path):
    """Tiny run: every output is written, the sets are the disjoint pools and the held-out fields, and the
    metrics equal a recomputation from the checkpoints with the models called directly."""
    out, work = tmp_path / "out", tmp_path / "work"
    r = run_driver([*TINY, f"--out={out}", f"--work_dir={work}"])
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("strong_gen.json", "strong_gen.md", "fig2.png", "fig2.pdf", "fig2.json"):
        assert (out / name).stat().st_size > 0
    result = json.loads((out / "strong_gen.json").read_text())
    pool_a, pool_b, heldout = (np.load(work / "data" / f"{n}.npy") for n in ("pool_a", "pool_b", "heldout"))
    assert pool_a.shape == pool_b.shape == (3, 8, 8, 1) and heldout.shape == (12, 8, 8, 1)
    assert not np.isin(pool_a, pool_b).any() and not np.isin(pool_a, heldout).any()   # independent draws
    d, panels = 64, json.loads((out / "fig2.json").read_text())["panels"]
    for row, panel in zip(result["rows"], panels):
        n = row["n"]
        for side, pool in (("A", pool_a), ("B", pool_b)):
            np.testing.assert_array_equal(np.load(work / "data" / f"N{n}_{side}" / "train.npy"), pool[:n])
            assert os.path.realpath(work / "data" / f"N{n}_{side}" / "val.npy") == os.path.realpath(work / "data" / "heldout.npy")
        la, lb = {}, {}
        for side, l in (("a", la), ("b", lb)):
            model, ckpt = load_model(str(work / f"N{n}_{side.upper()}" / "ckpt.pt"))
            assert ckpt["step"] == 2 and row[f"steps_{side}"] == 2
            for s, x in (("A", pool_a[:n]), ("B", pool_b[:n]), ("H", heldout[:6])):
                y = torch.from_numpy(x).permute(0, 3, 1, 2)             # (B, 1, 8, 8)
                with torch.no_grad():
                    U = model(y, torch.zeros(len(y))).double().numpy()
                l[s] = -(U + row[f"c_{side}"]) * DB_PER_NAT / d
        np.testing.assert_allclose(panel["logp_a"], np.concatenate([la["A"], la["B"]]), atol=1e-4)   # JSON rounds to 1e-4
        np.testing.assert_allclose(panel["heldout_b"], lb["H"], atol=1e-4)
        diff_h = la["H"] - lb["H"]
        assert row["rms_heldout"] == pytest.approx(np.sqrt(np.mean(diff_h ** 2)), rel=1e-5, abs=1e-6)
        assert row["own_vs_heldout_a"] == pytest.approx(la["A"].mean() - la["H"].mean(), rel=1e-5, abs=1e-6)
        assert row["own_vs_other_b"] == pytest.approx((lb["B"] - la["B"]).mean(), rel=1e-5, abs=1e-6)
        assert row["gap_a"] == pytest.approx(-la["H"].mean() / DB_PER_BIT - result["entropy_bpd"], rel=1e-5, abs=1e-6)
        own_gauss, held_gauss = [], []
        for side, x_own in (("A", pool_a[:n]), ("B", pool_b[:n])):      # the Gaussian term alone, log Z_G by hand
            G = load_model(str(work / f"N{n}_{side}" / "ckpt.pt"))[0].gaussian
            log_z = 0.5 * d * math.log(2 * math.pi) + 0.5 * G.eig.double().log().sum().item()
            lg = [-(G(torch.from_numpy(x).permute(0, 3, 1, 2), torch.zeros(len(x))).double().detach().numpy() + log_z)
                  * DB_PER_NAT / d for x in (x_own, heldout[:6])]
            own_gauss.append(lg[0].mean() - lg[1].mean())
            held_gauss.append(lg[1])
        assert row["own_vs_heldout_gauss"] == pytest.approx(np.mean(own_gauss), rel=1e-5, abs=1e-6)
        assert row["rms_heldout_gauss"] == pytest.approx(np.sqrt(np.mean((held_gauss[0] - held_gauss[1]) ** 2)),
                                                         rel=1e-5, abs=1e-6)
    again = run_driver([*TINY, f"--out={out}", f"--work_dir={work}", "--report_only=True"])   # reuses the runs
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "strong_gen.json").read_text())["rows"] == result["rows"]   # c: same seeded draws


@pytest.mark.parametrize("arg, words", [("--ns=0", "--ns"), ("--size=10", "--size=10")])
def test_bad_input_is_one_line(tmp_path, arg, words):
    r = run_driver([arg, f"--out={tmp_path}", f"--work_dir={tmp_path}"])
    assert r.returncode != 0 and words in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def patch_folder(path, n_train, n_val, size=8):
    """train.npy, val.npy of distinct uint8 patches: patch i has pixel (0, 0) = i % 256 and (0, 1) = i // 256."""
    x = np.random.default_rng(0).integers(0, 256, (n_train + n_val, size, size, 1), dtype=np.uint8)
    i = np.arange(n_train + n_val)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = i % 256, i // 256
    os.makedirs(path, exist_ok=True)
    np.save(path / "train.npy", x[:n_train])
    np.save(path / "val.npy", x[n_train:])
    return x


def test_patch_pools_are_a_seeded_split_of_train_and_val(tmp_path):
    """--data=patches: pool A, pool B and the held-out set are disjoint draws of the pooled train + val
    patches (each patch at most once), the same for the same seed, and too few patches is a one-line error."""
    x = patch_folder(tmp_path / "p", 300, 100)
    cfg = dict(patches_dir=str(tmp_path / "p"), work_dir=str(tmp_path / "w"), size=8, ns=(1, 50), n_heldout=40, seed=3)
    a, b, h = make_patch_data(cfg)
    assert a.shape == b.shape == (50, 8, 8, 1) and h.shape == (40, 8, 8, 1) and a.dtype == np.uint8
    index = lambda part: (part[:, 0, 0, 0].astype(int) + 256 * part[:, 0, 1, 0].astype(int)).tolist()
    ids = index(a) + index(b) + index(h)
    assert len(set(ids)) == 140 and set(ids) <= set(range(400)) and max(ids) >= 300     # val patches are drawn too
    np.testing.assert_array_equal(np.concatenate([a, b, h]), x[ids])
    np.testing.assert_array_equal(np.load(tmp_path / "w" / "data" / "heldout.npy"), h)
    np.testing.assert_array_equal(make_patch_data(cfg)[0], a)                             # seeded
    assert index(make_patch_data({**cfg, "seed": 4})[0]) != index(a)
    with pytest.raises(SystemExit):
        make_patch_data({**cfg, "ns": (300,)})


def test_patch_metrics_are_the_held_out_nll_by_hand(tmp_path):
    """Quantized patches: no exact density, so each model's held-out NLL (bits/dim, + 8 for the 256-level
    scale) and its Gaussian term's, equal to a recomputation with the models called directly on x / 255."""
    x = patch_folder(tmp_path, 40, 0)
    sets = dict(A=x[:8], B=x[8:16], H=x[16:40])
    ckpts = []
    for side, seed in (("A", 0), ("B", 1)):
        torch.manual_seed(seed)
        config = UNetConfig(channels=1, base_width=4, num_scales=2, layers_per_block=2, emb_dim=16, num_freqs=4,
                            t_embedding="log", scale_energy=True, data_var=0.08, gaussian_term=True,
                            image_size=(8, 8), energy_bound=1.0)
        model = EnergyUNet(config)
        model.set_gaussian(*stationary_spectrum(sets[side])[:2])
        path = tmp_path / f"{side}.pt"
        torch.save(dict(model=model.state_dict(), model_config=asdict(config), kind="energy", step=5), path)
        ckpts.append(str(path))
    cfg = dict(const_images=24, t_max=1e3, n_draws=1, eval_batch_size=10)
    metrics, la, lb = evaluate_pair(cfg, ckpts, sets, None, None, seeded(0, 1))
    assert not any(k.startswith(("gap", "rms_true")) for k in metrics) and metrics["steps_a"] == 5
    d, y = 64, torch.from_numpy(sets["H"]).permute(0, 3, 1, 2).float() / 255
    for side, path in (("a", ckpts[0]), ("b", ckpts[1])):
        model = load_model(path)[0]
        with torch.no_grad():
            U = model(y, torch.zeros(len(y))).double().numpy()
            UG = model.gaussian(y, torch.zeros(len(y))).double().numpy()
        assert metrics[f"nll_{side}"] == pytest.approx((U + metrics[f"c_{side}"]).mean() / (d * math.log(2)) + 8,
                                                       rel=1e-6)
        assert metrics[f"nll_gauss_{side}"] == pytest.approx((UG + model.gaussian.log_z()).mean() / (d * math.log(2)) + 8,
                                                             rel=1e-6)
