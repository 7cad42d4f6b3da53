"""Benchmark group_norm_silu per pass: the reference (autograd of explicit formulas) vs the fused paths
(docs/method.md §8), then one full energy training step per path.

For each (C, H = W) shape at a given batch: forward, forward+backward and forward+backward+double
backward (the three passes of a dual score matching step), in ms (median of `reps`, the paths
interleaved rep by rep), GB/s against the bytes that must move, and the speedup of each path over
the first; then one energy training step (forward, scores with create_graph=True, backward, Adam)
per path. Times are wall clock on CUDA and CPU time of this thread on CPU (a shared CPU machine
preempts; CPU time is what the step costs). On CUDA it also measures the copy bandwidth (x.copy_)
that the forward is compared to.

    python -m kernels.bench                                                 # one GPU: reference vs triton, ImageNet64 shapes
    python -m kernels.bench --out=results/gpu/kernels_bench.md              # ... and write the tables
    OMP_NUM_THREADS=1 python -m kernels.bench --device=cpu --batch=16 --shapes=16x32,32x16,64x8 \\
        --step_batch=16 --step_size=32 --channels=1 --base_width=16 --num_scales=2    # CPU: reference vs derived
    TRITON_INTERPRET=1 python -m kernels.bench --device=cpu --impls=reference,triton --batch=2 --shapes=8x8 \\
        --reps=1 --warmup=0 --step_batch=2 --step_size=8 --channels=1 --base_width=4 --num_scales=1    # interpreter, tiny

Bytes that must move (elements of x, 4 B each in fp32): forward reads x and writes out (2); the
first backward reads dy and x and writes dx (3); the double backward reads dy, x and ux and writes
g_dy and gx (5). Hence 2, 5 and 10 x bytes(x) for the three columns.
"""
import datetime
import os
import platform
import statistics
import time

import torch

from configurator import configure, config_block, require
from eval import pick_device
from kernels import IMPLS, choose, group_norm_silu

# ---- config: override with --key=value ---------------------------------------------------------
device = "cuda" if torch.cuda.is_available() else "cpu"   # cpu, cuda, cuda:N
batch = 128                                  # N of the per-op benchmark
shapes = "64x64,128x32,256x16,512x8"         # CxH pairs (square images), the UNet's ImageNet64 shapes
groups = 0                                   # groups per norm layer; 0 = one per channel (the reference)
preserve_scale = True                        # scale-preserving GroupNorm (False: plain GroupNorm)
impls = "reference,auto"                     # kernel_impl paths compared, interleaved; speedups are over the first
reps = 20                                    # timed repetitions (median reported)
warmup = 3                                   # untimed repetitions first (Triton compiles here)
step_batch = 128                             # batch of the training-step benchmark; 0 skips it
step_size = 64                               # image size H = W of the training step
channels = 3                                 # image channels of the training step
base_width = 64                              # UNet widths of the training step (defaults: the paper's)
num_scales = 3                               # UNet scales of the training step
conv_shapes = "64x64"                        # CxH of the 3x3 conv double-backward comparison (batch `batch`); "" skips it
threads = 1                                  # CPU threads (the CI machine is shared)
out = ""                                     # also write the tables (markdown) to this file
tf32 = False                                 # TF32 matrix products and convolutions on CUDA; False = fp32, as train.py's default
# -------------------------------------------------------------------------------------------------
config = configure(config_block(globals()), doc=__doc__)
globals().update(config)
impl_list = [s.strip() for s in impls.split(",") if s.strip()]
require(impl_list and all(i in IMPLS for i in impl_list), f"--impls={impls}: each must be one of {IMPLS}")
require(reps >= 1 and warmup >= 0 and batch >= 1 and step_batch >= 0, "need reps >= 1, warmup >= 0, batch >= 1, step_batch >= 0")
try:
    shape_list = [tuple(int(s) for s in shape.split("x")) for shape in shapes.split(",")]
    require(all(len(s) == 2 and min(s) >= 1 for s in shape_list), "")
    require(all(len(s.split("x")) == 2 and min(int(v) for v in s.split("x")) >= 1 for s in conv_shapes.split(",") if s), "")
except (ValueError, SystemExit):
    require(False, f"--shapes={shapes} / --conv_shapes={conv_shapes}: expected comma-separated CxH pairs such as 64x64,128x32")
dev = torch.device(pick_device(device, tf32=tf32))       # the same device and TF32 flags as train.py and eval.py
torch.set_num_threads(threads)
interpreted = os.environ.get("TRITON_INTERPRET") == "1"
paths = {impl: choose(impl, dev) for impl in impl_list}        # runs each path's self-check here


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def clock():
    return time.perf_counter() if dev.type == "cuda" else time.thread_time()


def interleaved(fns):
    """Median ms of each fn, called in turn rep by rep, after `warmup` untimed calls of each."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for _ in range(reps):
        for fn, ts in zip(fns, times):
            sync()
            t0 = clock()
            fn()
            sync()
            ts.append(clock() - t0)
    return [1e3 * statistics.median(ts) for ts in times]


def op_passes(impl, N, C, H):
    """Three closures: forward, forward+backward, forward+backward+double backward."""
    g = groups or C
    gen = torch.Generator(device=dev).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device=dev)
    x, weight, gain = randn(N, C, H, H).requires_grad_(True), randn(C).requires_grad_(True), (1 + randn(N, C)).requires_grad_(True)
    dy = randn(N, C, H, H).requires_grad_(True)
    u = (randn(N, C, H, H), randn(C), randn(N, C))                    # incoming grads of (dx, dw, dgain)
    xs = (x, weight, gain)
    f = lambda: group_norm_silu(x, weight, gain, g, preserve_scale=preserve_scale, impl=impl)

    def fwd_bwd():
        torch.autograd.grad(f(), xs, dy)

    def three():
        first = torch.autograd.grad(f(), xs, dy, create_graph=True)
        torch.autograd.grad(first, xs + (dy,), u)
    return f, fwd_bwd, three


def conv_passes(fused, N, C, H):
    """A 3x3 C->C convolution: forward, input gradient with create_graph=True (the scores), then the
    gradient of <input gradient, u> in the weight (the double backward of a dual score matching step)."""
    from kernels.conv import conv
    gen = torch.Generator(device=dev).manual_seed(0)
    module = torch.nn.Conv2d(C, C, 3, padding=1, bias=False).to(dev)
    x = torch.randn(N, C, H, H, generator=gen, device=dev).requires_grad_(True)
    gy, u = (torch.randn(N, C, H, H, generator=gen, device=dev) for _ in range(2))

    def passes():
        gx, = torch.autograd.grad(conv(x, module) if fused else module(x), x, gy, create_graph=True)
        torch.autograd.grad(gx, module.weight, u)
    return passes


def copy_gbs(N, C, H):
    x = torch.empty(N, C, H, H, device=dev)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / interleaved([lambda: y.copy_(x)])[0] / 1e6


def train_step(impl):
    from losses import dual_score_matching
    from model import EnergyUNet, UNetConfig
    torch.manual_seed(0)
    model = EnergyUNet(UNetConfig(channels=channels, base_width=base_width, num_scales=num_scales,
                                  groups=groups or None, preserve_scale=preserve_scale, kernel_impl=impl)).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = torch.rand(step_batch, channels, step_size, step_size, device=dev)

    def step():
        loss = dual_score_matching(model, x)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {threads} thread(s))"
first = impl_list[0]
lines = [f"# group_norm_silu benchmark, {datetime.date.today()}",
         "",
         f"device: {name}; torch {torch.__version__}; triton interpreter: {interpreted}; "
         f"paths: {', '.join(f'{i} = {p}' for i, p in paths.items())}; times: {'wall' if dev.type == 'cuda' else 'CPU time of the thread'}",
         f"config: {' '.join(f'--{k}={v}' for k, v in config.items() if k != 'out')}",
         "",
         "| C x H x W | pass | " + " | ".join(f"{i} ms" for i in impl_list) + " | "
         + " | ".join(f"{i} GB/s" for i in impl_list) + " | " + " | ".join(f"{i} speedup" for i in impl_list[1:]) + " |",
         "| --- | --- |" + " ---: |" * (3 * len(impl_list) - 1)]
print("\n".join(lines), flush=True)
for C, H in shape_list:
    nbytes = batch * C * H * H * 4
    closures = {impl: op_passes(impl, batch, C, H) for impl in impl_list}
    for i, (pass_name, k) in enumerate([("fwd", 2), ("fwd+bwd", 5), ("fwd+bwd+2bwd", 10)]):
        ms = dict(zip(impl_list, interleaved([closures[impl][i] for impl in impl_list])))
        row = (f"| {C} x {H} x {H} | {pass_name} | " + " | ".join(f"{ms[i]:.3f}" for i in impl_list) + " | "
               + " | ".join(f"{k * nbytes / ms[i] / 1e6:.3g}" for i in impl_list) + " | "
               + " | ".join(f"{ms[first] / ms[i]:.3g}x" for i in impl_list[1:]) + " |")
        lines.append(row)
        print(row, flush=True)
    if dev.type == "cuda":
        lines.append(f"| {C} x {H} x {H} | copy (x.copy_) | {copy_gbs(batch, C, H):.1f} GB/s |")
        print(lines[-1], flush=True)
conv_list = [tuple(int(v) for v in shape.split("x")) for shape in conv_shapes.split(",") if shape]
if conv_list:
    lines += ["", f"3x3 convolution, forward + input gradient (create_graph) + its gradient in the weight, batch {batch}: "
              "PyTorch's generic double backward vs kernels.conv", "",
              "| C x H x W | generic ms | kernels.conv ms | speedup |", "| --- | ---: | ---: | ---: |"]
    for C, H in conv_list:
        generic, fused_ms = interleaved([conv_passes(False, batch, C, H), conv_passes(True, batch, C, H)])
        lines.append(f"| {C} x {H} x {H} | {generic:.3f} | {fused_ms:.3f} | {generic / fused_ms:.3g}x |")
    print("\n".join(lines[-(len(conv_list) + 4):]), flush=True)
if step_batch:
    lines += ["", f"Energy training step (dual score matching, batch {step_batch}, {channels}x{step_size}x{step_size}, "
              f"base_width {base_width}, {num_scales} scales): forward, scores with create_graph=True, backward, Adam; "
              f"paths interleaved", ""]
    ms = dict(zip(impl_list, interleaved([train_step(impl) for impl in impl_list])))
    for impl in impl_list:
        lines.append(f"- kernel_impl={impl} ({paths[impl]}): {ms[impl]:.1f} ms ({ms[first] / ms[impl]:.3g}x)")
    print("\n".join(lines[-(len(impl_list) + 2):]), flush=True)
if out:
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {out}")
