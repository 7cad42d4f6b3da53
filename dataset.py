"""The project's dataset format (docs/method.md §4): a folder with train.npy and val.npy, arrays (N, H, W, C).

uint8 arrays are quantized images (divided by 255; NLL gets the +8 bits/dim offset), float32 arrays
are continuous data used as is. Arrays are memory-mapped, never read whole.
"""
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
