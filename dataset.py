"""The project's dataset format (SPEC 4): a folder with train.npy and val.npy, arrays (N, H, W, C).

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


def to_tensor(batch, device="cpu"):
    """(B, H, W, C) uint8 or float32 numpy -> (B, C, H, W) float32 tensor; uint8 is divided by 255."""
    x = torch.from_numpy(np.array(batch, copy=True)).to(device)      # a writable copy of the (memmap) slice
    x = x.permute(0, 3, 1, 2).float()                                  # (B, C, H, W)
    return x / 255.0 if batch.dtype == np.uint8 else x
