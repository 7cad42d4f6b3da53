"""The project's dataset format (docs/method.md §4): a folder with train.npy and val.npy, arrays (N, H, W, C).

uint8 arrays are quantized images (divided by 255; NLL gets the +8 bits/dim offset), float32 arrays
are continuous data used as is. Arrays are memory-mapped, never read whole.
"""
import math
import os

import numpy as np
import torch


def load_split(data_dir, split):
    """(memory-mapped array (N, H, W, C), quantized) for split "train" or "val" of data_dir."""
    path = os.path.join(data_dir, f"{split}.npy")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"dataset file {path} not found: prepare the data first, e.g. "
                                f"`python data/patches/prepare.py`, and pass --data_dir=DIR holding train.npy and val.npy")
    try:
        x = np.load(path, mmap_mode="r")
    except Exception as e:
        raise ValueError(f"{path} is not a readable .npy array ({e}); prepare the data again") from e
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{path} has shape {x.shape}; expected (N, H, W, C) with C = 1 or 3")
    if x.dtype not in (np.uint8, np.float32):
        raise ValueError(f"{path} has dtype {x.dtype}; expected uint8 (quantized images) or float32 (continuous)")
    return x, x.dtype == np.uint8


def check_finite(images, path, batch_size=4096):
    """ValueError naming path and the first image with a NaN or infinite pixel; read chunk by chunk.
    uint8 images are always finite: nothing is read."""
    if images.dtype == np.uint8:
        return
    for i in range(0, len(images), batch_size):
        bad = ~np.isfinite(np.asarray(images[i:i + batch_size])).reshape(len(images[i:i + batch_size]), -1).all(axis=1)
        if bad.any():
            raise ValueError(f"{path}: image {i + int(bad.argmax())} (0-based) has non-finite pixels (NaN or inf); "
                             f"remove it or prepare the data again")


def to_tensor(batch, device="cpu"):
    """(B, H, W, C) uint8 or float32 numpy -> (B, C, H, W) float32 tensor; uint8 is divided by 255.
    To a GPU through pinned memory without blocking the host (the copy is ordered on the stream)."""
    x = torch.from_numpy(np.array(batch, copy=True))                   # a writable copy of the (memmap) slice
    x = x.pin_memory().to(device, non_blocking=True) if str(device).startswith("cuda") else x.to(device)
    x = x.permute(0, 3, 1, 2).float()                                  # (B, C, H, W)
    return x / 255.0 if batch.dtype == np.uint8 else x


def covariance_spectrum(images, max_images=50_000, n_bins=256, device="cpu", batch_size=1024):
    """(pixel variance, eigenvalues of the covariance) of the first max_images images, (N, H, W, C) uint8 or float32.

    The eigenvalues lambda_j of the sample covariance Sigma (float64, model units) define the Gaussian
    N(m, Sigma) fitted to the data, whose log Z(t) - log Z(0) = (1/2) sum_j log(1 + t / lambda_j) is
    model.py's analytic_term. They are sorted and stored as n_bins equal-count bins (the geometric mean
    of each), a tuple of floats for UNetConfig.data_spectrum, whatever the image size. The smallest
    sample eigenvalues are biased low unless max_images >> d = H W C (Marchenko-Pastur).
    """
    n = min(len(images), max_images)
    d = int(np.prod(images.shape[1:]))
    if n <= d:
        raise ValueError(f"the covariance of {n} images in d = {d} dimensions is singular: the spectrum needs more "
                         f"images than dimensions (many more for its smallest eigenvalues). Prepare more data, "
                         f"raise --spectrum_images, or pass --data_var=VALUE for the isotropic analytic term")
    total = torch.zeros(d, dtype=torch.float64, device=device)
    gram = torch.zeros(d, d, dtype=torch.float64, device=device)
    for i in range(0, n, batch_size):
        x = to_tensor(images[i:min(i + batch_size, n)], device).flatten(1).double()   # (b, d)
        total += x.sum(dim=0)
        gram += x.T @ x
    mean = total / n
    cov = gram / n - torch.outer(mean, mean)
    lam = torch.linalg.eigvalsh(cov).clamp_min(1e-12 * cov.diagonal().mean()).cpu()   # ascending
    n_bins = min(n_bins, d)
    while d % n_bins:                                                # equal-count bins: a divisor of d
        n_bins -= 1
    spectrum = tuple(lam.log().view(n_bins, -1).mean(dim=1).exp().tolist())   # d / n_bins eigenvalues a bin
    return float(cov.diagonal().mean()), spectrum


def radial_average(S):
    """(H, W, ...) -> the same shape, every entry replaced by the mean over its ring round(|k|) of integer
    wavenumbers k = (k_y, k_x) (cycles per image): the isotropic part of a spectrum."""
    H, W = S.shape[:2]
    ky = torch.fft.fftfreq(H, d=1.0 / H, dtype=torch.float64, device=S.device)
    kx = torch.fft.fftfreq(W, d=1.0 / W, dtype=torch.float64, device=S.device)
    ring = (ky[:, None] ** 2 + kx[None, :] ** 2).sqrt().round().long().flatten()      # (H W,)
    flat = S.reshape(H * W, -1)
    sums = torch.zeros(int(ring.max()) + 1, flat.shape[1], dtype=flat.dtype, device=S.device).index_add_(0, ring, flat)
    counts = torch.bincount(ring).to(sums.real.dtype)
    return (sums / counts[:, None])[ring].reshape(S.shape)


def stationary_spectrum(images, max_images=50_000, floor=1e-4, device="cpu", batch_size=256):
    """(mean m (C,), spectrum P (H, W, C, C) complex128, number of images used) of the stationary Gaussian
    fitted to the first max_images images (N, H, W, C), uint8 or float32, in model units; streamed in
    batches, memory O(H W C^2) whatever N is.

    m is the per-channel mean; S_k = mean over images of (y^_k - m^_k)(y^_k - m^_k)^H with y^ the orthonormal
    2-D DFT (the cross-spectrum, C x C per frequency). Defined for any N >= 1 (docs/normalization.md):
        P_k = (N S_k + R_k) / (N + 1) + floor * v I
    with R the ring average of S (radial_average: shrinkage toward an isotropic spectrum, weight 1 / (N + 1)),
    except at k = 0, whose own ring is the DC alone: there R_0 = R_ring1, the ring average of the lowest
    nonzero ring (round(|k|) = 1), a conservative prior for the DC variance (an image's power is highest
    at low frequency). v is the mean pixel variance. At N = 1, where S_0 = 0 (the mean of one image has no
    spread), P_0 = R_ring1 / 2 + floor * v I, not the floor alone; at large N, P_0 moves from the sample
    S_0 + floor * v I by (R_ring1 - S_0) / (N + 1). P_k is Hermitian positive definite for any N >= 1 and
    symmetrized so that P_{-k} = conj(P_k) exactly (the covariance F^H P F is then real).
    """
    n = min(len(images), max_images)
    if n < 1:
        raise ValueError("the spectrum needs at least one image; the dataset is empty")
    if not floor > 0:
        raise ValueError(f"floor must be > 0 (a fraction of the pixel variance, e.g. 1e-4), got {floor}")
    H, W, C = images.shape[1:]
    total = torch.zeros(C, dtype=torch.float64, device=device)
    second = torch.zeros(H, W, C, C, dtype=torch.complex128, device=device)
    for i in range(0, n, batch_size):
        x = to_tensor(images[i:min(i + batch_size, n)], device).double()              # (b, C, H, W)
        total += x.sum(dim=(0, 2, 3))
        y_hat = torch.fft.fft2(x, norm="ortho")                                       # (b, C, H, W) complex
        second += torch.einsum("bchw,bdhw->hwcd", y_hat, y_hat.conj())
    mean = total / (n * H * W)
    S = second / n
    m_hat = mean.to(S.dtype) * math.sqrt(H * W)                                      # the DFT of m: only k = 0
    S[0, 0] -= torch.outer(m_hat, m_hat.conj())
    S = 0.5 * (S + S.transpose(-1, -2).conj())                                        # Hermitian per frequency
    S_neg = torch.roll(S.flip(0, 1), shifts=(1, 1), dims=(0, 1))                      # S at -k
    S = 0.5 * (S + S_neg.conj())                                                      # P_{-k} = conj(P_k)
    v = S.diagonal(dim1=-2, dim2=-1).real.mean().clamp_min(1e-12)                     # mean pixel variance
    R = radial_average(S)
    if H * W > 1:                                                 # the DC target: ring round(|k|) = 1, not the DC
        R[0, 0] = R[0, 1] if W > 1 else R[1, 0]
    P = (n * S + R) / (n + 1)
    P = P + floor * v * torch.eye(C, dtype=P.dtype, device=device)
    return mean.float().cpu(), P.cpu(), n
