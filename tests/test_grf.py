"""data/grf: sampler, entropy and exact energy against dense float64 Gaussians; prepare.py's CLI;
model.py's noise-conditioning options (log-t embedding, analytic term, energy scaling)."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.grf.prepare import grf_eigenvalues, grf_energy, grf_entropy, sample_grf, warp_entropy_shift, warp_field
from model import EnergyUNet, UNetConfig, count_parameters, energy_and_scores


def dense_covariance(lam):
    """Sigma_pq = (1/d) sum_k lambda_k cos(2 pi k.(p - q) / n), built pixel by pixel (no FFT)."""
    n = lam.shape[0]
    k = torch.arange(n, dtype=torch.float64)
    p = torch.stack(torch.meshgrid(k, k, indexing="ij"), -1).reshape(-1, 2)   # (d, 2) pixel = wavenumber grid
    diff = p[:, None, :] - p[None, :, :]                                        # (d, d, 2)
    phase = 2 * math.pi * (diff[..., None, :] * p[None, None, :, :]).sum(-1) / n  # (d, d, d)
    return (torch.cos(phase) * lam.reshape(-1)).sum(-1) / n ** 2


@pytest.fixture(params=[(4, 2.5, 2.0, 0.15), (6, 3.0, 1.0, 0.3), (5, 1.5, 0.5, 1.0)])
def field(request):
    size, alpha, k0, amplitude = request.param
    lam = grf_eigenvalues(size, alpha, k0, amplitude)
    return lam, dense_covariance(lam), 0.5


def test_eigenvalues_symmetric_and_scaled(field):
    lam, Sigma, _ = field
    n = lam.shape[0]
    flipped = lam[(-torch.arange(n)) % n][:, (-torch.arange(n)) % n]
    assert torch.equal(lam, flipped)                                   # lambda_k = lambda_{-k}
    assert torch.allclose(torch.diagonal(Sigma), lam.mean().expand(n * n), rtol=1e-12)
    assert torch.allclose(torch.linalg.eigvalsh(Sigma), lam.reshape(-1).sort().values, rtol=1e-9, atol=1e-14)


def test_sampler_covariance(field):
    lam, Sigma, m = field
    x = sample_grf(40000, lam, m, generator=torch.Generator().manual_seed(0)).reshape(40000, -1)
    err_mean = (x.mean(0) - m).abs().max() / lam.mean().sqrt()
    C = torch.cov(x.T)
    assert err_mean < 0.03
    assert (C - Sigma).abs().max() / lam.mean() < 0.04


@pytest.mark.parametrize("t", [0.0, 1e-3, 0.7, 1e3])
def test_entropy_and_energy_match_dense_gaussian(field, t):
    lam, Sigma, m = field
    d = Sigma.shape[0]
    mvn = torch.distributions.MultivariateNormal(torch.full((d,), m, dtype=torch.float64), Sigma + t * torch.eye(d, dtype=torch.float64))
    assert grf_entropy(lam, t) == pytest.approx(mvn.entropy().item(), rel=1e-10, abs=1e-9)
    y = mvn.sample((7,))                                               # (7, d)
    U = grf_energy(y.reshape(7, 1, *lam.shape), torch.full((7,), t, dtype=torch.float64), lam, m)
    assert torch.allclose(U, -mvn.log_prob(y), rtol=1e-10, atol=1e-8)


def test_time_and_space_scores_match_dense(field):
    lam, Sigma, m = field
    d = Sigma.shape[0]
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([1e-4, 0.02, 3.0], dtype=torch.float64, requires_grad=True)
    y = (m + torch.randn(3, d, generator=g, dtype=torch.float64) * 0.5).requires_grad_(True)
    U = grf_energy(y, t, lam, m)
    grad_y, dU_dt = torch.autograd.grad(U.sum(), (y, t))
    for i in range(3):                                                 # analytic, dense
        A_inv = torch.linalg.inv(Sigma + t[i].detach() * torch.eye(d, dtype=torch.float64))
        r = A_inv @ (y[i].detach() - m)
        assert torch.allclose(grad_y[i], r, rtol=1e-9, atol=1e-9)
        assert dU_dt[i].item() == pytest.approx((0.5 * torch.trace(A_inv) - 0.5 * r @ r).item(), rel=1e-9)


def test_prepare_cli(tmp_path):
    out = tmp_path / "grf"
    cmd = [sys.executable, "data/grf/prepare.py", "--size=8", "--n_train=300", "--n_val=50", f"--out={out}"]
    subprocess.run(cmd, check=True, capture_output=True)
    train, val = np.load(out / "train.npy"), np.load(out / "val.npy")
    assert train.shape == (300, 8, 8, 1) and val.shape == (50, 8, 8, 1)
    assert train.dtype == np.float32 and val.dtype == np.float32
    meta = json.loads((out / "meta.json").read_text())
    lam = grf_eigenvalues(8, 2.5, 2.0, 0.15)
    assert meta["entropy_bits_per_dim"] == pytest.approx(grf_entropy(lam) / (64 * math.log(2)), rel=1e-12)
    assert abs(train.mean() - 0.5) < 0.05 and abs(train.std() - 0.15) < 0.03
    assert not np.allclose(train[:50], val)                            # independent draws


@pytest.mark.parametrize("w", [0.5, 1.0, 2.0])
def test_warped_entropy_by_numerical_integration(w):
    """One pixel (d = 1): -int p log p of the warped density on a fine grid = the change-of-variables formula."""
    m, a = 0.5, 0.15
    x = torch.linspace(m - 12 * a, m + 12 * a, 400001, dtype=torch.float64)
    y = warp_field(x, m, a, w)                                         # monotone: a grid in y
    log_px = -0.5 * ((x - m) / a) ** 2 - math.log(a * math.sqrt(2 * math.pi))
    log_py = log_px - torch.log(torch.cosh(w * (x - m) / a))           # p_y(y) = p_x(x) / (dy/dx)
    H_numeric = -torch.trapezoid(log_py.exp() * log_py, y).item()
    lam = grf_eigenvalues(1, 2.5, 2.0, a)                               # a single pixel: lambda = a^2
    assert H_numeric == pytest.approx(grf_entropy(lam) + warp_entropy_shift(w, 1), abs=1e-6)


def test_warp_cli_is_non_gaussian_with_exact_entropy(tmp_path):
    out = tmp_path / "warp"
    cmd = [sys.executable, "data/grf/prepare.py", "--size=8", "--n_train=2000", "--n_val=50", "--warp=1", f"--out={out}"]
    subprocess.run(cmd, check=True, capture_output=True)
    train = np.load(out / "train.npy").astype(np.float64)
    meta = json.loads((out / "meta.json").read_text())
    lam = grf_eigenvalues(8, 2.5, 2.0, 0.15)
    expected = (grf_entropy(lam) + warp_entropy_shift(1.0, 64)) / (64 * math.log(2))
    assert meta["warp"] == 1.0 and meta["entropy_bits_per_dim"] == pytest.approx(expected, rel=1e-12)
    z = (train - train.mean()) / train.std()
    assert abs(train.mean() - 0.5) < 0.02 and (z ** 4).mean() > 5      # heavy tails (a Gaussian has 3)


@pytest.mark.parametrize("arg, message", [("--sizes=8", "unknown key --sizes"), ("--amplitude=-1", "amplitude > 0"),
                                          ("--warp=-1", "--warp must be >= 0")])
def test_prepare_cli_bad_input(tmp_path, arg, message):
    r = subprocess.run([sys.executable, "data/grf/prepare.py", arg, f"--out={tmp_path}"], capture_output=True, text=True)
    assert r.returncode != 0 and message in r.stderr


# ----------------------------------------------------------------------------- noise-conditioning options of model.py
SMALL = dict(channels=1, base_width=4, num_scales=1, layers_per_block=2, emb_dim=8, num_freqs=4)


def pair(**options):
    """Two float64 EnergyUNets with identical weights: the log-embedding base and base + options."""
    torch.manual_seed(0)
    base = EnergyUNet(UNetConfig(**SMALL, t_embedding="log", data_var=0.04)).double()
    other = EnergyUNet(UNetConfig(**SMALL, t_embedding="log", data_var=0.04, **options)).double()
    other.load_state_dict(base.state_dict())
    return base, other


def test_analytic_term_and_scale_energy_exact():
    y = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([1e-7, 0.03, 50.0], dtype=torch.float64)
    s2, d = 0.04, 16
    base, both = pair(analytic_term=True, scale_energy=True)
    U0, g0, dU0 = energy_and_scores(base, y, t)
    U1, g1, dU1 = energy_and_scores(both, y, t)
    assert torch.allclose(U1, U0 / (s2 + t) + 0.5 * d * torch.log1p(t / s2), rtol=1e-12)
    assert torch.allclose(g1, g0 / (s2 + t).view(-1, 1, 1, 1), rtol=1e-12)
    expected = dU0 / (s2 + t) - U0 / (s2 + t) ** 2 + 0.5 * d / (s2 + t)
    assert torch.allclose(dU1, expected, rtol=1e-10)


def test_spectral_analytic_term_is_the_gaussian_log_det():
    """With data_spectrum, U gains exactly (1/2) sum_k log(1 + t / lambda_k), and dU/dt (1/2) sum_k 1/(lambda_k + t)."""
    lam = torch.logspace(-4, 0, 16, dtype=torch.float64)                        # d = 16 eigenvalues
    y = torch.rand(3, 1, 4, 4, dtype=torch.float64)
    t = torch.tensor([1e-7, 0.03, 50.0], dtype=torch.float64)
    base, spectral = pair(analytic_term=True, data_spectrum=lam.tolist())
    U0, g0, dU0 = energy_and_scores(base, y, t)
    U1, g1, dU1 = energy_and_scores(spectral, y, t)
    assert torch.allclose(U1 - U0, 0.5 * torch.log1p(t[:, None] / lam).sum(1), rtol=1e-12)
    assert torch.allclose(dU1 - dU0, 0.5 * (1 / (lam + t[:, None])).sum(1), rtol=1e-10)
    assert torch.equal(g1, g0)      # no y-dependence; bit for bit by construction: same weights, and the backward
    #                                 pass into y runs the same operations (the added term does not touch y)
    # 4 bins for d = 16: each stands for 4 eigenvalues
    _, binned = pair(analytic_term=True, data_spectrum=lam[::4].tolist())
    with torch.no_grad():
        assert torch.allclose(binned(y, t) - base(y, t), 2.0 * torch.log1p(t[:, None] / lam[::4]).sum(1), rtol=1e-12)


def test_spectrum_survives_json_and_checkpoints(tmp_path):
    import json
    from model import load_model
    cfg = UNetConfig(**SMALL, t_embedding="log", data_var=0.04, analytic_term=True, scale_energy=True,
                     data_spectrum=[0.001, 0.01, 0.1, 0.5])
    assert UNetConfig(**json.loads(json.dumps(cfg.to_dict()))) == cfg
    model = EnergyUNet(cfg)
    assert "spectrum" not in model.state_dict()                                 # rebuilt from the config
    torch.save({"model": model.state_dict(), "model_config": cfg.to_dict(), "kind": "energy", "step": 0},
               tmp_path / "ckpt.pt")
    loaded, _ = load_model(str(tmp_path / "ckpt.pt"), kind="energy")
    y, t = torch.rand(2, 1, 4, 4), torch.tensor([0.0, 3.0])
    with torch.no_grad():           # bit for bit by construction: the same weights and operations in one process
        assert torch.equal(loaded(y, t), model.eval()(y, t))


@pytest.mark.parametrize("t", [1e-8, 1e-3, 10.0])
def test_log_embedding_time_derivative_vs_finite_differences(t):
    _, model = pair(analytic_term=True, scale_energy=True)
    y = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    tt = torch.full((2,), t, dtype=torch.float64)
    _, _, dU = energy_and_scores(model, y, tt)
    h = 1e-5 * t
    with torch.no_grad():
        fd = (model(y, tt + h) - model(y, tt - h)) / (2 * h)
    assert torch.allclose(dU, fd, rtol=1e-5)


def test_log_embedding_flat_below_t_floor_and_params_unchanged():
    base, _ = pair()
    y = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    with torch.no_grad():
        U_0, U_tiny = base(y, torch.zeros(2, dtype=torch.float64)), base(y, torch.full((2,), 1e-12, dtype=torch.float64))
    assert torch.allclose(U_0, U_tiny, rtol=1e-5)                      # t << t_floor = 1e-6
    paper = EnergyUNet(UNetConfig(**SMALL))
    assert count_parameters(paper) == count_parameters(base)


@pytest.mark.parametrize("options, message", [(dict(t_embedding="sqrt"), "t_embedding"),
                                              (dict(analytic_term=True), "data_var"),
                                              (dict(scale_energy=True, data_var=-1.0), "data_var"),
                                              (dict(t_floor=0.0), "t_floor"),
                                              (dict(data_spectrum=[0.1, -1.0]), "data_spectrum"),
                                              (dict(data_spectrum=[]), "data_spectrum")])
def test_bad_noise_options(options, message):
    with pytest.raises(ValueError, match=message):
        UNetConfig(**SMALL, **options)


def test_normalization_study_smoke(tmp_path):
    """toy/grf_normalization.py end to end on an 8x8 field: every variant kind trains, evaluates and reports;
    the gap and its control-variate estimate agree within Monte Carlo error."""
    cmd = [sys.executable, "toy/grf_normalization.py", "--variants=ours,isotropic,oracle", "--steps=2",
           "--eval_steps=0,2", "--size=8", "--n_train=400", "--n_eval=64", "--n_grid=8", "--n_t=4",
           "--base_width=4", "--layers_per_block=2", f"--out={tmp_path}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert {row["variant"] for row in results["table"]} == {"ours", "isotropic", "oracle"}
    assert "| ours |" in results["markdown_compact"]
    for v in ("ours", "isotropic", "oracle"):
        record = json.loads((tmp_path / f"{v}.json").read_text())
        spectrum = record["model_config"]["data_spectrum"]
        assert (spectrum is None) == (v == "isotropic") and (spectrum is None or len(spectrum) == 64)
        for e in record["evals"]:   # gap - gap_cv: Monte Carlo error of mean U*, variance d/2 at t = 0 and t_max
            assert abs(e["gap_bpd"] - e["gap_cv_bpd"]) < 4 * math.sqrt(64 / 64) / (64 * math.log(2))
    # the oracle's spectrum is the field's exact one; ours is measured on 400 training fields
    exact = sorted(grf_eigenvalues(8, 2.5, 2.0, 0.15).flatten().tolist())
    oracle = json.loads((tmp_path / "oracle.json").read_text())["model_config"]["data_spectrum"]
    assert np.allclose(oracle, exact, rtol=1e-12)
