"""losses.py and energy_and_scores against an exactly known noisy density.

For x ~ N(mu, diag(s^2)) the noisy density p(y, t) is N(mu, diag(s^2 + t)), so

    U*(y, t)   = sum_i (y_i - mu_i)^2 / (2 (s_i^2 + t)) + 0.5 log(2 pi (s_i^2 + t))
    grad_y U*  = (y - mu) / (s^2 + t)
    dU*/dt     = sum_i 1 / (2 (s_i^2 + t)) - (y_i - mu_i)^2 / (2 (s_i^2 + t)^2)

and the posterior x | y is N(mu + s^2 / (s^2 + t) (y - mu), s^2 t / (s^2 + t)).
"""
import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from losses import add_noise, denoiser_score_matching, dual_score_matching, sample_t
from model import energy_and_scores



@pytest.fixture(autouse=True)
def float64_default():
    """Everything in this file in float64 (restored afterwards: other test files expect float32)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def gaussian(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.rand(d, generator=g)
    s2 = 0.05 + torch.rand(d, generator=g) ** 2                       # variances in [0.05, 1.05]
    return mu, s2


def exact_energy(mu, s2, scale=1.0):
    """U*(y, t) on vectors (B, D); scale != 1 multiplies the variances (a wrong model)."""
    def U(y, t):
        v = scale * s2 + t[:, None]                                   # (B, D)
        return ((y - mu) ** 2 / (2 * v) + 0.5 * torch.log(2 * math.pi * v)).sum(dim=1)
    return U


def samples(mu, s2, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return mu + s2.sqrt() * torch.randn(n, mu.shape[0], generator=g)


@settings(max_examples=20, deadline=None)
@given(d=st.integers(1, 50), log10_t=st.floats(-9, 3), seed=st.integers(0, 1000))
def test_energy_and_scores_match_analytic_scores(d, log10_t, seed):
    mu, s2 = gaussian(d, seed)
    y = samples(mu, s2 + 10 ** log10_t, 4, seed)
    t = torch.full((4,), 10 ** log10_t)
    U, grad_y, dU_dt = energy_and_scores(exact_energy(mu, s2), y, t)
    v = s2 + t[:, None]
    torch.testing.assert_close(U, exact_energy(mu, s2)(y, t), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_y, (y - mu) / v, rtol=1e-10, atol=0)
    torch.testing.assert_close(dU_dt, (1 / (2 * v) - (y - mu) ** 2 / (2 * v ** 2)).sum(1), rtol=1e-8, atol=1e-12)
    assert not U.requires_grad and not grad_y.requires_grad


def test_energy_and_scores_create_graph_keeps_graph():
    mu, s2 = gaussian(3)
    w = torch.tensor(1.5, requires_grad=True)
    U, grad_y, dU_dt = energy_and_scores(lambda y, t: w * exact_energy(mu, s2)(y, t),
                                         samples(mu, s2, 2), torch.ones(2), create_graph=True)
    (gw,) = torch.autograd.grad(grad_y.sum() + dU_dt.sum(), w)       # the scores are linear in w
    assert torch.isclose(gw, (grad_y.sum() + dU_dt.sum()) / w)


def test_time_score_identity_by_monte_carlo():
    """dU/dt(y, t) = E[d/(2t) - ||y - x||^2 / (2 t^2) | y] (docs/method.md §3), x drawn from the exact posterior."""
    d, n = 20, 200_000
    mu, s2 = gaussian(d)
    g = torch.Generator().manual_seed(3)
    for t in (0.01, 0.3, 5.0):
        y = samples(mu, s2 + t, 1, seed=int(100 * t))                 # one noisy observation (1, D)
        post_mean = mu + s2 / (s2 + t) * (y - mu)
        x = post_mean + (s2 * t / (s2 + t)).sqrt() * torch.randn(n, d, generator=g)
        target = d / (2 * t) - ((y - x) ** 2).sum(1) / (2 * t ** 2)  # (n,)
        _, _, dU_dt = energy_and_scores(exact_energy(mu, s2), y, torch.tensor([t]))
        se = target.std() / math.sqrt(n)
        assert abs(target.mean() - dU_dt[0]) < 4 * se, (t, target.mean().item(), dU_dt.item(), se.item())


def paired_losses(energies, x, t, seed=4, **kw):
    """Per-sample loss dicts of several energies on the SAME noise (common random numbers)."""
    return [dual_score_matching(U, x, t, generator=torch.Generator().manual_seed(seed), **kw) for U in energies]


def test_expected_dual_loss_is_lowest_at_the_true_energy():
    d, n = 10, 40_000
    mu, s2 = gaussian(d)
    x = samples(mu, s2, n)
    t = sample_t(n, 1e-3, 1e2, generator=torch.Generator().manual_seed(5))
    true, wrong_scale, shifted = exact_energy(mu, s2), exact_energy(mu, s2, scale=1.3), None

    def shifted(y, t):                                                # U* + g(t): a normalization error
        return true(y, t) + 3.0 * d * torch.log1p(t)

    l_true, l_scale, l_shift = paired_losses([true, wrong_scale, shifted], x, t)
    for other in (l_scale, l_shift):
        diff = other["loss"] - l_true["loss"]
        assert diff.mean() > 5 * diff.std() / math.sqrt(n)
    # only the time term can see an error that depends on t alone
    torch.testing.assert_close(l_shift["space"], l_true["space"], rtol=1e-9, atol=1e-12)
    diff_space = l_scale["space"] - l_true["space"]
    assert diff_space.mean() > 5 * diff_space.std() / math.sqrt(n)


def test_expected_space_loss_equals_posterior_variance():
    """At U*, E[space] = mean_i s_i^2 / (s_i^2 + t): the exact denoiser's MSE / t (and the same for
    the plain score-network loss given the exact f = (y - mu) / (s^2 + t))."""
    d, n, t = 8, 50_000, 0.2
    mu, s2 = gaussian(d)
    x = samples(mu, s2, n)
    tt = torch.full((n,), t)
    expected = (s2 / (s2 + t)).mean()
    dual = dual_score_matching(exact_energy(mu, s2), x, tt, generator=torch.Generator().manual_seed(6))
    plain = denoiser_score_matching(lambda y, t: (y - mu) / (s2 + t[:, None]), x, tt,
                                    generator=torch.Generator().manual_seed(6))
    for space in (dual["space"], plain["space"]):
        assert abs(space.mean() - expected) < 4 * space.std() / math.sqrt(n)
    torch.testing.assert_close(dual["space"], plain["space"])
    # and E[time] at U* is the conditional variance of the target, positive and O(1/d)
    assert 0 < dual["time"].mean() < 1.0 / d


def test_loss_forms_equal_the_paper_forms():
    """space = (t/d) ||grad_y U - r/t||^2, time = (t/d)^2 (dU/dt - d/(2t) + ||r||^2/(2t^2))^2 (docs/method.md §3)."""
    d, B = 6, 5
    mu, s2 = gaussian(d)
    x = samples(mu, s2, B)
    t = torch.tensor([1e-6, 1e-3, 0.1, 10.0, 1e3])
    U = exact_energy(mu, s2)
    out = dual_score_matching(U, x, t, time_weight=0.7, generator=torch.Generator().manual_seed(7))
    t2, z, y = add_noise(x, t, torch.Generator().manual_seed(7))
    r = y - x
    _, grad_y, dU_dt = energy_and_scores(U, y, t)
    space = (t / d) * ((grad_y - r / t[:, None]) ** 2).sum(1)
    time = (t / d) ** 2 * (dU_dt - d / (2 * t) + (r ** 2).sum(1) / (2 * t ** 2)) ** 2
    torch.testing.assert_close(out["space"], space, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["time"], time, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(out["loss"], space + 0.7 * time, rtol=1e-6, atol=1e-12)
    single = dual_score_matching(U, x, t, time_weight=0.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(single["loss"], single["space"])


def test_dual_score_matching_on_images_and_vectors_agree():
    d = 12
    mu, s2 = gaussian(d)
    x = samples(mu, s2, 3)
    t = torch.tensor([0.01, 1.0, 100.0])
    U = exact_energy(mu, s2)
    vec = dual_score_matching(U, x, t, generator=torch.Generator().manual_seed(8))
    img = dual_score_matching(lambda y, t: U(y.flatten(1), t), x.view(3, 1, 3, 4), t,
                              generator=torch.Generator().manual_seed(8))
    for k in ("loss", "space", "time"):
        assert img[k].shape == (3,)
        torch.testing.assert_close(img[k], vec[k])


def test_sample_t_is_log_uniform():
    n = 100_000
    t = sample_t(n, generator=torch.Generator().manual_seed(9)).double()
    assert t.min() >= 1e-9 and t.max() <= 1e3
    u = (torch.log(t) - math.log(1e-9)) / (math.log(1e3) - math.log(1e-9))   # uniform on [0, 1]
    for q in (0.1, 0.25, 0.5, 0.75, 0.9):                             # empirical CDF vs uniform's
        p = (u < q).double().mean()
        assert abs(p - q) < 4 * math.sqrt(q * (1 - q) / n)
    assert torch.equal(sample_t(5, generator=torch.Generator().manual_seed(1)),
                       sample_t(5, generator=torch.Generator().manual_seed(1)))


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="t_min"):
        sample_t(3, t_min=1.0, t_max=0.5)
    mu, s2 = gaussian(4)
    with pytest.raises(ValueError, match=r"\(B,\)"):
        dual_score_matching(exact_energy(mu, s2), samples(mu, s2, 3), torch.ones(2))
    with pytest.raises(ValueError, match="one energy per sample"):
        energy_and_scores(lambda y, t: y, samples(mu, s2, 3), torch.ones(3))


def test_mass_penalty_is_zero_at_the_gaussian_and_weighs_the_most_negative_draws():
    """losses.mass_penalty: 0 (and no gradient) for a model that is exactly its Gaussian term; a/d for R = -a on
    every draw; in general relu(log mean exp(-R)) / d, whose gradient in R is -softmax(-R) / d: the draws the
    network gives the most mass carry the push. The draws follow N(m, Sigma + t I) (same generator: same draws)."""
    from losses import mass_penalty
    from model import EnergyUNet, UNetConfig
    cfg = UNetConfig(channels=1, base_width=4, num_scales=2, layers_per_block=2, emb_dim=8, num_freqs=4,
                     t_embedding="log", scale_energy=True, data_var=0.04, gaussian_term=True, image_size=(8, 8),
                     energy_bound=1.0, zero_init_out=True)
    model = EnergyUNet(cfg)
    P = torch.full((8, 8, 1, 1), 0.01, dtype=torch.complex128)
    model.set_gaussian(torch.tensor([0.5]), P)
    p = mass_penalty(model, 16, torch.Generator().manual_seed(0))
    p.backward()
    assert p.item() == 0.0 and all(q.grad is None or q.grad.abs().max() == 0 for q in model.parameters())

    seen = []

    class Stub(torch.nn.Module):                      # R from a leaf tensor we can differentiate against
        def __init__(self, R):
            super().__init__()
            self.gaussian, self.R = model.gaussian, R

        def network_term(self, y, t):
            seen.append((y.detach().clone(), t.detach().clone()))
            return self.R

    d = 64
    const = mass_penalty(Stub(torch.full((16,), -3.0)), 16, torch.Generator().manual_seed(1))
    assert const.item() == pytest.approx(3.0 / d, rel=1e-6)
    R = torch.tensor([5.0, -2.0, 1.0, -4.0], requires_grad=True)
    p = mass_penalty(Stub(R), 4, torch.Generator().manual_seed(2))
    expected = math.log(torch.exp(-R.detach()).mean().item()) / d
    assert p.item() == pytest.approx(expected, rel=1e-6)
    p.backward()
    torch.testing.assert_close(R.grad, -torch.softmax(-R.detach(), 0) / d)
    assert mass_penalty(Stub(torch.tensor([1.0, 2.0])), 2, torch.Generator().manual_seed(3)).item() == 0.0
    # the draws: many of them at one t have the Gaussian's mean and the covariance's trace + t d
    mass_penalty(Stub(torch.zeros(4000)), 4000, torch.Generator().manual_seed(4))
    y, t = seen[-1]
    assert (t > 0).all() and t.min() < 1e-6 and t.max() > 1e2            # log-uniform over [1e-9, 1e3]
    small = t < 1e-3                                                      # here the Gaussian's own spread dominates
    var = (y[small] - 0.5).pow(2).mean().item()
    assert var == pytest.approx(0.01, rel=0.05)
