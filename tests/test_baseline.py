"""baseline.py against scipy's multivariate normal and the exact entropy of a known Gaussian."""
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import baseline

torch.set_num_threads(1)


def random_gaussian(d, seed):
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(d, d))
    return rng.normal(size=d), A @ A.T / d + 0.1 * np.eye(d)


def test_nll_matches_scipy():
    mu, Sigma = random_gaussian(6, 0)
    x = np.random.default_rng(1).normal(size=(50, 6)) * 2
    ours = baseline.gaussian_nll(torch.from_numpy(x), torch.from_numpy(mu), torch.from_numpy(Sigma)).numpy()
    np.testing.assert_allclose(ours, -multivariate_normal(mu, Sigma).logpdf(x), rtol=1e-10)


@pytest.mark.parametrize("batch_size", [1024, 7])
def test_fit_is_the_ml_estimate(batch_size):
    """Streamed in chunks (7 does not divide 300) around a shift, far from 0: numpy's two-pass estimate."""
    x = 100 + np.random.default_rng(2).normal(size=(300, 5)) @ np.diag([1, 2, 3, 4, 5.0])
    mu, Sigma = baseline.fit_gaussian(x, batch_size)
    np.testing.assert_allclose(mu.numpy(), x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(Sigma.numpy(), np.cov(x.T, bias=True), rtol=1e-10)


@pytest.mark.parametrize("ridge", [0.0, 0.3])
def test_train_nll_without_a_pass_is_the_mean_over_the_images(ridge):
    x = np.random.default_rng(3).normal(size=(40, 6)) @ np.diag([1, 2, 3, 1, 2, 3.0])
    mu, Sigma = baseline.fit_gaussian(x, 16)
    Sigma += ridge * torch.eye(6, dtype=Sigma.dtype)
    direct = baseline.gaussian_nll(torch.from_numpy(x), mu, Sigma).mean().item()
    assert baseline.mean_train_nll(baseline.cholesky(Sigma), ridge) == pytest.approx(direct, rel=1e-12)


def write_split(folder, name, a):
    np.save(folder / f"{name}.npy", a)


def test_float32_data_nll_approaches_the_entropy(tmp_path):
    """Enough samples of N(mu, Sigma): the val NLL is the exact differential entropy (no offset)."""
    d = 4
    mu, Sigma = random_gaussian(d, 3)
    rng = np.random.default_rng(4)
    draw = lambda n: rng.multivariate_normal(mu, Sigma, size=n).astype(np.float32).reshape(n, 2, 2, 1)
    write_split(tmp_path, "train", draw(20000))
    write_split(tmp_path, "val", draw(20000))
    r = baseline.main([f"--data_dir={tmp_path}"])
    entropy_bpd = 0.5 * np.linalg.slogdet(2 * math.pi * math.e * Sigma)[1] / (d * math.log(2))
    assert not r["quantized"]
    assert abs(r["nll_bpd"] - entropy_bpd) < 4 * r["nll_bpd_stderr"] + 0.01
    assert json.loads((tmp_path / "baseline.json").read_text())["nll_bpd"] == r["nll_bpd"]


def test_uint8_data_gets_the_offset(tmp_path):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, size=(200, 2, 2, 1), dtype=np.uint8)
    write_split(tmp_path, "train", a[:150])
    write_split(tmp_path, "val", a[150:])
    r = baseline.main([f"--data_dir={tmp_path}"])
    x_tr, x_va = a[:150].reshape(150, 4) / 255.0, a[150:].reshape(50, 4) / 255.0
    ref = -multivariate_normal(x_tr.mean(0), np.cov(x_tr.T, bias=True)).logpdf(x_va).mean() / (4 * math.log(2)) + 8
    assert r["quantized"]
    assert r["nll_bpd"] == pytest.approx(ref, rel=1e-6)   # float64 x / 255 on both sides: rounding only


def test_singular_covariance_names_the_fix(tmp_path):
    a = np.zeros((10, 2, 2, 1), dtype=np.float32)
    a[:, 0, 0, 0] = np.arange(10)
    write_split(tmp_path, "train", a)
    write_split(tmp_path, "val", a)
    with pytest.raises(SystemExit, match="--ridge"):
        baseline.main([f"--data_dir={tmp_path}"])
    assert np.isfinite(baseline.main([f"--data_dir={tmp_path}", "--ridge=1e-3"])["nll_bpd"])


def test_paired_difference_with_a_model(tmp_path):
    """--ckpt: the model's NLL is eval.py's (same c), the paired difference is NLL(model) - NLL(Gaussian)."""
    import eval as ev
    from model import EnergyUNet, UNetConfig
    rng = np.random.default_rng(6)
    a = rng.integers(0, 256, size=(120, 4, 4, 1), dtype=np.uint8)
    write_split(tmp_path, "train", a[:100])
    write_split(tmp_path, "val", a[100:])
    cfg = UNetConfig(channels=1, base_width=4, num_scales=1, layers_per_block=2, emb_dim=8, num_freqs=4)
    torch.manual_seed(0)
    torch.save(dict(model=EnergyUNet(cfg).state_dict(), model_config=cfg.to_dict(), kind="energy", config={}, step=3),
               tmp_path / "e.pt")
    r = baseline.main([f"--data_dir={tmp_path}", f"--ckpt={tmp_path / 'e.pt'}"])
    e = ev.main([f"--ckpt={tmp_path / 'e.pt'}", f"--data_dir={tmp_path}", "--psnr_images=0", "--device=cpu"])
    assert r["model"]["nll_bpd"] == pytest.approx(e["nll_bpd"], rel=1e-6)
    assert r["model"]["minus_baseline_bpd"] == pytest.approx(e["nll_bpd"] - r["nll_bpd"], abs=1e-6)
    assert 0 < r["model"]["minus_baseline_bpd_stderr"] < float("inf")
