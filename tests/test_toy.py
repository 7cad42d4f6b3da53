"""toy/gaussian_mixture.py: the analytic mixture against independent references, the radial model's
scores against autograd, the normalization constant, bad input, and the short run's separation."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings, strategies as st
from scipy.special import logsumexp
from scipy.stats import norm

from toy import gaussian_mixture as gm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "toy", "gaussian_mixture.py")
# the short setting of the README (section toy): same d and mixture, fewer steps, smaller batches
SHORT_SETTING = ["--steps=500", "--batch_size=128", "--time_warmup=0", "--n_data=20000", "--n_norm=5000", "--log_every=250"]
SHORT_DUAL_BOUND_DB = 0.8             # measured 0.40 (single SM 8.7, re-fitted 1.39; README)


@settings(max_examples=15, deadline=None)
@given(K=st.integers(1, 3), d=st.integers(1, 6), t=st.floats(1e-3, 1e2), seed=st.integers(0, 1000))
def test_true_energy_matches_scipy_mixture(K, d, t, seed):
    g = torch.Generator().manual_seed(seed)
    sigmas = (0.2 + 3 * torch.rand(K, generator=g, dtype=torch.float64)).tolist()
    weights = torch.softmax(torch.randn(K, generator=g, dtype=torch.float64), 0).tolist()
    mix = gm.ScaleMixture(sigmas, weights, d)
    y = 3 * torch.randn(4, d, generator=g, dtype=torch.float64)
    ref = [-logsumexp([math.log(w) + norm(scale=math.sqrt(s ** 2 + t)).logpdf(yi.numpy()).sum()
                       for s, w in zip(sigmas, weights)]) for yi in y]
    got = mix.energy(y, torch.full((4,), t, dtype=torch.float64))
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64), rtol=1e-9, atol=1e-9)


def test_true_energy_is_normalized_in_1d():
    mix = gm.ScaleMixture([0.5, 2.0], [0.3, 0.7], 1)
    y = torch.linspace(-40, 40, 200001, dtype=torch.float64)[:, None]
    for t in (0.0, 0.3, 10.0):
        p = torch.exp(-mix.energy(y, torch.full((len(y),), t)))
        assert abs(torch.trapezoid(p, y[:, 0]).item() - 1) < 1e-8


def test_true_score_is_minus_gradient_of_energy():
    mix = gm.ScaleMixture([1.0, 4.0], [0.5, 0.5], 50)
    g = torch.Generator().manual_seed(0)
    y = (torch.randn(6, 50, generator=g, dtype=torch.float64) * torch.tensor([1, 1.7, 2, 3, 4, 5.0])[:, None]).requires_grad_()
    t = torch.tensor([0.01, 0.1, 1.0, 3.0, 10.0, 100.0], dtype=torch.float64)
    (grad,) = torch.autograd.grad(mix.energy(y, t).sum(), y)
    torch.testing.assert_close(mix.score(y.detach(), t), -grad, rtol=1e-9, atol=1e-12)


def test_model_energy_radial_score_and_dominant_component():
    torch.manual_seed(0)
    d = 40
    model = gm.RadialEnergy(d, 2).double()
    r = torch.tensor([0.3, 1.0, 2.5, 4.0], dtype=torch.float64)
    t = torch.full((4,), 0.05, dtype=torch.float64)
    y = (r * math.sqrt(d))[:, None] * torch.nn.functional.normalize(torch.randn(4, d, dtype=torch.float64), dim=1)
    y.requires_grad_()
    U = model(y, t)
    (grad,) = torch.autograd.grad(U.sum(), y)
    a, b = model.coefficients(t)
    sq = y.detach().pow(2).sum(1)
    ref_U = -torch.log(torch.exp(-(a * sq[:, None] + d * b)).sum(1))       # naive logsumexp
    torch.testing.assert_close(U.detach(), ref_U.detach())
    radial = -(grad * y.detach()).sum(1) / y.detach().norm(dim=1) / math.sqrt(d)
    torch.testing.assert_close(gm.radial_score(sq, a.detach(), b.detach(), d), radial)


def test_switch_radius_of_the_truth_is_analytic():
    # equal weights, t -> 0: r^2 (1/(2 s1^2) - 1/(2 s2^2)) = log(s2 / s1)  (docs/method.md §7: ~1.7 for sigmas 1, 4)
    mix = gm.ScaleMixture([1.0, 4.0], [0.5, 0.5], 1000)
    r = torch.linspace(0, 5, 20001, dtype=torch.float64)
    dominant = gm.radial_curves(mix.coefficients, r, 0.0, 0.0, 1000)[2]
    expected = math.sqrt(math.log(4.0) / (0.5 - 0.5 / 16))
    assert abs(gm.switch_radius(r, dominant) - expected) < 1e-3
    assert gm.switch_radius(r, torch.zeros_like(r, dtype=torch.long)) is None


def test_log_norm_const_of_the_truth_is_near_zero():
    d = 1000
    mix = gm.ScaleMixture([1.0, 4.0], [0.5, 0.5], d)
    g = torch.Generator().manual_seed(0)
    x = mix.sample(4000, g)
    c = gm.log_norm_const(mix.energy, x, 100.0, g)
    # Monte Carlo s.e. ~0.35 nats; Gaussian approximation at t = 100 ~0.5 nats. Dropping the data
    # variance (docs/method.md §5 as written) would give -(d/2) log(1 + 8.5/100) = -41 nats.
    assert abs(c) < 2.5, c


@pytest.mark.parametrize("sigmas, weights, message", [
    ("1,4", "1", "one weight per component"),
    ("1,4", "0.5,0.6", "sum to 1"),
    ("1,-4", "0.5,0.5", "> 0"),
    ("1,x", "0.5,0.5", "comma-separated"),
])
def test_bad_mixture_is_a_clear_error(sigmas, weights, message):
    with pytest.raises(SystemExit, match=message):
        gm.check_mixture(gm.parse_floats(sigmas, "sigmas"), gm.parse_floats(weights, "weights"))


def test_bad_mixture_fails_before_training(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--sigmas=1,2,5", "--weights=0.5,0.5", f"--out={tmp_path}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "one weight per component" in proc.stderr, proc.stderr
    assert "step" not in proc.stdout and not os.listdir(tmp_path)


def test_short_run_separates_single_and_dual(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, *SHORT_SETTING, f"--out={tmp_path}"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.load(open(tmp_path / "results.json"))
    for name in ("gaussian_mixture.png", "gaussian_mixture.pdf", "summary.txt"):
        assert (tmp_path / name).stat().st_size > 0
    dual, single, refit = res["dual"], res["single"], res["single_refit"]
    assert dual["max_err_support_db"] <= SHORT_DUAL_BOUND_DB, res
    assert single["max_err_support_db"] >= 10 * dual["max_err_support_db"], res
    assert refit["max_err_support_db"] >= 2 * dual["max_err_support_db"], res
    assert abs(dual["switch_radius"] - res["truth_switch_radius"]) < 0.1, res
    assert single["switch_radius"] is None or abs(single["switch_radius"] - res["truth_switch_radius"]) > 0.2, res
