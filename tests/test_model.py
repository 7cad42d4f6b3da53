"""model.py: shapes, the parameter count, scores against finite differences, the norm op's homogeneity
and second derivatives, gradients reaching every parameter, and bad input."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from kernels import group_norm_silu
from losses import dual_score_matching
from model import Denoiser, EnergyUNet, UNetConfig, build_model, count_parameters, energy_and_scores, load_model


def tiny(**kw):
    cfg = dict(channels=2, base_width=4, num_scales=2, layers_per_block=3, emb_dim=16, num_freqs=4)
    cfg.update(kw)
    return UNetConfig(**cfg)


def test_default_parameter_count_matches_the_reference():
    """docs/method.md §2.1: 8,649,856 parameters for colour and 8,647,552 for grayscale."""
    assert count_parameters(EnergyUNet(UNetConfig())) == 8_649_856
    assert count_parameters(EnergyUNet(UNetConfig(channels=1))) == 8_647_552
    assert count_parameters(Denoiser(UNetConfig())) == 8_649_856


@pytest.mark.parametrize("layers_per_block", [2, 3, 4])
def test_shapes_and_definitions(layers_per_block):
    torch.manual_seed(0)
    cfg = tiny(layers_per_block=layers_per_block)
    energy, denoiser = EnergyUNet(cfg), Denoiser(cfg)
    y, t = torch.rand(3, 2, 8, 12), torch.tensor([1e-3, 0.1, 10.0])
    U = energy(y, t)
    assert U.shape == (3,)
    f = energy.unet(y, t)
    assert f.shape == y.shape
    torch.testing.assert_close(U, 0.5 * (y * f).sum(dim=(1, 2, 3)))
    x_hat = denoiser(y, t)
    assert x_hat.shape == y.shape
    torch.testing.assert_close(x_hat, y - t.view(-1, 1, 1, 1) * denoiser.f(y, t))


def test_energy_is_zero_at_the_origin():
    energy = EnergyUNet(tiny())
    U = energy(torch.zeros(3, 2, 8, 8), torch.tensor([1e-9, 1.0, 1e3]))
    assert torch.equal(U, torch.zeros(3))


@pytest.mark.parametrize("preserve_scale", [True, False])
def test_scores_match_central_finite_differences(preserve_scale):
    torch.manual_seed(1)
    energy = EnergyUNet(tiny(preserve_scale=preserve_scale, groups=2)).double()
    y = torch.rand(3, 2, 8, 8, dtype=torch.float64)
    t = torch.tensor([1e-3, 0.5, 20.0], dtype=torch.float64)
    _, grad_y, dU_dt = energy_and_scores(energy, y, t)
    with torch.no_grad():
        v = torch.randn_like(y)
        h = 1e-5
        fd_y = (energy(y + h * v, t) - energy(y - h * v, t)) / (2 * h)     # directional derivative
        torch.testing.assert_close((grad_y * v).sum(dim=(1, 2, 3)), fd_y, rtol=1e-6, atol=1e-8)
        ht = 1e-5 * t
        fd_t = (energy(y, t + ht) - energy(y, t - ht)) / (2 * ht)
        torch.testing.assert_close(dU_dt, fd_t, rtol=1e-6, atol=1e-8)


def test_every_parameter_gets_a_gradient_from_the_dual_loss():
    """DDP needs every parameter in the graph; the noise-gain Linears get theirs through both terms."""
    torch.manual_seed(2)
    energy = EnergyUNet(tiny())
    dual_score_matching(energy, torch.rand(4, 2, 8, 8))["loss"].mean().backward()
    for name, p in energy.named_parameters():
        assert p.grad is not None and p.grad.abs().max() > 0, name


def test_time_term_reaches_the_time_embedding():
    """dU/dt depends on the parameters of the t path only through the double backward."""
    torch.manual_seed(3)
    energy = EnergyUNet(tiny())
    out = dual_score_matching(energy, torch.rand(4, 2, 8, 8))
    (g,) = torch.autograd.grad(out["time"].mean(), energy.unet.embed.mlp[0].weight)
    assert g.abs().max() > 0


def test_finite_at_the_ends_of_the_noise_range():
    torch.manual_seed(4)
    energy = EnergyUNet(tiny())
    x = torch.rand(4, 2, 8, 8)
    for t in (1e-9, 1e3):
        out = dual_score_matching(energy, x, torch.full((4,), t))
        assert all(torch.isfinite(v).all() for v in out.values()), t
        out["loss"].mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in energy.parameters()), t
        energy.zero_grad()


def normalized(x, groups, preserve_scale, eps=1e-5):
    """The op's pre-activation xhat, read off through the public op: d out / d gain at gain = 0 with
    weight 1 is silu'(0) * xhat = xhat / 2 (a forward-mode derivative, exact)."""
    N, C = x.shape[:2]
    op = lambda gain: group_norm_silu(x, torch.ones(C, dtype=x.dtype), gain, groups, eps=eps,
                                      preserve_scale=preserve_scale, impl="torch")
    zeros = torch.zeros(N, C, dtype=x.dtype)
    return 2 * torch.func.jvp(op, (zeros,), (torch.ones_like(zeros),))[1]


@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 3), G=st.integers(1, 3), per_group=st.integers(1, 3), H=st.integers(2, 5),
       W=st.integers(2, 5), a=st.floats(0.2, 20.0), seed=st.integers(0, 100))
def test_scale_preserving_norm_is_homogeneous(N, G, per_group, H, W, a, seed):
    """preserve_scale: xhat(a x) = a xhat(x) (degree 1); plain GroupNorm: xhat(a x) = xhat(x) (degree 0).
    Exact up to eps, so eps is made negligible here (1e-12) to test the structure sharply."""
    g = torch.Generator().manual_seed(seed)
    C = G * per_group
    x = 0.5 + 2 * torch.randn(N, C, H, W, generator=g, dtype=torch.float64) * torch.rand(N, C, 1, 1, generator=g, dtype=torch.float64).add(0.5)
    xhat = lambda x, preserve: normalized(x, G, preserve, eps=1e-12)
    torch.testing.assert_close(xhat(a * x, True), a * xhat(x, True), rtol=1e-8, atol=1e-10 * a)
    torch.testing.assert_close(xhat(a * x, False), xhat(x, False), rtol=1e-8, atol=1e-10)
    if abs(a - 1) > 0.1:                                              # the two really differ
        assert not torch.allclose(xhat(a * x, False), a * xhat(x, False), rtol=1e-2)


def test_normalized_values_match_the_formula():
    """xhat = (x - m_g) sqrt(vbar / (v_g + eps) + eps), written out per group with numpy-style loops."""
    x = torch.randn(2, 4, 3, 5, dtype=torch.float64) * torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64).view(1, 4, 1, 1)
    eps, G = 1e-5, 2
    expected = torch.empty_like(x)
    for n in range(2):
        groups = [x[n, 2 * g:2 * g + 2] for g in range(G)]
        v = [grp.var(unbiased=False) for grp in groups]
        vbar = sum(v) / G
        for g, grp in enumerate(groups):
            expected[n, 2 * g:2 * g + 2] = (grp - grp.mean()) * torch.sqrt(vbar / (v[g] + eps) + eps)
    torch.testing.assert_close(normalized(x, G, True), expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("preserve_scale", [True, False])
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_reference_norm_op_gradcheck_and_gradgradcheck(groups, preserve_scale):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    weight = (1 + 0.3 * torch.randn(4, generator=g, dtype=torch.float64)).requires_grad_()
    gain = (1 + 0.3 * torch.randn(2, 4, generator=g, dtype=torch.float64)).requires_grad_()
    op = lambda x, w, gn: group_norm_silu(x, w, gn, groups, preserve_scale=preserve_scale, impl="torch")
    assert torch.autograd.gradcheck(op, (x, weight, gain))
    assert torch.autograd.gradgradcheck(op, (x, weight, gain))


def test_bad_shapes_raise_value_errors_naming_the_expected_shape():
    energy = EnergyUNet(tiny())
    y, t = torch.rand(2, 2, 8, 8), torch.ones(2)
    with pytest.raises(ValueError, match=r"t must be \(B,\)"):
        energy(y, torch.ones(2, 1))
    with pytest.raises(ValueError, match=r"\(B, C=2, H, W\)"):
        energy(y[0], t)
    with pytest.raises(ValueError, match=r"\(B, C=2, H, W\)"):
        energy(torch.rand(2, 3, 8, 8), t)
    with pytest.raises(ValueError, match="divisible by 2\\^num_scales = 4"):
        energy(torch.rand(2, 2, 6, 8), t)
    with pytest.raises(ValueError, match="groups=3 must divide"):
        UNetConfig(groups=3)
    with pytest.raises(ValueError, match="layers_per_block"):
        UNetConfig(layers_per_block=1)
    with pytest.raises(ValueError, match="weight must be"):
        group_norm_silu(y, torch.ones(3), torch.ones(2, 2), 1)
    with pytest.raises(ValueError, match="impl must be one of"):
        group_norm_silu(y, torch.ones(2), torch.ones(2, 2), 1, impl="cuda")


def test_load_model_round_trip_and_bad_checkpoints(tmp_path):
    cfg = tiny()
    energy = EnergyUNet(cfg)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": energy.state_dict(), "model_config": cfg.to_dict(), "kind": "energy",
                "config": {}, "step": 3}, path)
    loaded, ckpt = load_model(path, kind="energy")
    y, t = torch.rand(2, 2, 8, 8), torch.ones(2)
    torch.testing.assert_close(loaded(y, t), energy(y, t))
    assert ckpt["step"] == 3
    with pytest.raises(ValueError, match="'energy' model but a 'denoiser' model is needed"):
        load_model(path, kind="denoiser")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_model(tmp_path / "bad.pt")
    torch.save({"model": {}}, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="lacks"):
        load_model(tmp_path / "partial.pt")
    with pytest.raises(ValueError, match="model kind"):
        build_model("flow", cfg.to_dict())


def test_integer_t_is_read_as_a_float_variance():
    """EnergyUNet(y, t) with an integer t gives what the same t as float gives (not inf or a truncation)."""
    cfg = UNetConfig(channels=1, base_width=4, num_scales=1, layers_per_block=2, emb_dim=8, num_freqs=4,
                     t_embedding="log", analytic_term=True, scale_energy=True, data_var=0.04,
                     data_spectrum=(0.01, 0.04, 0.1))
    torch.manual_seed(0)
    model = EnergyUNet(cfg)
    y = torch.rand(3, 1, 8, 8)
    U_int, U_float = model(y, torch.full((3,), 2)), model(y, torch.full((3,), 2.0))
    assert torch.isfinite(U_int).all() and torch.equal(U_int, U_float)
    den = Denoiser(cfg)
    assert torch.equal(den(y, torch.full((3,), 2)), den(y, torch.full((3,), 2.0)))
