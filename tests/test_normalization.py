"""The confining energy (docs/normalization.md, docs/method.md §9): the stationary Gaussian term against a
dense float64 Gaussian, its spectrum estimate against a dense shift-averaged covariance, the bound on the
network term, and confinement of randomly initialized models along the probes."""
import math

import numpy as np
import pytest
import torch

from dataset import radial_average, stationary_spectrum
from model import EnergyUNet, StationaryGaussian, UNetConfig, energy_and_scores, load_model
from test_eval import OneGenerator                                    # the noise interface of ais.SeededNoise


def random_spectrum(H, W, C, generator):
    """A random Hermitian positive definite cross-spectrum with P_{-k} = conj(P_k), (H, W, C, C) complex128."""
    A = torch.randn(H, W, C, C, generator=generator, dtype=torch.complex128)
    P = A @ A.conj().transpose(-1, -2) + 0.1 * torch.eye(C, dtype=torch.complex128)
    P_neg = torch.roll(P.flip(0, 1), shifts=(1, 1), dims=(0, 1))
    return 0.5 * (P + P_neg.conj())


def dense_covariance(P):
    """Sigma = F^H blockdiag(P_k) F as a real (d, d) float64 matrix, built column by column from the
    unitary DFT matrices (no FFT): the independent reference for StationaryGaussian."""
    H, W, C = P.shape[:3]
    Fh = torch.tensor(np.fft.fft(np.eye(H), norm="ortho"))                     # (H, H) unitary DFT
    Fw = torch.tensor(np.fft.fft(np.eye(W), norm="ortho"))
    F = torch.kron(Fh, Fw)                                                      # (H W, H W) on row-major pixels
    d = C * H * W
    Sigma = torch.zeros(d, d, dtype=torch.complex128)
    for c in range(C):                                                          # pixel index c * H W + p
        for c2 in range(C):
            block = F.conj().T @ torch.diag(P[..., c, c2].reshape(-1)) @ F
            Sigma[c * H * W:(c + 1) * H * W, c2 * H * W:(c2 + 1) * H * W] = block
    assert Sigma.imag.abs().max() < 1e-12                                       # P_{-k} = conj(P_k): real
    return Sigma.real


@pytest.mark.parametrize("C", [1, 2])
def test_gaussian_term_is_the_exact_gaussian_energy_at_every_t(C):
    """U_G(y, t) + log Z_G = -log N(y; m, Sigma + t I), normalizer included, so Z_G(t) is the same for every t."""
    g = torch.Generator().manual_seed(0)
    H, W = 4, 6
    P = random_spectrum(H, W, C, g)
    mean = torch.randn(C, generator=g, dtype=torch.float64)
    G = StationaryGaussian(C, (H, W)).double()
    G.set(mean, P)
    Sigma = dense_covariance(P)
    y = torch.randn(5, C, H, W, generator=g, dtype=torch.float64) * 2
    m = mean.repeat_interleave(H * W)
    for t in (0.0, 1e-3, 0.7, 1e3):
        tt = torch.full((5,), t, dtype=torch.float64)
        ref = torch.distributions.MultivariateNormal(m, Sigma + t * torch.eye(C * H * W, dtype=torch.float64))
        torch.testing.assert_close(G(y, tt) + G.log_z(), -ref.log_prob(y.flatten(1)), rtol=1e-10, atol=1e-9)


def test_gaussian_term_scores_match_autograd_of_the_dense_reference():
    g = torch.Generator().manual_seed(1)
    C, H, W = 2, 4, 4
    P = random_spectrum(H, W, C, g)
    G = StationaryGaussian(C, (H, W)).double()
    G.set(torch.zeros(C, dtype=torch.float64), P)
    Sigma = dense_covariance(P)
    y = torch.randn(3, C, H, W, generator=g, dtype=torch.float64)
    t = torch.tensor([0.0, 0.3, 50.0], dtype=torch.float64)
    _, grad_y, dU_dt = energy_and_scores(G, y, t)
    for i in range(3):
        S = Sigma + t[i] * torch.eye(C * H * W, dtype=torch.float64)
        torch.testing.assert_close(grad_y[i].flatten(), torch.linalg.solve(S, y[i].flatten()), rtol=1e-9, atol=1e-10)
        Si = torch.linalg.inv(S)                                   # d/dt [1/2 y^T S^-1 y + 1/2 log det S]
        expected = -0.5 * y[i].flatten() @ Si @ Si @ y[i].flatten() + 0.5 * Si.trace()
        torch.testing.assert_close(dU_dt[i], expected, rtol=1e-9, atol=1e-10)


def test_gaussian_sampler_has_the_gaussian_covariance():
    """sample() is linear in its white noise: recover the linear map from basis noises and compare A A^T with
    Sigma + t I exactly (float64), plus a statistical check of the draws themselves."""
    g = torch.Generator().manual_seed(2)
    C, H, W, t = 2, 3, 4, 0.25
    P = random_spectrum(H, W, C, g)
    G = StationaryGaussian(C, (H, W)).double()
    G.set(torch.tensor([0.5, -1.0], dtype=torch.float64), P)
    Sigma = dense_covariance(P) + t * torch.eye(C * H * W, dtype=torch.float64)
    y = G.sample(20000, t, g).flatten(1)
    assert y.shape == (20000, C * H * W)
    cov = torch.cov(y.T)
    se = (Sigma.diagonal()[:, None] * Sigma.diagonal()[None, :] + Sigma ** 2).sqrt() / math.sqrt(20000)
    assert ((cov - Sigma).abs() / se).max() < 5.5
    mean_err = (y.mean(dim=0) - torch.tensor([0.5, -1.0], dtype=torch.float64).repeat_interleave(H * W))
    assert (mean_err.abs() / (Sigma.diagonal() / 20000).sqrt()).max() < 5.5


def test_spectrum_estimate_equals_the_shift_averaged_covariance():
    """S_k is the DFT of the sample covariance averaged over all cyclic shifts (an exact identity);
    P = (N S + ring average of S, at k = 0 that of ring 1) / (N + 1) + floor * v I."""
    rng = np.random.default_rng(3)
    N, H, W, C = 7, 4, 4, 2
    x = rng.normal(0.3, 1.0, size=(N, H, W, C)).astype(np.float32)
    mean, P, n = stationary_spectrum(x, floor=1e-3, batch_size=3)
    assert n == N
    xs = torch.tensor(x, dtype=torch.float64).permute(0, 3, 1, 2)            # (N, C, H, W)
    torch.testing.assert_close(mean.double(), xs.mean(dim=(0, 2, 3)), rtol=1e-6, atol=1e-6)
    m = xs.mean(dim=(0, 2, 3)).view(1, C, 1, 1)
    shifted = torch.cat([torch.roll(xs - m, (a, b), dims=(2, 3)) for a in range(H) for b in range(W)])
    cov = shifted.flatten(1).T @ shifted.flatten(1) / len(shifted)            # (d, d) stationary by construction
    Fh = torch.tensor(np.fft.fft(np.eye(H), norm="ortho"))
    F = torch.kron(Fh, torch.tensor(np.fft.fft(np.eye(W), norm="ortho")))
    S = torch.zeros(H, W, C, C, dtype=torch.complex128)
    for c in range(C):
        for c2 in range(C):
            block = F @ cov[c * H * W:(c + 1) * H * W, c2 * H * W:(c2 + 1) * H * W].to(torch.complex128) @ F.conj().T
            S[..., c, c2] = block.diagonal().reshape(H, W)
    v = S.diagonal(dim1=-2, dim2=-1).real.mean()
    R = radial_average(S)
    R[0, 0] = R[0, 1]                                                         # k = 0: the target is ring round(|k|) = 1
    expected = (N * S + R) / (N + 1) + 1e-3 * v * torch.eye(C)
    torch.testing.assert_close(P, expected, rtol=1e-9, atol=1e-9)


def test_radial_average_by_hand():
    S = torch.arange(16, dtype=torch.float64).reshape(4, 4)
    R = radial_average(S)
    # wavenumbers 0, 1, -2, -1: ring round(|k|) = 1 holds |k| = 1 at (0,1), (0,3), (1,0), (3,0) (S = 1, 3, 4, 12)
    # and |k| = sqrt(2) at (1,1), (1,3), (3,1), (3,3) (S = 5, 7, 13, 15)
    assert R[0, 1] == R[1, 0] == R[3, 3] == R[1, 3] == (1 + 3 + 4 + 12 + 5 + 7 + 13 + 15) / 8
    # ring 2: |k| = 2 at (0,2), (2,0) and sqrt(5) at (1,2), (2,1), (2,3), (3,2); ring 3: sqrt(8) at (2,2) alone
    assert R[0, 0] == 0 and R[0, 2] == R[3, 2] == (2 + 8 + 6 + 9 + 11 + 14) / 6 and R[2, 2] == 10


@pytest.mark.parametrize("N", [1, 2])
def test_spectrum_is_positive_definite_for_any_number_of_images(N):
    x = np.random.default_rng(4).integers(0, 256, size=(N, 8, 8, 3)).astype(np.uint8)
    mean, P, n = stationary_spectrum(x)
    e = torch.linalg.eigvalsh(P)
    assert n == N and (e > 0).all() and torch.isfinite(P).all()
    torch.testing.assert_close(P, P.conj().transpose(-1, -2))
    G = StationaryGaussian(3, (8, 8))
    G.set(mean, P)
    assert math.isfinite(G.log_z())


def confining_model(seed, C=1, H=8, W=8, bound=1.0):
    """A randomly initialized new-default model (the last conv NOT zeroed, random norm weights and gains)."""
    torch.manual_seed(seed)
    cfg = UNetConfig(channels=C, base_width=4, num_scales=2, layers_per_block=2, emb_dim=16, num_freqs=4,
                     t_embedding="log", scale_energy=True, data_var=0.04, gaussian_term=True, image_size=(H, W),
                     energy_bound=bound)
    model = EnergyUNet(cfg).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("weight") and p.dim() == 1:                    # norm weights: not all ones
                p.mul_(torch.empty_like(p).uniform_(0.2, 3.0))
        model.unet.out.weight.mul_(10.0)                                   # a large network term
    g = torch.Generator().manual_seed(100 + seed)
    x = 0.5 + 0.2 * torch.randn(64, H, W, C, generator=g, dtype=torch.float64)
    mean, P, _ = stationary_spectrum(x.float().numpy())
    model.set_gaussian(mean, P)
    return model


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_network_term_is_bounded_and_every_probe_rises(seed):
    """|U - U_G| < B d at any input (docs/method.md §9), hence along the shift, contrast and noise probes
    U rises at least as fast as U_G minus 2 B d, and U_G's rise is quadratic: far enough out, every probe rises."""
    model = confining_model(seed)
    B, d = model.config.energy_bound, 64
    g = torch.Generator().manual_seed(seed)
    x = 0.5 + 0.2 * torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    m = model.gaussian.mean.double().view(1, -1, 1, 1)
    noise = torch.randn(4, 1, 8, 8, generator=g, dtype=torch.float64)
    direction = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    with torch.no_grad():
        for t in (0.0, 1e3):
            tt = torch.full((4,), t, dtype=torch.float64)
            U0 = model(x, tt)
            for a in (16.0, 100.0, 1e4):
                probes = {"shift": x + a, "contrast": m + a * (x - m), "noise": x + a * direction}
                for name, y in probes.items():
                    U, UG, R = model(y, tt), model.gaussian(y, tt), model.network_term(y, tt)
                    assert (R.abs() <= B * d).all(), (name, a, t)          # tanh saturates to 1 in floating point
                    torch.testing.assert_close(U, UG + R, rtol=1e-12, atol=0)
                    assert (U - U0 >= UG - model.gaussian(x, tt) - 2 * B * d).all(), (name, a, t)
                    if a >= 100 or t == 0:
                        assert (U > U0).all(), (name, a, t, U - U0)


def test_unbounded_network_term_is_not_confined_along_the_shift():
    """The contrast to the bound: the same random model without energy_bound (and no Gaussian term) has
    a network term that grows without limit along the shift probe, of a sign nothing controls."""
    growth = []
    for seed in range(3):
        torch.manual_seed(seed)
        cfg = UNetConfig(channels=1, base_width=4, num_scales=2, layers_per_block=2, emb_dim=16, num_freqs=4,
                         t_embedding="log", scale_energy=True, data_var=0.04)
        model = EnergyUNet(cfg).double()
        x = 0.5 + 0.2 * torch.randn(2, 1, 8, 8, dtype=torch.float64)
        t = torch.zeros(2, dtype=torch.float64)
        with torch.no_grad():
            growth.append([(model(x + b, t) - model(x, t)).min().item() for b in (16.0, 256.0)])
    # the energy moves by thousands of nats (~ b^2 asymptotically) and, for some initializations, falls:
    # the density along the shift then grows without bound (seeds 0 and 1 fall, seed 2 rises; the margins
    # are 10^3 - 10^4 nats, far beyond any floating-point difference between machines)
    assert all(abs(u256) > 1000 for _, u256 in growth)
    assert any(u256 < -1000 for _, u256 in growth)


def test_model_scores_match_finite_differences():
    model = confining_model(0, C=2, H=8, W=4)
    g = torch.Generator().manual_seed(5)
    y = 0.5 + 0.3 * torch.randn(3, 2, 8, 4, generator=g, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.05, 20.0], dtype=torch.float64)
    _, grad_y, dU_dt = energy_and_scores(model, y, t)
    with torch.no_grad():
        v = torch.randn(y.shape, generator=g, dtype=torch.float64)
        h = 1e-5
        fd_y = (model(y + h * v, t) - model(y - h * v, t)) / (2 * h)
        torch.testing.assert_close((grad_y * v).sum(dim=(1, 2, 3)), fd_y, rtol=1e-6, atol=1e-7)
        ht = 1e-5 * t
        fd_t = (model(y, t + ht) - model(y, t - ht)) / (2 * ht)
        torch.testing.assert_close(dU_dt, fd_t, rtol=1e-6, atol=1e-6)


def test_zero_init_starts_as_the_gaussian_and_checkpoints_round_trip(tmp_path):
    cfg = UNetConfig(channels=1, base_width=4, num_scales=2, layers_per_block=2, emb_dim=16, num_freqs=4,
                     scale_energy=True, data_var=0.04, gaussian_term=True, image_size=[8, 8], energy_bound=1.0,
                     zero_init_out=True)
    assert cfg.image_size == (8, 8)
    model = EnergyUNet(cfg)
    x = np.random.default_rng(6).random((10, 8, 8, 1)).astype(np.float32)
    model.set_gaussian(*stationary_spectrum(x)[:2])
    y, t = torch.rand(3, 1, 8, 8), torch.tensor([0.0, 1.0, 1e3])
    torch.testing.assert_close(model(y, t), model.gaussian(y, t))
    path = tmp_path / "ckpt.pt"
    with torch.no_grad():
        model.unet.out.weight.normal_()
    torch.save({"model": model.state_dict(), "model_config": cfg.to_dict(), "kind": "energy", "step": 1}, path)
    loaded, _ = load_model(path)
    torch.testing.assert_close(loaded(y, t), model(y, t))
    assert loaded.gaussian.log_z() == model.gaussian.log_z()


def test_bad_options_are_one_line_errors():
    with pytest.raises(ValueError, match="gaussian_term needs image_size"):
        UNetConfig(gaussian_term=True)
    with pytest.raises(ValueError, match="energy_bound must be > 0"):
        UNetConfig(energy_bound=0.0)
    with pytest.raises(ValueError, match="floor must be > 0"):
        stationary_spectrum(np.zeros((2, 4, 4, 1), np.float32), floor=0)
    model = confining_model(0)
    with pytest.raises(ValueError, match="fitted to 8x8 images; got 16x16"):
        model(torch.rand(1, 1, 16, 16, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def test_gaussian_apply_matches_dense_matrix_powers():
    g = torch.Generator().manual_seed(7)
    C, H, W, t = 2, 4, 3, 0.3
    P = random_spectrum(H, W, C, g)
    G = StationaryGaussian(C, (H, W)).double()
    G.set(torch.zeros(C, dtype=torch.float64), P)
    S = dense_covariance(P) + t * torch.eye(C * H * W, dtype=torch.float64)
    e, Q = torch.linalg.eigh(S)
    v = torch.randn(2, C, H, W, generator=g, dtype=torch.float64)
    for power in (1, 0.5, -1):
        expected = v.flatten(1) @ (Q @ torch.diag(e ** power) @ Q.T)
        torch.testing.assert_close(G.apply(v, t, power).flatten(1), expected, rtol=1e-10, atol=1e-10)


def test_ais_recovers_log_z_of_an_exact_gaussian_with_a_mismatched_reference():
    """Target: an exact Gaussian energy plus a constant (log Z known); reference: another Gaussian (spectrum
    off by factors 0.6 - 1.6, shifted mean). The estimate must fall within 3 standard errors of the truth and
    the standard error must be small (0.1 nats: the test can fail)."""
    from ais import ais, summarize
    g = torch.Generator().manual_seed(8)
    C, H, W = 1, 4, 4
    P = random_spectrum(H, W, C, g) * 0.01
    true = StationaryGaussian(C, (H, W)).double()
    true.set(torch.tensor([0.5], dtype=torch.float64), P)
    factor = 0.6 + torch.rand(H, W, generator=g, dtype=torch.float64)
    factor = 0.5 * (factor + torch.roll(factor.flip(0, 1), (1, 1), (0, 1)))        # keeps P_{-k} = conj(P_k)
    ref = StationaryGaussian(C, (H, W)).double()
    ref.set(torch.tensor([0.45], dtype=torch.float64), P * factor[..., None, None])
    energy = lambda y, t: true(y.double(), t.double()).to(y.dtype) + 7.0
    log_w, info = ais(energy, ref, OneGenerator(256, 0), n_levels=128)
    log_z, se, ess = summarize(log_w.numpy())
    assert se < 0.1 and ess > 25
    assert abs(log_z - (true.log_z() - 7.0)) < 3 * se + 1e-4, (log_z, true.log_z() - 7.0, se)
    assert info["acceptance"].min() > 0.3 and info["nfe"] == 1 + 128 + 127
    assert info["t"][0] == 1e3 and info["t"][-1] == 0 and (np.diff(info["t"]) < 0).all()


def cosine_energy():
    """(energy, reference Gaussian, exact log Z(0)): U(y, t) = |y|^2 / (2 (s2 + t)) + d/2 log(1 + t/s2) +
    1.5 sum_i cos(2 y_i) / (1 + t) on 2x2 images (d = 4); at t = 0 a product of d identical 1-D densities,
    so Z(0) = (int exp(-y^2 / (2 s2) - 1.5 cos 2y) dy)^d by quadrature."""
    s2, d = 0.5, 4
    ref = StationaryGaussian(1, (2, 2)).double()
    ref.set(torch.zeros(1, dtype=torch.float64), torch.full((2, 2, 1, 1), s2, dtype=torch.complex128))

    def energy(y, t):
        y, t = y.double(), t.double()
        return (ref(y, t) + 1.5 * torch.cos(2 * y).flatten(1).sum(dim=1) / (1 + t)).float()

    z = np.linspace(-12, 12, 200_001)
    return energy, ref, d * math.log(np.trapezoid(np.exp(-z ** 2 / (2 * s2) - 1.5 * np.cos(2 * z)), z))


def test_ais_recovers_log_z_of_a_non_gaussian_energy_known_by_quadrature():
    """U(y, t) = |y|^2 / (2 (s2 + t)) + d/2 log(1 + t/s2) + 1.5 sum_i cos(2 y_i) / (1 + t): at t = 0 a product of
    d = 4 identical 1-D densities, Z(0) = (int exp(-y^2 / (2 s2) - 1.5 cos 2y) dy)^4 by quadrature. Also
    without the Gaussian transport (plain AIS along t): the same answer, with more levels."""
    from ais import ais, summarize
    energy, ref, log_z_true = cosine_energy()
    for transport, levels, max_se in ((True, 256, 0.1), (False, 384, 0.2)):
        log_w, info = ais(energy, ref, OneGenerator(512, 1), n_levels=levels, transport=transport)
        log_z, se, ess = summarize(log_w.numpy())
        assert se < max_se, (transport, se)
        assert abs(log_z - log_z_true) < 3 * se, (transport, log_z, log_z_true, se)
    # plain importance sampling from the Gaussian at t = 0 (AIS without moves): unbiased too
    from ais import importance
    log_z, se, ess = summarize(importance(energy, ref, 100_000, torch.Generator().manual_seed(2), 8192).numpy())
    assert se < 0.025 and abs(log_z - log_z_true) < 3 * se, (log_z, log_z_true, se)


def test_tuned_ais_fixes_a_bad_step_and_still_recovers_log_z():
    """ais.tune on the quadrature energy above, started from a MALA step 30 times too large (acceptance near 0
    untuned): the pilot's h per level bring the fresh run's acceptance to every level above 0.3, its grid
    decreases strictly from t_max to 0 with the requested number of levels, and the tuned run (fresh seeds,
    h and grid fixed) still recovers the quadrature log Z within 3 standard errors."""
    from ais import ais, summarize, tune
    energy, ref, log_z_true = cosine_energy()
    _, untuned = ais(energy, ref, OneGenerator(64, 3), n_levels=64, step=30.0)
    assert untuned["acceptance"].mean() < 0.1
    grid, steps, pilot = tune(energy, ref, OneGenerator(64, 4), 256, pilot_levels=128, step=30.0)
    assert len(grid) == 257 and grid[0] == 1e3 and grid[-1] == 0 and (np.diff(grid) < 0).all()
    assert len(steps) == 255 and (steps > 0).all() and len(pilot["inc_sd"]) == 128
    log_w, info = ais(energy, ref, OneGenerator(512, 5), grid=grid, steps=steps)
    assert info["acceptance"].min() > 0.3
    log_z, se, ess = summarize(log_w.numpy())
    assert se < 0.1, se
    assert abs(log_z - log_z_true) < 3 * se, (log_z, log_z_true, se)


def test_probes_rise_for_random_confining_models_and_match_the_bound():
    """eval.probes on randomly initialized new-default models: along every probe, at t = 0 and t_max, -log p
    at the far end exceeds the data's, and the rise is at least the Gaussian term's rise minus 2 B / ln 2 bits/dim."""
    from eval import probes
    for seed in range(2):
        model = confining_model(seed)
        x = (0.5 + 0.2 * torch.randn(8, 1, 8, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
        far = dict(shift=(0, 16), contrast=(1, 64), noise=(0, 16), direction=(0, 16))
        r = probes(model, x, 0.0, False, amounts=far, generator=torch.Generator().manual_seed(1))
        rg = probes(model.gaussian, x, 0.0, False, amounts=far, generator=torch.Generator().manual_seed(1))
        slack = 2 * model.config.energy_bound / math.log(2)
        for name in far:
            for key in ("t=0", "t=1000"):
                (a0, a1), (g0, g1) = r[name][key], rg[name][key]
                assert a1 - a0 >= g1 - g0 - slack - 1e-9, (seed, name, key)
                if key == "t=0":
                    assert a1 > a0, (seed, name)


def gaussian_checkpoint(tmp_path):
    """(model, checkpoint path, data folder): a new-default model with the last conv at zero, fitted to
    200 random 8x8 fields, saved as train.py would."""
    cfg = UNetConfig(channels=1, base_width=4, num_scales=2, layers_per_block=2, emb_dim=8, num_freqs=4,
                     t_embedding="log", scale_energy=True, data_var=0.04, gaussian_term=True, image_size=(8, 8),
                     energy_bound=1.0, zero_init_out=True)
    model = EnergyUNet(cfg)
    rng = np.random.default_rng(9)
    data = tmp_path / "data"
    data.mkdir()
    for split, n in (("train", 200), ("val", 64)):
        np.save(data / f"{split}.npy", (0.5 + 0.1 * rng.standard_normal((n, 8, 8, 1))).astype(np.float32))
    mean, P, _ = stationary_spectrum(np.load(data / "train.npy"))
    model.set_gaussian(mean, P)
    torch.save({"model": model.state_dict(), "model_config": cfg.to_dict(), "kind": "energy", "step": 1,
                "config": {"data_dir": str(data)}}, tmp_path / "ckpt.pt")
    return model, tmp_path / "ckpt.pt", data


def test_eval_certifies_a_model_that_is_exactly_its_gaussian(tmp_path):
    """A new-default model with the last conv at zero IS its Gaussian term: AIS with the Gaussian transport
    must return log Z_G (every weight equal: ESS = K), and the one-pass constant c must agree with it
    within its standard error. End to end through eval.py's command line."""
    import eval as eval_script
    model, _, data = gaussian_checkpoint(tmp_path)
    r = eval_script.main([f"--ckpt={tmp_path / 'ckpt.pt'}", f"--data_dir={data}", "--psnr_images=0", "--device=cpu",
                          "--ais_chains=16", "--ais_steps=16", "--n_draws=4", f"--out={tmp_path}"])
    assert abs(r["ais_log_z"] - model.gaussian.log_z()) < 1e-3 * abs(model.gaussian.log_z())
    assert r["ais_ess"] > 15.99 and r["ais_log_z_se"] < 1e-3
    assert abs(r["log_norm_const"] - r["ais_log_z"]) < 4 * r["log_norm_const_stderr"]
    assert r["ais_nfe_per_chain"] == 1 + 16 + 15 and r["ais_chains"] == 16
    # importance sampling from the Gaussian: every weight equal too
    ri = eval_script.main([f"--ckpt={tmp_path / 'ckpt.pt'}", f"--data_dir={data}", "--psnr_images=0", "--device=cpu",
                           "--is_draws=300", "--batch_size=128", f"--out={tmp_path / 'is'}"])
    assert "ais_log_z" not in ri and ri["is_draws"] == 300 and ri["is_ess"] > 299.99 and ri["is_enough_ess"]
    assert r["ais_enough_ess"]
    from eval import enough_ess                 # the rule: ESS >= min(30, n / 2)
    assert enough_ess(30, 10_000) and not enough_ess(29.9, 10_000) and enough_ess(8, 16) and not enough_ess(7.9, 16)
    assert abs(ri["is_log_z"] - model.gaussian.log_z()) < 1e-3 * abs(model.gaussian.log_z()) and ri["is_log_z_se"] < 1e-3
    assert r["ais_delta_bpd"] == pytest.approx((r["log_norm_const"] - r["ais_log_z"]) / (64 * math.log(2)))
    # the bracket of the energy bound holds the certified NLL, and is 2 B / ln 2 bits/dim wide
    assert r["bracket_nll_bpd_lo"] < r["ais_nll_bpd"] < r["bracket_nll_bpd_hi"]
    assert r["bracket_nll_bpd_hi"] - r["bracket_nll_bpd_lo"] == pytest.approx(2 / math.log(2))


def test_figures_probes_command(tmp_path):
    """figures.py probes writes its figure and numbers; for a model that is exactly its Gaussian term the
    model's curves and the Gaussian's coincide (both normalized: c from the data vs the exact log Z_G)."""
    import figures
    model, ckpt, data = gaussian_checkpoint(tmp_path)
    r = figures.main(["probes", f"--ckpt={ckpt}", f"--data_dir={data}", "--max_images=8", "--const_images=64",
                      "--n_draws=4", "--device=cpu", f"--out={tmp_path / 'p'}"])
    for ext in ("png", "pdf", "json"):
        assert (tmp_path / "p" / f"probes.{ext}").stat().st_size > 0
    assert set(r["model"]) == {"shift", "contrast", "noise", "direction"}
    for name in r["model"]:
        for key in ("t=0", "t=1000"):
            a, g = np.array(r["model"][name][key]), np.array(r["gaussian"][name][key])
            assert np.abs(a - g).max() < 0.05, (name, key)           # c vs log Z_G: within the error of c
