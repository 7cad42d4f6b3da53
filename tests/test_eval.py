"""eval.py, sample.py and figures.py against objects whose answers are known.

An exact Gaussian energy U*(y, t) + K (x ~ N(mu, Sigma), rotated, so Hutchinson's estimator has
variance) gives the true NLL, d_eff, denoiser and moments; the constant K must be recovered by
eval's constant. Each command then runs once on a tiny checkpoint built here.
"""
import json
import math
import os
import re
import subprocess
import sys

import matplotlib
matplotlib.use("Agg")
import numpy as np
import pytest
import torch

import eval as ev
import figures
import sample
from model import Denoiser, EnergyUNet, UNetConfig

torch.set_num_threads(1)


class GaussianEnergy:
    """U(y, t) = -log N(y; mu, Sigma + t I) + K for images (B, C, H, W); Sigma = Q diag(s2) Q^T."""

    def __init__(self, shape, mu=0.5, s=(0.05, 0.3), K=1000.0, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.shape, self.d, self.K = shape, math.prod(shape), K
        self.mu = (mu + 0.1 * torch.randn(self.d, generator=g)).double()
        self.s2 = (s[0] + (s[1] - s[0]) * torch.rand(self.d, generator=g)).double() ** 2
        self.Q = torch.linalg.qr(torch.randn(self.d, self.d, generator=g, dtype=torch.float64))[0]

    def __call__(self, y, t):
        r = (y.flatten(1).double() - self.mu) @ self.Q                       # (B, d) eigen-coordinates
        v = self.s2 + t.double()[:, None]                                     # (B, d)
        return ((0.5 * r ** 2 / v + 0.5 * torch.log(2 * math.pi * v)).sum(dim=1) + self.K).to(y.dtype)

    def sample(self, n, seed=1):
        z = torch.randn(n, self.d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        return (self.mu + (z * self.s2.sqrt()) @ self.Q.T).float().view(n, *self.shape)

    def entropy(self):
        return 0.5 * torch.log(2 * math.pi * math.e * self.s2).sum().item()

    def deff(self, x, t):
        """E ||x - x_hat||^2 / t per image: sum (1 - a)^2 r^2 / t + a^2, a = s2 / (s2 + t)."""
        r = (x.flatten(1).double() - self.mu) @ self.Q
        a = self.s2 / (self.s2 + t)
        return ((1 - a) ** 2 * r ** 2 / t + a ** 2).sum(dim=1)

    def mean_energy(self, x, t):
        """E_z U(x + sqrt(t) z, t) per image, without K: -E log p(y, t)."""
        r = (x.flatten(1).double() - self.mu) @ self.Q
        v = self.s2 + t
        return (0.5 * (r ** 2 + t) / v + 0.5 * torch.log(2 * math.pi * v)).sum(dim=1)


def as_array(x):
    """(N, C, H, W) tensor -> (N, H, W, C) float32 numpy, the dataset layout."""
    return x.permute(0, 2, 3, 1).contiguous().numpy()


def quantize(x):
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


@pytest.mark.parametrize("quantized", [False, True])
def test_nll_of_gaussian_energy_is_its_entropy(quantized):
    U = GaussianEnergy((1, 4, 4), mu=0.5, s=(0.05, 0.1))
    x = U.sample(4000)
    images = quantize(x) if quantized else as_array(x)
    gen = torch.Generator().manual_seed(0)
    c, c_se = ev.estimate_log_norm_const(U, images, t_max=1e3, n_draws=4, batch_size=1000, generator=gen)
    # c recovers -K (the constant the energy omits) within its error; the error is sqrt(d/2)/sqrt(4 N)
    assert abs(c + U.K) < 4 * c_se + 0.01
    assert 0.5 * c_se * math.sqrt(4 * 4000) < math.sqrt(U.d / 2) < 2 * c_se * math.sqrt(4 * 4000)
    nll, se, logp = ev.nll(U, images, c, c_se, quantized, batch_size=1000)
    truth = U.entropy() / (U.d * math.log(2)) + (8.0 if quantized else 0.0)
    assert abs(nll - truth) < 4 * se + 1e-3, (nll, truth, se)
    assert logp.shape == (4000,)


def test_energy_denoiser_is_the_posterior_mean():
    U = GaussianEnergy((1, 4, 4))
    y, t = U.sample(8) + 0.3 * torch.randn(8, 1, 4, 4), torch.full((8,), 0.09)
    x_hat = ev.energy_denoiser(U)(y, t).double().flatten(1)
    Sigma = U.Q @ torch.diag(U.s2) @ U.Q.T
    ref = U.mu + (y.flatten(1).double() - U.mu) @ torch.linalg.solve(Sigma + 0.09 * torch.eye(U.d), Sigma)
    torch.testing.assert_close(x_hat, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("t", [1e-6, 1e-2, 1.0, 1e2])
def test_deff_and_noisy_logp_match_analytic(t):
    U = GaussianEnergy((1, 4, 4))
    x = U.sample(256)
    gen = torch.Generator().manual_seed(1)
    logp, deff = ev.logp_and_deff(U, x, t, c=-U.K, n_draws=4, generator=gen)
    for est, ref in ((deff, U.deff(x, t)), (-logp, U.mean_energy(x, t))):
        diff = (est - ref).numpy()
        m, se = ev.mean_and_stderr(diff)
        assert abs(m) < 4 * se + 1e-4 * abs(ref.mean().item()), (t, m, se)
    # the dataset average approaches d at small t and sum s2 / (s2 + t) in general
    assert abs(deff.mean().item() / (U.s2 / (U.s2 + t)).sum().item() - 1) < 0.1


def test_ode_nll_agrees_with_one_pass_nll():
    U = GaussianEnergy((1, 4, 4), s=(0.05, 0.3))
    x = U.sample(128)
    gen = torch.Generator().manual_seed(2)
    ode, nfe = ev.ode_nll(U, x, U.mu.float().view(1, 4, 4), t_min=1e-9, t_max=1e3, n_steps=16, generator=gen)
    one_pass = U(x, torch.zeros(128)).double() - U.K                     # exact -log p(x)
    diff = (ode - one_pass).numpy()
    m, se = ev.mean_and_stderr(diff)
    assert nfe == 64
    assert se > 0.01                                     # the Hutchinson noise is really there
    assert abs(m) < 4 * se + 0.2, (m, se)           # + RK4's bias at 16 steps, ~0.15 nats
    ode8, _ = ev.ode_nll(U, x, U.mu.float().view(1, 4, 4), n_steps=16, n_probes=8, generator=gen)
    m8, se8 = ev.mean_and_stderr((ode8 - one_pass).numpy())
    assert se8 < 0.6 * se and abs(m8) < 4 * se8 + 0.05, (m8, se8, se)  # 8 probes: ~1/sqrt(8) of the noise


# ----------------------------------------------------------------------------- commands on a tiny checkpoint
TINY = dict(channels=1, base_width=4, num_scales=1, layers_per_block=2, emb_dim=8, num_freqs=4)


def save_ckpt(path, kind, seed=0, config=None, **overrides):
    cfg = UNetConfig(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = (EnergyUNet if kind == "energy" else Denoiser)(cfg)
    torch.save(dict(model=model.state_dict(), model_config=cfg.to_dict(), kind=kind, config=config or {}, step=7), path)
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    data = root / "data"
    data.mkdir()
    for split, n in (("train", 24), ("val", 16)):
        np.save(data / f"{split}.npy", rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8))
    rgb, big = root / "rgb", root / "big"
    for folder, shape in ((rgb, (4, 8, 8, 3)), (big, (4, 16, 16, 1))):
        folder.mkdir()
        np.save(folder / "val.npy", rng.integers(0, 256, shape, dtype=np.uint8))
    return dict(root=root, data=str(data), rgb=str(rgb), big=str(big), energy=save_ckpt(root / "e.pt", "energy"),
                trained=save_ckpt(root / "t.pt", "energy", config=dict(data_dir=str(data))),
                energy2=save_ckpt(root / "e2.pt", "energy", seed=1), denoiser=save_ckpt(root / "den.pt", "denoiser"))


def test_eval_command(tiny, capsys):
    out = tiny["root"] / "eval"
    r = ev.main([f"--ckpt={tiny['energy']}", f"--data_dir={tiny['data']}", "--max_images=8", "--n_draws=2",
                 f"--denoiser_ckpt={tiny['denoiser']}", "--ode_images=2", "--ode_steps=2", "--ode_probes=2", "--device=cpu",
                 f"--out={out}"])
    saved = json.loads((out / "results.json").read_text())
    for key in ("nll_bpd", "nll_bpd_stderr", "log_norm_const", "log_norm_const_stderr", "d", "n_images", "n_draws"):
        assert key in saved
    assert saved["d"] == 64 and saved["n_images"] == 8 and saved["n_draws"] == 2
    assert len(saved["psnr"]["energy"]) == len(saved["psnr"]["denoiser"]) == 9
    assert saved["ode"]["nfe_per_image"] == 8 and math.isfinite(saved["ode"]["nll_bpd"])
    # the printed NLL is the one recomputed from the saved constant and the model's energies
    model, _ = ev.load_model(tiny["energy"], "cpu", kind="energy")
    images = np.load(os.path.join(tiny["data"], "val.npy"))[:8]
    U0 = ev.energies(model, images)
    assert abs(ev.nll_bits_per_dim(U0.mean(), r["log_norm_const"], 64, True) - saved["nll_bpd"]) < 1e-6
    printed = capsys.readouterr()
    assert "NLL" in printed.out
    for bar in ("constant c", "NLL", "PSNR, 9 levels", "denoiser PSNR", "ODE check"):   # progress: count, rate, ETA
        assert re.search(bar + r": 100%.*\d+/\d+ \[[\d:]+<[\d:]+, *[\d.]+ *(batch/s|s/batch)\]", printed.err), bar


def test_progress_bars_on_rank_0_only(capsys, monkeypatch):
    assert list(ev.progress(range(3), 3, "work")) == [0, 1, 2] and "work: 100%" in capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")
    assert list(ev.progress(range(3), 3, "work")) == [0, 1, 2] and capsys.readouterr().err == ""
    assert list(ev.progress(range(3), 3)) == [0, 1, 2]                  # no label: no bar


def test_eval_bad_input(tiny):
    with pytest.raises(SystemExit, match="'denoiser' model but a 'energy'"):
        ev.main([f"--ckpt={tiny['denoiser']}", f"--data_dir={tiny['data']}"])
    with pytest.raises(SystemExit, match=r"3-channel images.*built for 1 channels"):
        ev.main([f"--ckpt={tiny['energy']}", f"--data_dir={tiny['rgb']}"])
    with pytest.raises(SystemExit, match=r"big/val.npy has images 16x16x1 but checkpoint .*t.pt was trained on 8x8x1"):
        ev.main([f"--ckpt={tiny['trained']}", f"--data_dir={tiny['big']}"])
    with pytest.raises(SystemExit, match="does not exist"):
        ev.main([f"--ckpt={tiny['root'] / 'nope.pt'}", f"--data_dir={tiny['data']}"])
    with pytest.raises(SystemExit, match="val.npy not found"):
        ev.main([f"--ckpt={tiny['energy']}", f"--data_dir={tiny['root']}"])
    with pytest.raises(SystemExit, match="unknown key --max_image"):
        ev.main([f"--ckpt={tiny['energy']}", "--max_image=3"])


def test_evaluation_terms_equal_the_training_loss_without_double_backward():
    """eval.score_matching_terms (train.py's evaluation) gives losses.dual_score_matching's numbers from the
    same noise draws, and its terms carry no graph into the parameters."""
    from losses import dual_score_matching
    torch.manual_seed(0)
    model = EnergyUNet(UNetConfig(**TINY))
    x = torch.rand(3, 1, 8, 8)
    t = torch.tensor([1e-4, 0.1, 10.0])
    ours = ev.score_matching_terms(model, x, t, 0.7, torch.Generator().manual_seed(5))
    ref = dual_score_matching(model, x, t, 0.7, torch.Generator().manual_seed(5))
    for k in ("loss", "space", "time"):
        assert not ours[k].requires_grad and ref[k].requires_grad, k
        torch.testing.assert_close(ours[k], ref[k].detach(), rtol=1e-5, atol=1e-7, msg=k)
        assert ours[k].abs().min() > 0, k


def test_integer_noise_levels_give_the_float_answer():
    """The entry points of eval cast an integer t to the images' dtype (a bare EnergyUNet(y, t_int) does not)."""
    torch.manual_seed(0)
    model = EnergyUNet(UNetConfig(**TINY, data_var=0.05, analytic_term=True))
    y = torch.rand(2, 1, 8, 8)
    t_int, t_float = torch.tensor([1, 3]), torch.tensor([1.0, 3.0])
    den = ev.energy_denoiser(model)
    torch.testing.assert_close(den(y, t_int), den(y, t_float))
    assert torch.isfinite(den(y, t_int)).all()
    images = as_array(y)
    noisy = [ev.energies(model, images, t=t, generator=torch.Generator().manual_seed(1)) for t in (3, 3.0)]
    np.testing.assert_array_equal(*noisy)


def test_ema_weights_are_used_when_saved(tiny, tmp_path):
    """--weights=auto takes the checkpoint's EMA, --weights=model the raw weights; --weights=ema needs one."""
    ckpt = torch.load(tiny["energy"], weights_only=True)
    model, _ = ev.load_model(tiny["energy"], "cpu", kind="energy")
    ckpt["ema"] = {n: p.detach() * 0.9 for n, p in model.named_parameters()}
    torch.save(ckpt, tmp_path / "ema.pt")
    auto, c_auto = ev.load_weights(str(tmp_path / "ema.pt"), "cpu")
    raw, c_raw = ev.load_weights(str(tmp_path / "ema.pt"), "cpu", weights="model")
    assert c_auto["weights"] == "ema" and c_raw["weights"] == "model"
    for (n, p), q in zip(auto.named_parameters(), raw.parameters()):
        torch.testing.assert_close(p.detach(), ckpt["ema"][n])
        torch.testing.assert_close(q.detach(), ckpt["model"][n])
    assert ev.load_weights(tiny["energy"], "cpu")[1]["weights"] == "model"          # no EMA saved: the raw ones
    with pytest.raises(ValueError, match="no EMA weights"):
        ev.load_weights(tiny["energy"], "cpu", weights="ema")
    common = [f"--data_dir={tiny['data']}", "--max_images=4", "--psnr_images=0", "--device=cpu", f"--out={tmp_path}"]
    r_auto = ev.main([f"--ckpt={tmp_path / 'ema.pt'}", *common])
    r_raw = ev.main([f"--ckpt={tmp_path / 'ema.pt'}", "--weights=model", *common])
    assert r_auto["weights"] == "ema" and r_raw["weights"] == "model" and r_auto["nll_bpd"] != r_raw["nll_bpd"]


def test_image_shape_in_the_checkpoint_is_enough(tiny, tmp_path):
    """A checkpoint whose config has image_shape needs no training data_dir (any working directory)."""
    path = save_ckpt(tmp_path / "shape.pt", "energy", config=dict(image_shape=[8, 8, 1], data_dir="/nowhere"))
    r = sample.main([f"--ckpt={path}", "--num_samples=1", "--n_steps=1", "--device=cpu", f"--out={tmp_path}"])
    assert np.load(tmp_path / "samples.npy").shape == (1, 8, 8, 1) and r["n"] == 1
    ckpt = torch.load(path, weights_only=True)
    with pytest.raises(ValueError, match="trained on 8x8x1"):
        ev.check_images(np.zeros((2, 16, 16, 1), np.uint8), "x.npy", ckpt, path)


# ----------------------------------------------------------------------------- sample.py
def eigen_moments(U, x):
    """Sample mean (in units of its standard error) and variance / truth of the eigen-coordinates."""
    r = (x.flatten(1).double() - U.mu) @ U.Q
    return r.mean(0) / (U.s2.sqrt() / math.sqrt(len(x))), r.var(0) / U.s2


class OneGenerator:
    """The noise interface of ais.SeededNoise from one generator (fast for many samples or chains)."""

    def __init__(self, n, seed):
        self.n, self.g = n, torch.Generator().manual_seed(seed)

    def randn(self, shape):
        return torch.randn(self.n, *shape, generator=self.g)

    def rand(self):
        return torch.rand(self.n, generator=self.g)


def test_sampler_moments_on_gaussian_energy():
    U, n = GaussianEnergy((1, 4, 4), s=(0.05, 0.3)), 1000
    x, st = sample.reverse_diffusion(U, OneGenerator(n, 0), (1, 4, 4), n_steps=64, mala_steps=1, mala_step=0.5)
    z, ratio = eigen_moments(U, x)
    assert st["nfe"] == 129 and 0.5 < st["acceptance"] < 0.95
    assert z.abs().max() < 4.5                                       # 16 means, each N(0, 1) if unbiased
    assert (ratio - 1).abs().max() < 4.5 * math.sqrt(2 / n)           # each variance ratio ~ 1 +- sqrt(2/n)
    assert abs(ratio.mean() - 1) < 4 * math.sqrt(2 / n / 16)
    # without MALA the same 64 Euler-Maruyama steps inflate the variance (~13%): the correction is real
    x, st = sample.reverse_diffusion(U, OneGenerator(n, 1), (1, 4, 4), n_steps=64)
    assert st["acceptance"] is None and eigen_moments(U, x)[1].mean() > 1.07


def test_sampler_one_generator_per_seed():
    U = GaussianEnergy((1, 4, 4))
    a, _ = sample.reverse_diffusion(U, sample.SeededNoise([5, 6, 7], "cpu"), (1, 4, 4), n_steps=8, mala_steps=1)
    b, _ = sample.reverse_diffusion(U, sample.SeededNoise([6], "cpu"), (1, 4, 4), n_steps=8, mala_steps=1)
    torch.testing.assert_close(a[1:2], b)


def test_sample_command(tiny, capsys):
    out = tiny["root"] / "samples"
    r = sample.main([f"--ckpt={tiny['energy']}", "--num_samples=5", "--n_steps=4", "--mala_steps=1", "--image_size=8",
                     "--batch_size=2", f"--data_dir={tiny['data']}", "--device=cpu", f"--out={out}"])
    assert (out / "samples.png").exists() and np.load(out / "samples.npy").shape == (5, 8, 8, 1)
    saved = json.loads((out / "samples.json").read_text())
    assert saved["nfe_per_sample"] == 10 and 0 <= saved["acceptance"] <= 1 and len(saved["logp_nats"]) == 5
    assert saved["seeds"] == [0, 1, 2, 3, 4] and "mean log p" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="'denoiser' model but a 'energy'"):
        sample.main([f"--ckpt={tiny['denoiser']}"])
    with pytest.raises(SystemExit, match="pass --image_size"):
        sample.main([f"--ckpt={tiny['energy']}", f"--out={out}"])
    assert sample.main([f"--ckpt={tiny['trained']}", "--num_samples=1", "--n_steps=1", f"--out={out}"])["n"] == 1   # 8x8 from its data


def test_sample_torchrun_matches_one_process(tiny):
    """Seeds split over 2 ranks (gloo) and gathered give the samples of one process, in seed order."""
    args = [f"--ckpt={tiny['energy']}", "--num_samples=5", "--n_steps=3", "--image_size=8", "--device=cpu"]
    one = tiny["root"] / "one"
    sample.main(args + ["--batch_size=5", f"--out={one}"])
    two = tiny["root"] / "two"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "sample.py",
                    *args, "--batch_size=2", f"--out={two}"], check=True, env=env, capture_output=True,
                   cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    a, b = np.load(one / "samples.npy"), np.load(two / "samples.npy")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())


# ----------------------------------------------------------------------------- figures.py
def test_gumbel_fit_recovers_parameters():
    n, mu, beta = 20000, 9.57, 3.17
    x = np.random.default_rng(0).gumbel(mu, beta, n)
    m, b = figures.gumbel_fit(x)
    assert abs(m - mu) < 4 * beta * math.sqrt(1.109 / n)              # asymptotic MLE standard errors
    assert abs(b - beta) < 4 * beta * math.sqrt(0.608 / n)
    # the likelihood is maximal there: any nearby (mu, beta) is less likely
    ll = lambda m_, b_: np.log(figures.gumbel_pdf(x, m_, b_)).sum()
    for dm, db in ((0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)):
        assert ll(m + dm, b + db) < ll(m, b)
    scipy_stats = pytest.importorskip("scipy.stats")
    np.testing.assert_allclose((m, b), scipy_stats.gumbel_r.fit(x), rtol=1e-3)


@pytest.mark.parametrize("shape,levels", [((1, 8, 8), 6), ((3, 4, 8), 6), ((2, 16, 16), 2)])
def test_haar_is_orthonormal(shape, levels):
    d = math.prod(shape)
    low, details = figures.haar(torch.eye(d, dtype=torch.float64).view(d, *shape), levels)
    M = torch.cat([low.flatten(1)] + [dt.flatten(1) for dt in details], dim=1)      # (d, d): row i = T e_i
    torch.testing.assert_close(M @ M.T, torch.eye(d, dtype=torch.float64))
    assert len(details) == min(levels, int(math.log2(min(shape[1:]))))
    assert low.shape[-2:] == tuple(s // 2 ** len(details) for s in shape[1:])
    # participation ratio: 1/n for a single coefficient, ~2/pi for Gaussian noise
    n = d - low[0].numel()
    x = torch.cat([M[:1] * 0 + details_basis(shape, levels), torch.randn(4000, d, dtype=torch.float64) @ M]).view(-1, *shape)
    pr = figures.participation_ratio(x, levels)
    assert abs(pr[0].item() - 1 / n) < 1e-9 and abs(pr[1:].mean().item() - 2 / math.pi) < 0.05


def details_basis(shape, levels):
    """An image whose only non-zero Haar coefficient is the last detail coefficient."""
    d = math.prod(shape)
    low, details = figures.haar(torch.eye(d, dtype=torch.float64).view(d, *shape), levels)
    M = torch.cat([low.flatten(1)] + [dt.flatten(1) for dt in details], dim=1)
    return M[:, -1][None]                                               # M orthogonal: x = M^T e_last


def test_figure_commands(tiny):
    common = [f"--data_dir={tiny['data']}", "--max_images=8", "--const_images=4", "--device=cpu"]
    out = tiny["root"] / "figs"
    r3 = figures.main(["fig3", f"--ckpt={tiny['energy']}", "--n_shown=4", f"--out={out}", *common])
    r4 = figures.main(["fig4", f"--ckpt={tiny['energy']}", "--n_curves=2", "--n_grid=3", f"--out={out}", *common])
    r5 = figures.main(["fig5", f"--ckpt={tiny['energy']}", "--n_chosen=2", "--n_t=3", f"--out={out}", *common])
    r2 = figures.main(["fig2", f"--ckpt_a={tiny['energy']}", f"--ckpt_b={tiny['energy2']}", "--n_train=6",
                       f"--out={out}", *common])
    for name in ("fig2", "fig3", "fig4", "fig5"):
        for ext in ("png", "pdf", "json"):
            assert (out / f"{name}.{ext}").stat().st_size > 0
    assert len(r3["logp_db"]) == 8 and len(r3["shown_indices"]) == 4 and 0 <= r3["best_constant_level"] <= 1
    assert r4["haar_levels"] == 3 and len(r4["participation_ratio"]) == 8
    assert np.isnan(np.array(r4["heatmap_db"], dtype=float)[2, 1])     # a + b > 1 is left out
    assert len(r5["mean_deff_over_d"]) == 3 and r5["t"][0] == 1e-12 and r5["t"][-1] == 1e3
    assert len(r2["logp_a"]) == 12 and r2["n_train"] == 6 and r2["rms_diff_db"] > 0
    # the same model on both sides: identical log p up to the two constants
    same = figures.main(["fig2", f"--ckpt_a={tiny['energy']}", f"--ckpt_b={tiny['energy']}", "--n_train=6",
                         f"--out={out}", *common])
    assert same["rms_diff_db"] < 1e-9
    folders = figures.main(["subsets", f"--data_dir={tiny['data']}", "--n_train=10",
                            f"--out_prefix={tiny['root'] / 'sub'}"])
    first, last = (np.load(os.path.join(f, "train.npy")) for f in folders)
    full = np.load(os.path.join(tiny["data"], "train.npy"))
    assert (first == full[:10]).all() and (last == full[-10:]).all()
    with pytest.raises(SystemExit, match="2 N <= 24"):
        figures.main(["subsets", f"--data_dir={tiny['data']}", "--n_train=13"])
    with pytest.raises(SystemExit, match="usage"):
        figures.main(["fig9"])


def test_fig5_on_gaussian_energy(tmp_path):
    """Fig. 5's dataset curves equal the analytic ones: d_eff / d = mean s2 / (s2 + t), and
    mean log p(y, t) = -(entropy of N(mu, Sigma + t I)) in dB/dim."""
    U = GaussianEnergy((1, 4, 4))
    images = as_array(U.sample(512))
    r = figures.fig5(U, -U.K, images, tmp_path, n_chosen=2, n_t=4, n_draws=2)
    for t, deff, lp in zip(r["t"], r["mean_deff_over_d"], r["mean_logp_db"]):
        assert abs(deff / (U.s2 / (U.s2 + t)).mean().item() - 1) < 0.05, (t, deff)
        ref = -ev.DB_PER_NAT * 0.5 * torch.log(2 * math.pi * math.e * (U.s2 + t)).sum().item() / U.d
        assert abs(lp - ref) < 0.12, (t, lp, ref)             # ~5 standard errors (sqrt(d/2) nats / image)
    assert (tmp_path / "fig5.pdf").exists()
