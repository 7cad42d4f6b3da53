"""Benchmark group_norm_silu: fused Triton kernels vs the eager PyTorch reference (docs/method.md §8).

For each (C, H = W) shape at a given batch: forward, forward+backward and forward+backward+double
backward (the three passes of a dual score matching step), in ms (median of `reps`), GB/s against
the bytes that must move, and the speedup; then one full energy training step (forward, scores with
create_graph=True, backward, Adam) with kernel_impl="torch" vs "triton". On CUDA it also measures
the copy bandwidth (x.copy_) that the forward is compared to.

    python -m kernels.bench                                                 # one GPU, ImageNet64 shapes, batch 128
    python -m kernels.bench --out=kernels/BENCH.md                          # ... and write the tables
    python -m kernels.bench --device=cpu --batch=4 --step_batch=4           # CPU: eager reference only
    TRITON_INTERPRET=1 python -m kernels.bench --device=cpu --batch=2 --shapes=8x8,16x4 --reps=1 \\
        --warmup=0 --step_batch=2 --step_size=8 --channels=1 --base_width=4 --num_scales=1    # interpreter, tiny

Bytes that must move (elements of x, 4 B each in fp32): forward reads x and writes out (2); the
first backward reads dy and x and writes dx (3); the double backward reads dy, x and ux and writes
g_dy and gx (5). Hence 2, 5 and 10 x bytes(x) for the three columns.
"""
import datetime
import os
import platform
import statistics
import sys
import time

import torch

from kernels import group_norm_silu, triton_available

# ---- config: override with --key=value ---------------------------------------------------------
device = "cuda" if torch.cuda.is_available() else "cpu"
batch = 128                                  # N of the per-op benchmark
shapes = "64x64,128x32,256x16,512x8"         # CxH pairs (square images), the UNet's ImageNet64 shapes
groups = 0                                   # groups per norm layer; 0 = one per channel (the reference)
preserve_scale = True
reps = 20                                    # timed repetitions (median reported)
warmup = 3                                   # untimed repetitions first (Triton compiles here)
step_batch = 128                             # batch of the training-step benchmark; 0 skips it
step_size = 64                               # image size H = W of the training step
channels = 3                                 # image channels of the training step
base_width = 64                              # UNet widths of the training step (defaults: the paper's)
num_scales = 3
threads = 1                                  # CPU threads (the CI machine is shared)
out = ""                                     # also write the tables (markdown) to this file
# -------------------------------------------------------------------------------------------------
config = {k: v for k, v in globals().items() if not k.startswith("_") and isinstance(v, (int, float, bool, str))}
for arg in sys.argv[1:]:
    key, sep, value = arg.removeprefix("--").partition("=")
    if not arg.startswith("--") or not sep or key not in config:
        sys.exit(f"bad argument {arg!r}: use --key=value with key in {sorted(config)}")
    kind = type(config[key])
    if kind is bool and value not in ("True", "False"):
        sys.exit(f"--{key} takes True or False, got {value!r}")
    try:
        config[key] = (value == "True") if kind is bool else kind(value)
    except ValueError:
        sys.exit(f"--{key} takes a {kind.__name__}, got {value!r}")
globals().update(config)
torch.set_num_threads(threads)
interpreted = os.environ.get("TRITON_INTERPRET") == "1"
fused_ok = triton_available() and (device == "cuda" or interpreted)


def sync():
    if device == "cuda":
        torch.cuda.synchronize()


def timeit(fn):
    """Median wall time of fn in ms, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def op_passes(impl, N, C, H):
    """Three closures: forward, forward+backward, forward+backward+double backward."""
    g = groups or C
    gen = torch.Generator(device=device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device=device)
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


def copy_gbs(N, C, H):
    x = torch.empty(N, C, H, H, device=device)
    y = torch.empty_like(x)
    return 2 * x.numel() * 4 / timeit(lambda: y.copy_(x)) / 1e6


def train_step_ms(impl):
    from losses import dual_score_matching
    from model import EnergyUNet, UNetConfig
    torch.manual_seed(0)
    model = EnergyUNet(UNetConfig(channels=channels, base_width=base_width, num_scales=num_scales,
                                  groups=groups or None, preserve_scale=preserve_scale, kernel_impl=impl)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=5e-4)
    x = torch.rand(step_batch, channels, step_size, step_size, device=device)

    def step():
        loss = dual_score_matching(model, x)["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return timeit(step)


name = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {threads} thread(s))"
lines = [f"# group_norm_silu benchmark, {datetime.date.today()}",
         "",
         f"device: {name}; torch {torch.__version__}; triton interpreter: {interpreted}; fused path: {'yes' if fused_ok else 'no (reference only)'}",
         f"config: {' '.join(f'--{k}={v}' for k, v in config.items() if k != 'out')}",
         "",
         "| C x H x W | pass | eager ms | fused ms | eager GB/s | fused GB/s | speedup |",
         "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
print("\n".join(lines), flush=True)
for shape in shapes.split(","):
    C, H = (int(s) for s in shape.split("x"))
    nbytes = batch * C * H * H * 4
    results = {impl: [timeit(fn) for fn in op_passes(impl, batch, C, H)] for impl in (["torch", "triton"] if fused_ok else ["torch"])}
    for i, (pass_name, k) in enumerate([("fwd", 2), ("fwd+bwd", 5), ("fwd+bwd+2bwd", 10)]):
        e = results["torch"][i]
        row = f"| {C} x {H} x {H} | {pass_name} | {e:.3f} | "
        if fused_ok:
            t = results["triton"][i]
            row += f"{t:.3f} | {k * nbytes / e / 1e6:.3g} | {k * nbytes / t / 1e6:.3g} | {e / t:.3g}x |"
        else:
            row += f"- | {k * nbytes / e / 1e6:.3g} | - | - |"
        lines.append(row)
        print(row, flush=True)
    if device == "cuda" and fused_ok:
        bw = copy_gbs(batch, C, H)
        row = f"| {C} x {H} x {H} | copy (x.copy_) | | | {bw:.1f} | fwd at {2 * nbytes / results['triton'][0] / 1e6 / bw:.0%} of copy | |"
        lines.append(row)
        print(row, flush=True)
if step_batch:
    lines += ["", f"Energy training step (dual score matching, batch {step_batch}, {channels}x{step_size}x{step_size}, "
              f"base_width {base_width}, {num_scales} scales): forward, scores with create_graph=True, backward, Adam", ""]
    eager = train_step_ms("torch")
    lines.append(f"- kernel_impl=torch: {eager:.1f} ms")
    if fused_ok:
        fused = train_step_ms("triton")
        lines.append(f"- kernel_impl=triton: {fused:.1f} ms ({eager / fused:.3g}x)")
    print("\n".join(lines[-(4 if fused_ok else 3):]), flush=True)
if out:
    with open(out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"wrote {out}")
