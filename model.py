"""The energy UNet of dual score matching (docs/method.md §2), from small parts to the whole model.

    f(y, t)       an image-to-image UNet conditioned on the noise variance t      (UNet)
    U(y, t)       = 0.5 * <y, f(y, t)>, summed over all pixels, in nats           (EnergyUNet)
    x_hat(y, t)   = y - t * f(y, t), the same UNet as a plain score network        (Denoiser)
    (U, grad_y U, dU/dt) from ONE autograd call                                    (energy_and_scores)

log p(y, t) = -(U(y, t) + c) with one constant c fixed at large t (docs/method.md §5, eval.py).
Print the parameter count of the default config with `python model.py`.
"""
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from kernels import group_norm_silu
from kernels.conv import conv


@dataclass
class UNetConfig:
    channels: int = 3               # image channels C (3 colour, 1 grayscale)
    base_width: int = 64            # channels at the finest scale; doubles at each coarser scale
    num_scales: int = 3             # scales of the encoder/decoder; the middle block is one below
    layers_per_block: int = 3       # convs per block (>= 2), the down/up convs included
    groups: int | None = None       # groups of every norm layer; None = one per channel (reference)
    preserve_scale: bool = True     # scale-preserving GroupNorm (docs/method.md §2.2); False = plain GroupNorm
    emb_dim: int = 256              # width of the noise-conditioning MLP
    num_freqs: int = 32             # sinusoidal frequencies of the t embedding (64 features)
    kernel_impl: str = "auto"       # group_norm_silu path: "auto" (triton on CUDA, derived on CPU), "derived",
                                    # "triton", "reference" (autograd; "torch" is an alias), kernels/README.md
    # noise conditioning (README "normalization"; the paper's choices: "paper", False, False)
    t_embedding: str = "paper"      # "paper": sinusoids of t itself; "log": of log(t + t_floor)
    t_floor: float = 1e-6           # "log" only: the embedding is flat for t << t_floor (variance units)
    data_var: float | None = None   # s^2, per-pixel data variance, for the two options below
    data_spectrum: tuple[float, ...] | None = None  # eigenvalues lambda_j of the data covariance (<= 256 bins,
                                    # dataset.covariance_spectrum); None = isotropic, every lambda_j = s^2
    analytic_term: bool = False     # U += (d/2) mean_j log(1 + t / lambda_j): the log-det of the data's
                                    # Gaussian, the bulk of dU/dt; the network learns the rest
    scale_energy: bool = False      # U = 0.5 <y, f> / (s^2 + t) instead of 0.5 <y, f>
    # a confining energy (docs/normalization.md, docs/method.md §9; the paper's choices: False, None, False)
    gaussian_term: bool = False     # U += U_G(y, t), the stationary Gaussian fitted to the data (mean m, spectrum P_k);
                                    # the network term then sees y - m. Needs image_size; set_gaussian fills it
    image_size: tuple[int, ...] | None = None   # (H, W) of the images: the shape of the Gaussian term's buffers
    energy_bound: float | None = None   # B, nats/dim: the network term r becomes B d tanh(r / (B d)), so |R| < B d
                                    # and Z(t) is within e^(+-B d) of Z_G; None = unbounded (the paper)
    zero_init_out: bool = False     # zero the last conv: the model starts as U_G (f = 0)

    def __post_init__(self):
        if self.t_embedding not in ("paper", "log"):
            raise ValueError(f"t_embedding must be 'paper' or 'log', got {self.t_embedding!r}")
        if self.t_floor <= 0:
            raise ValueError(f"t_floor must be > 0 (a noise variance), got {self.t_floor}")
        if (self.analytic_term or self.scale_energy) and not (self.data_var and self.data_var > 0):
            raise ValueError(f"analytic_term and scale_energy need data_var > 0 (the per-pixel variance of the "
                             f"data, e.g. 0.0225 for std 0.15; train.py measures it), got data_var={self.data_var}")
        if self.data_spectrum is not None:
            self.data_spectrum = tuple(float(v) for v in self.data_spectrum)   # a JSON list comes back as a tuple
            if not self.data_spectrum or not all(0 < v < math.inf for v in self.data_spectrum):
                raise ValueError(f"data_spectrum must be covariance eigenvalues, all > 0 and finite (see "
                                 f"dataset.covariance_spectrum), got {len(self.data_spectrum)} values, min "
                                 f"{min(self.data_spectrum, default=None)}")
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)        # a JSON list comes back as a tuple
            if len(self.image_size) != 2 or min(self.image_size) < 1:
                raise ValueError(f"image_size must be (H, W) with H, W >= 1, got {self.image_size}")
        if self.gaussian_term and self.analytic_term:
            raise ValueError("gaussian_term already holds the log-det that analytic_term adds: turn one off")
        if self.gaussian_term and self.image_size is None:
            raise ValueError("gaussian_term needs image_size=(H, W), the shape of the spectrum it stores")
        if self.energy_bound is not None and not 0 < self.energy_bound < math.inf:
            raise ValueError(f"energy_bound must be > 0 nats/dim (e.g. 1.0) or None (unbounded), got {self.energy_bound}")
        if self.layers_per_block < 2:
            raise ValueError(f"layers_per_block must be >= 2, got {self.layers_per_block}")
        if self.channels < 1 or self.base_width < 1 or self.num_scales < 1:
            raise ValueError(f"channels, base_width and num_scales must be >= 1: {self}")
        if self.groups is not None:
            widths = [self.base_width * 2 ** s for s in range(self.num_scales + 1)]
            bad = [w for w in widths if w % self.groups]
            if bad:
                raise ValueError(f"groups={self.groups} must divide every width {widths}; fails for {bad}")

    def to_dict(self):
        return asdict(self)


class NoiseEmbedding(nn.Module):
    """t (B,) -> (B, emb_dim): cos and sin of u * w_k for w_k log-spaced from 1 down to 0.01.

    u = t for t_embedding "paper" (docs/method.md §2.1): nearly constant for t < 1e-2, oscillating for t > 1e2.
    u = log(t + t_floor) for "log": smooth in log t over the whole range, flat for t << t_floor.
    """

    def __init__(self, cfg):
        super().__init__()
        self.log_t = cfg.t_embedding == "log"
        self.t_floor = cfg.t_floor
        self.register_buffer("freqs", torch.logspace(0.0, -2.0, cfg.num_freqs), persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(2 * cfg.num_freqs, cfg.emb_dim), nn.SiLU(),
            nn.Linear(cfg.emb_dim, cfg.emb_dim), nn.SiLU(),
        )

    def forward(self, t):
        u = torch.log(t + self.t_floor) if self.log_t else t
        a = u[:, None] * self.freqs                                   # (B, num_freqs)
        return self.mlp(torch.cat([torch.cos(a), torch.sin(a)], dim=1))


class ConvNormAct(nn.Module):
    """Bias-free conv, then group_norm_silu with a learnt per-channel weight and gain 1 + e(t).

    Except on the reference path (kernel_impl "reference" / "torch"), the conv goes through
    kernels.conv, whose double backward is two convolution calls instead of PyTorch's generic one
    (same weights, same results; kernels/README.md "CPU profile").
    """

    def __init__(self, c_in, c_out, kind, cfg):
        super().__init__()
        if kind == "conv":
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        elif kind == "down":
            self.conv = nn.Conv2d(c_in, c_out, 2, stride=2, bias=False)
        else:  # "up"
            self.conv = nn.ConvTranspose2d(c_in, c_out, 2, stride=2, bias=False)
        self.weight = nn.Parameter(torch.ones(c_out))
        self.gain = nn.Linear(cfg.emb_dim, c_out)                     # e(t), one Linear per norm layer
        self.groups = cfg.groups or c_out
        self.preserve_scale = cfg.preserve_scale
        self.impl = cfg.kernel_impl
        self.fused_conv = cfg.kernel_impl not in ("reference", "torch")

    def forward(self, h, emb):
        h = conv(h, self.conv) if self.fused_conv else self.conv(h)
        gain = 1.0 + self.gain(emb)                                   # (B, c_out)
        return group_norm_silu(h, self.weight, gain, self.groups,
                               preserve_scale=self.preserve_scale, impl=self.impl)


class UNet(nn.Module):
    """f(y, t). Every block has layers_per_block convs (3 in the reference):

        encoder s:  [3x3 C->w0 | 2x2/2 down w_{s-1}->w_s], then 3x3 w_s->w_s ...
        middle:     2x2/2 down w_{S-1}->w_S, 3x3 w_S->w_S ..., 2x2/2 up w_S->w_{S-1}
        decoder s:  3x3 2w_s->w_s (after concatenating the encoder output), 3x3 w_s->w_s ...,
                    then [2x2/2 up w_s->w_{s-1} | 3x3 w0->C, no norm, no activation]

    With the defaults (w = 64, 128, 256, middle 512) this is 8,649,856 parameters for C = 3.
    """

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        S, L = cfg.num_scales, cfg.layers_per_block
        w = [cfg.base_width * 2 ** s for s in range(S + 1)]          # w[S] is the middle width
        self.embed = NoiseEmbedding(cfg)
        self.encoder = nn.ModuleList()
        for s in range(S):
            first = ConvNormAct(cfg.channels, w[0], "conv", cfg) if s == 0 else ConvNormAct(w[s - 1], w[s], "down", cfg)
            self.encoder.append(nn.ModuleList([first] + [ConvNormAct(w[s], w[s], "conv", cfg) for _ in range(L - 1)]))
        self.middle = nn.ModuleList(
            [ConvNormAct(w[S - 1], w[S], "down", cfg)]
            + [ConvNormAct(w[S], w[S], "conv", cfg) for _ in range(L - 2)]
            + [ConvNormAct(w[S], w[S - 1], "up", cfg)])
        self.decoder = nn.ModuleList()
        for s in reversed(range(S)):
            layers = [ConvNormAct(2 * w[s], w[s], "conv", cfg)] + [ConvNormAct(w[s], w[s], "conv", cfg) for _ in range(L - 2)]
            if s > 0:
                layers.append(ConvNormAct(w[s], w[s - 1], "up", cfg))
            self.decoder.append(nn.ModuleList(layers))
        self.out = nn.Conv2d(w[0], cfg.channels, 3, padding=1, bias=False)

    def check_inputs(self, y, t):
        C, S = self.cfg.channels, self.cfg.num_scales
        if y.dim() != 4 or y.shape[1] != C:
            raise ValueError(f"y must be (B, C={C}, H, W), got shape {tuple(y.shape)}")
        H, W = y.shape[2:]
        if H % 2 ** S or W % 2 ** S:
            raise ValueError(f"image size {H}x{W} must be divisible by 2^num_scales = {2 ** S}")
        if t.shape != (y.shape[0],):
            raise ValueError(f"t must be (B,) = ({y.shape[0]},), one noise variance per image; got {tuple(t.shape)}")

    def forward(self, y, t):
        self.check_inputs(y, t)
        t = t.to(y.dtype)                                             # an integer t would truncate the embedding
        emb = self.embed(t)                                           # (B, emb_dim)
        h, skips = y, []
        for block in self.encoder:
            for layer in block:
                h = layer(h, emb)
            skips.append(h)
        for layer in self.middle:
            h = layer(h, emb)
        for block in self.decoder:
            h = torch.cat([h, skips.pop()], dim=1)                    # (B, 2 w_s, H_s, W_s)
            for layer in block:
                h = layer(h, emb)
        return self.out(h)                                            # (B, C, H, W)


class StationaryGaussian(nn.Module):
    """U_G(y, t): the energy of the stationary Gaussian N(m, Sigma) fitted to the data, noised to variance t
    (docs/normalization.md, docs/method.md §9). Sigma = F^H diag(P_k) F with F the orthonormal 2-D DFT and
    P_k a C x C Hermitian positive definite cross-spectrum per frequency (dataset.stationary_spectrum):

        U_G(y, t) = 1/2 sum_k (y^_k - m^_k)^H (P_k + t I)^-1 (y^_k - m^_k) + 1/2 sum_k [log det(P_k + t I) - log det P_k]

    so exp(-U_G(., t)) integrates to Z_G = (2 pi)^(d/2) det(Sigma)^(1/2) for every t (log_z). P_k is kept as
    its eigenvalues e (H, W, C) and eigenvectors V (H, W, C, C, re/im): (P_k + t I)^-1 = V diag(1 / (e + t)) V^H.
    """

    def __init__(self, channels, image_size):
        super().__init__()
        H, W = image_size
        C = channels
        self.register_buffer("mean", torch.zeros(C))                                   # m, per channel
        self.register_buffer("eig", torch.ones(H, W, C))                              # eigenvalues of P_k
        self.register_buffer("basis", torch.view_as_real(torch.eye(C, dtype=torch.complex64).expand(H, W, C, C).clone()))

    @torch.no_grad()
    def set(self, mean, spectrum):
        """mean (C,); spectrum (H, W, C, C) complex Hermitian positive definite, P_{-k} = conj(P_k)."""
        e, V = torch.linalg.eigh(spectrum.to(torch.complex128))
        if not (e > 0).all():
            raise ValueError(f"the spectrum must be positive definite; its smallest eigenvalue is {e.min().item():.3g}")
        self.mean.copy_(mean)
        self.eig.copy_(e)
        self.basis.copy_(torch.view_as_real(V.to(torch.complex64 if self.eig.dtype == torch.float32 else torch.complex128)))

    def log_z(self):
        """log Z_G = (d/2) log(2 pi) + (1/2) sum log e, nats (float64), the same for every t."""
        e = self.eig.double()
        return 0.5 * e.numel() * math.log(2 * math.pi) + 0.5 * e.log().sum().item()

    def whiten(self, y):
        """z_k = V_k^H (y^_k - m^_k), (B, H, W, C) complex: the data's Gaussian coordinates."""
        y_hat = torch.fft.fft2(y - self.mean.to(y.dtype).view(1, -1, 1, 1), norm="ortho").permute(0, 2, 3, 1)
        V = torch.view_as_complex(self.basis.to(y.dtype).contiguous())                # (H, W, C, C)
        return torch.einsum("hwcj,bhwc->bhwj", V.conj(), y_hat)

    def forward(self, y, t):
        z = self.whiten(y)                                                            # (B, H, W, C)
        v = self.eig.to(y.dtype) + t.view(-1, 1, 1, 1)                               # eigenvalues of P_k + t I
        quad = (z.real ** 2 + z.imag ** 2).div(v).flatten(1).sum(dim=1)
        log_det = torch.log1p(t.view(-1, 1, 1, 1) / self.eig.to(y.dtype)).flatten(1).sum(dim=1)
        return 0.5 * (quad + log_det)

    def apply(self, v, t, power):
        """(Sigma + t I)^power v for real images v (B, C, H, W) and t a float or (B,): per frequency
        V diag((e + t)^power) V^H. power 1, -1 and 1/2 give the preconditioner of ais.mala_step, its
        inverse and its square root (the square root keeps P_{-k} = conj(P_k), so real stays real)."""
        t = torch.as_tensor(t, dtype=v.dtype, device=v.device).reshape(-1, 1, 1, 1)
        V = torch.view_as_complex(self.basis.to(v.dtype).contiguous())                # (H, W, C, C)
        v_hat = torch.fft.fft2(v, norm="ortho").permute(0, 2, 3, 1)                   # (B, H, W, C)
        z = torch.einsum("hwcj,bhwc->bhwj", V.conj(), v_hat) * (self.eig.to(v.dtype) + t) ** power
        out = torch.einsum("hwcj,bhwj->bhwc", V, z).permute(0, 3, 1, 2)
        return torch.fft.ifft2(out, norm="ortho").real                                # imaginary part: round-off

    def sample(self, n, t, generator=None):
        """(n, C, H, W) draws of N(m, Sigma + t I): m + (Sigma + t I)^(1/2) w with w real white noise."""
        H, W, C = self.eig.shape
        w = torch.randn(n, C, H, W, generator=generator, device=self.eig.device, dtype=self.eig.dtype)
        return self.mean.view(1, -1, 1, 1) + self.apply(w, t, 0.5)


class EnergyUNet(nn.Module):
    """U(y, t) = 0.5 * <y, f(y, t)> in nats, without the normalization constant c (docs/method.md §2).

    Options (docs/normalization.md), with s^2 = data_var, d = C H W and lambda_j = data_spectrum:
        scale_energy    r = 0.5 <y, f(y, t)> / (s^2 + t)           (f then needs no 1/t range)
        analytic_term   U += (d/2) mean_j log(1 + t / lambda_j)    (log det(Sigma + t I) - log det Sigma)/2:
                        the t-dependence of log Z(t) of the Gaussian N(m, Sigma) fitted to the data, so the
                        network learns only how the data departs from it; isotropic (lambda_j = s^2) if
                        data_spectrum is None.
        gaussian_term   U = U_G(y, t) + R(y, t), U_G the whole energy of the stationary Gaussian fitted to
                        the data (StationaryGaussian), the network term on y - m
        energy_bound    R = B d tanh(r / (B d)): |R| < B d, so e^(-B d) Z_G <= Z(t) <= e^(B d) Z_G for every t
                        and every parameter value (docs/method.md §9)
    All off (the paper) keeps U(0, t) = 0.
    """

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.unet = UNet(cfg)
        if cfg.zero_init_out:
            nn.init.zeros_(self.unet.out.weight)
        if cfg.analytic_term:       # not in the state_dict: it is rebuilt from the config
            spectrum = cfg.data_spectrum if cfg.data_spectrum is not None else (cfg.data_var,)
            self.register_buffer("spectrum", torch.tensor(spectrum, dtype=torch.float64), persistent=False)
        self.gaussian = StationaryGaussian(cfg.channels, cfg.image_size) if cfg.gaussian_term else None

    def set_gaussian(self, mean, spectrum):
        """Fill the Gaussian term from dataset.stationary_spectrum's (mean, spectrum)."""
        self.gaussian.set(mean, spectrum)

    def network_term(self, y, t):
        """R(y, t): the network's part of the energy, (B,) nats."""
        cfg = self.config
        f = self.unet(y, t)
        if self.gaussian is not None:
            y = y - self.gaussian.mean.to(y.dtype).view(1, -1, 1, 1)
        r = 0.5 * (y * f).flatten(1).sum(dim=1)                      # (B,)
        if cfg.scale_energy:
            r = r / (cfg.data_var + t)
        if cfg.energy_bound is not None:
            bound = cfg.energy_bound * y[0].numel()                 # B d nats
            r = bound * torch.tanh(r / bound)
        return r

    def forward(self, y, t):
        t = t.to(y.dtype)                                             # integer t: the spectrum would round to 0
        U = self.network_term(y, t)
        cfg = self.config
        if cfg.analytic_term:
            log_det = torch.log1p(t[:, None] / self.spectrum.to(t.dtype)).mean(dim=1)    # (B,) per dimension
            U = U + 0.5 * y[0].numel() * log_det
        if self.gaussian is not None:
            if tuple(y.shape[2:]) != cfg.image_size:
                raise ValueError(f"the Gaussian term was fitted to {cfg.image_size[0]}x{cfg.image_size[1]} images; "
                                 f"got {y.shape[2]}x{y.shape[3]}")
            U = U + self.gaussian(y, t)
        return U


class Denoiser(nn.Module):
    """The same UNet as a plain score network: x_hat = y - t * f(y, t), f estimating -score."""

    def __init__(self, cfg):
        super().__init__()
        self.config = cfg
        self.unet = UNet(cfg)

    def f(self, y, t):
        return self.unet(y, t)

    def forward(self, y, t):
        t = t.to(y.dtype)
        return y - t.view(-1, 1, 1, 1) * self.unet(y, t)


def energy_and_scores(energy_fn, y, t, create_graph=False):
    """(U, grad_y U, dU/dt) of any energy (y, t) -> (B,) from ONE torch.autograd.grad call.

    y (B, C, H, W) or (B, D); t (B,). Both are detached and made leaves that require grad, so
    dU/dt is the partial derivative at fixed y. With create_graph=True the scores stay in the
    graph and a loss on them back-propagates into the parameters (double backward, docs/method.md §2).
    """
    if t.dim() != 1 or t.shape[0] != y.shape[0]:
        raise ValueError(f"t must be (B,) = ({y.shape[0]},), got shape {tuple(t.shape)}")
    y = y.detach().requires_grad_(True)
    t = t.detach().to(y.dtype).requires_grad_(True)
    with torch.enable_grad():
        U = energy_fn(y, t)
        if U.shape != t.shape:
            raise ValueError(f"energy_fn must return one energy per sample, shape ({t.shape[0]},); got {tuple(U.shape)}")
        grad_y, dU_dt = torch.autograd.grad(U.sum(), (y, t), create_graph=create_graph)
    if not create_graph:
        U = U.detach()
    return U, grad_y, dU_dt


MODEL_KINDS = {"energy": EnergyUNet, "denoiser": Denoiser}


def build_model(kind, model_config):
    """kind "energy" or "denoiser"; model_config a dict of UNetConfig fields (as in checkpoints)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"model kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
    return MODEL_KINDS[kind](UNetConfig(**model_config))


def load_model(path, device="cpu", kind=None):
    """(model in eval mode, checkpoint dict) from a checkpoint written by train.py.

    A checkpoint holds at least model (state_dict), model_config (UNetConfig fields), kind, config,
    step. kind, if given, is the kind the caller needs ("energy" for NLL, say).
    """
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass --ckpt=PATH of a file written by train.py")
    except Exception as e:
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e}); "
                         "use another checkpoint (train.py keeps the previous one as ckpt_prev.pt)") from e
    missing = [k for k in ("model", "model_config", "kind", "step") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {missing}; it was not written by train.py")
    if kind is not None and ckpt["kind"] != kind:
        raise ValueError(f"checkpoint {path} holds a {ckpt['kind']!r} model but a {kind!r} model is needed here")
    model = build_model(ckpt["kind"], ckpt["model_config"]).to(device)
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    for C in (3, 1):
        n = count_parameters(EnergyUNet(UNetConfig(channels=C)))
        print(f"EnergyUNet, default config, C={C}: {n:,} parameters")
