"""The one place where every script picks its device and the arithmetic of its backends (docs/training.md).

    device = setup_device("auto")                       # eval.py, sample.py, figures.py, baseline.py: fp32
    device = setup_device(device, tf32=tf32, deterministic=deterministic)   # train.py

PyTorch's defaults differ between matrix products (TF32 off) and cuDNN convolutions (TF32 on), and
cuDNN picks its algorithms by default without determinism. Every script calls setup_device, so the
in-training evaluation and eval.py compute with the same arithmetic: full fp32 (the paper's), unless
train.py's --tf32=True; `full_precision()` turns TF32 off for a block (train.py's evaluation).
Nothing here touches CUDA unless a CUDA device is asked for.

Two process-wide settings of glibc's malloc (nothing elsewhere), for two opposite needs:
`keep_freed_memory` for the repeated training step (train.py's loop on CPU, bench.py), `bounded_heap`
for the streaming loops of varying sizes (baseline.py).
"""
import ctypes
import os
import platform
import re
import sys
from contextlib import contextmanager

import torch


def setup_device(device="auto", tf32=False, deterministic=False):
    """The device string to use ("auto" = cuda if available, else cpu), made the current CUDA device
    (Triton kernels and cuBLAS handles launch on the current device, not on the tensors' one), with
    the backend flags set: TF32 for matrix products and convolutions on only with tf32, cuDNN's
    benchmark off, and with deterministic, deterministic cuDNN algorithms and cuBLAS workspaces (and a
    warning from any other operation PyTorch knows to be non-deterministic).
    ValueError names a malformed or absent device."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(r"cpu|cuda(:\d+)?", device):
        raise ValueError(f"--device={device}: expected auto, cpu, cuda or cuda:N")
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # read when cuBLAS starts
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device={device} but CUDA is not available here; use --device=cpu")
        index = torch.device(device).index
        if index is not None:
            if index >= torch.cuda.device_count():
                raise ValueError(f"--device={device} but this machine has {torch.cuda.device_count()} CUDA "
                                 f"device(s): use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
            torch.cuda.set_device(index)
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)   # warns on any op known not to be
    return device


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3                          # malloc.h


def _mallopt(option, value):
    """glibc's mallopt(option, value): True if set; False where it is not glibc (nothing changes)."""
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(option, int(value)))
    except (OSError, AttributeError):
        return False


def keep_freed_memory(limit=1 << 30):
    """Make glibc's malloc keep freed memory for reuse. Returns the block size up to which it now does
    (limit, or 32 MB where glibc caps it), 0 where it could not (not glibc: nothing changes).

    PyTorch's CPU tensors come from malloc. By default glibc serves large blocks with fresh mmap pages and
    returns the top of its heap to the system when more than ~2x the largest recent block is free: every
    step that reaches a new peak then faults its pages in again (zero-filled by the kernel). A dual score
    matching step frees and re-allocates 25-29 MB that way at bench.py's config (6400-7300 minor faults a
    step, ~6% of its time; the denoiser step, with less memory in flight, none). With both thresholds at
    `limit`, blocks below it come from the heap and the heap is never trimmed below it: the process keeps
    its peak memory (as CUDA's caching allocator does). For a loop that repeats one step (train.py calls
    it before its training loop on CPU, after the streamed statistics); not for streaming loops of varying
    sizes, which it would let fragment the heap (`bounded_heap`). kernels/README.md has the timings."""
    for size in (limit, 32 << 20):          # older glibc caps the mmap threshold at 32 MB
        # the mmap threshold first: setting either one turns off glibc's dynamic thresholds
        if _mallopt(M_MMAP_THRESHOLD, size) and _mallopt(M_TRIM_THRESHOLD, size):
            return size
    return 0


@contextmanager
def full_precision():
    """TF32 off inside the block (fp32 products and convolutions), the previous flags restored after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def bounded_heap(threshold=1 << 20):
    """Keep every allocation of threshold bytes or more a separate mapping that returns to the OS when
    freed (glibc's M_MMAP_THRESHOLD; nothing elsewhere). glibc's default raises that threshold to the size
    of each large block freed, after which a loop of large temporaries of varying sizes (baseline.py's
    chunked NLL: 25 MB each) is served from a heap that fragments and grows with the number of chunks
    (measured: 217 -> 826 MB over 40k images of 32x32x3, and 217 -> 227 MB with this). Process-wide."""
    _mallopt(M_MMAP_THRESHOLD, threshold)
