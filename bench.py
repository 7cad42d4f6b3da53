"""Cost of one dual score matching training step vs one plain denoiser step (docs/method.md §6: 3.7x on
an H100), for each group_norm_silu path, and where the time goes.

    python bench.py                                          # CPU, small config, reference vs auto
    OMP_NUM_THREADS=1 nice -n 5 python bench.py --reps=15    # the numbers of kernels/README.md
    python bench.py --base_width=32 --batch=32               # the wider CPU config of kernels/README.md
    python bench.py --device=cuda --batch=128 --size=64 --channels=3 --base_width=64 --num_scales=3 --impls=reference,triton

The energy step is: forward, first backward with create_graph=True (the scores), loss backward
(double backward), Adam update. The denoiser step is forward, backward, Adam update, same UNet,
same batch. Every (impl, step) pair is timed interleaved, rep by rep (A B A B ...), so machine
noise hits them alike; the table gives median wall ms and median CPU ms of this thread (on CPU the
latter is less sensitive to other processes on a shared machine), the median minor page faults of a
step (memory the allocator handed back and maps again; backends.keep_freed_memory) and the ratios. Then, for each
impl, torch.profiler over `profile_steps` energy steps splits the self CPU time into convolutions,
matrix products, elementwise and reduction kernels, and Python / autograd overhead; and, for the
paths that run kernels/ (not the reference), both steps' time by concern: the UNet's convolutions
(kernels.conv), its norm + SiLU op (kernels.function) and everything else, with the energy / denoiser
ratio of each: where the energy step's extra cost comes from.
"""
import resource
import statistics
import time

import torch

from configurator import configure, config_block, require
from backends import keep_freed_memory as keep_memory
from eval import pick_device
from kernels import IMPLS
from dataset import stationary_spectrum
from losses import denoiser_score_matching, dual_score_matching, mass_penalty
from model import Denoiser, EnergyUNet, UNetConfig, count_parameters

# ---- config: override with --key=value ------------------------------------------------------------
device = "cpu"                  # cpu, cuda, cuda:1
batch = 16                      # images per step
size = 32                       # image height = width
channels = 1                    # image channels
base_width = 16                 # UNet width at the finest scale
num_scales = 2                  # UNet scales
impls = "reference,auto"        # kernel_impl values compared in one interleaved run (comma-separated)
channels_last = False           # model and data in channels_last memory format
reps = 10                       # timed steps of each (impl, step) pair
warmup = 2                      # untimed steps of each first
profile_steps = 3               # energy steps under torch.profiler per impl for the breakdown; 0 skips it
threads = 0                     # torch CPU threads; 0 keeps torch's default (OMP_NUM_THREADS)
tf32 = False                    # TF32 matrix products and convolutions on CUDA; False = fp32, as train.py's default
penalty = False                 # also time train.py's default energy (Gaussian term, bound) with and without the mass penalty
norm_draws = 8                  # the penalty's Gaussian draws per step (train.py --norm_draws)
keep_freed_memory = True        # CPU: malloc keeps freed memory, as train.py's loop (backends.keep_freed_memory); False = glibc's default
# -----------------------------------------------------------------------------------------------------
globals().update(configure(config_block(globals()), doc=__doc__))
impl_list = [s.strip() for s in impls.split(",") if s.strip()]
require(impl_list and all(i in IMPLS for i in impl_list), f"--impls={impls}: each must be one of {IMPLS}")
require(reps >= 1 and warmup >= 0 and profile_steps >= 0, "need reps >= 1, warmup >= 0, profile_steps >= 0")
require(size % 2 ** num_scales == 0, f"--size={size} must be divisible by 2^num_scales = {2 ** num_scales}")
dev = torch.device(pick_device(device, tf32=tf32))       # the same device and TF32 flags as train.py and eval.py
if dev.type == "cpu" and keep_freed_memory:
    keep_memory()                                          # as train.py before its loop
if threads:
    torch.set_num_threads(threads)
fmt = torch.channels_last if channels_last else torch.contiguous_format

torch.manual_seed(0)
x = torch.rand(batch, channels, size, size, device=dev).contiguous(memory_format=fmt)


def make_steps(impl):
    cfg = UNetConfig(channels=channels, base_width=base_width, num_scales=num_scales, kernel_impl=impl)
    torch.manual_seed(0)
    energy = EnergyUNet(cfg).to(dev, memory_format=fmt)
    torch.manual_seed(0)
    denoiser = Denoiser(cfg).to(dev, memory_format=fmt)

    def step_of(model, loss_fn):
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            loss_fn(x)["loss"].mean().backward()
            opt.step()
        return step
    pair = {"energy": step_of(energy, lambda x: dual_score_matching(energy, x)),
            "denoiser": step_of(denoiser, lambda x: denoiser_score_matching(denoiser.f, x))}
    if penalty:                          # the confining energy of train.py's defaults, without and with the penalty
        conf = UNetConfig(channels=channels, base_width=base_width, num_scales=num_scales, kernel_impl=impl,
                          gaussian_term=True, image_size=(size, size), energy_bound=1.0, zero_init_out=False,
                          t_embedding="log", scale_energy=True, data_var=float(x.var()))
        torch.manual_seed(0)
        confining = EnergyUNet(conf).to(dev, memory_format=fmt)
        mean, P, _ = stationary_spectrum(x.permute(0, 2, 3, 1).float().cpu().numpy())
        confining.set_gaussian(mean, P)
        confining.to(dev)

        def penalized(x):
            terms = dual_score_matching(confining, x)
            penalty_term = mass_penalty(confining, norm_draws or x.shape[0], torch.Generator(dev).manual_seed(0))
            return {"loss": terms["loss"] + penalty_term}
        pair["confining"] = step_of(confining, lambda x: dual_score_matching(confining, x))
        pair["penalized"] = step_of(confining, penalized)
    return pair, count_parameters(energy)


def sync():
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn):
    """(wall ms, CPU ms of this thread, minor page faults of the process) of one call."""
    sync()
    f0, w0, c0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter(), time.thread_time()
    fn()
    sync()
    return (1e3 * (time.perf_counter() - w0), 1e3 * (time.thread_time() - c0),
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)


CATEGORIES = ("convolution", "matmul", "elementwise + reductions", "python / autograd / optimizer")


def category(name):
    if not name.startswith("aten::"):
        return CATEGORIES[3]
    if "conv" in name:
        return CATEGORIES[0]
    if name in ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"):
        return CATEGORIES[1]
    return CATEGORIES[2]


def profiled(step, n):
    """torch.profiler's events of n calls of step (CPU)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            step()
    return prof


def breakdown(prof, n):
    """Shares of self CPU time by category, and the top aten ops, over the n profiled steps."""
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    shares = {c: 0.0 for c in CATEGORIES}
    for e in events:
        shares[category(e.key)] += e.self_cpu_time_total / total
    top = sorted((e for e in events if e.key.startswith("aten::")), key=lambda e: -e.self_cpu_time_total)[:8]
    return shares, [(e.key, e.self_cpu_time_total / total, e.count / n) for e in top]


CONCERNS = {"convolutions": ("Conv", "ConvBackward", "ConvBackwardBackward"),
            "norm + SiLU": ("GNSiLU", "GNSiLUBackward", "GNSiLUBackwardBackward")}


def by_concern(prof, n):
    """CPU ms per step (under the profiler, which inflates small ops) inside kernels.conv's and
    kernels.function's autograd Functions (forward calls and backward nodes, outermost events only, so a
    backward that applies the next Function counts once), and the rest, over the n profiled steps."""
    events = prof.events()
    engine = "autograd::engine::evaluate_function: "

    def concern(e):
        name = e.name[len(engine):] if e.name.startswith(engine) else e.name
        return next((c for c, names in CONCERNS.items() if name in names), None)

    def outermost(e, c):
        parent = e.cpu_parent
        while parent is not None:
            if concern(parent) == c:
                return False
            parent = parent.cpu_parent
        return True
    ms = {c: 0.0 for c in CONCERNS}
    for e in events:
        c = concern(e)
        if c is not None and outermost(e, c):
            ms[c] += e.cpu_time_total / 1e3 / n
    ms["everything else"] = sum(e.self_cpu_time_total for e in events) / 1e3 / n - sum(ms.values())
    return ms


steps, n_params = {}, 0
for impl in impl_list:
    pair, n_params = make_steps(impl)
    for kind, fn in pair.items():
        steps[(impl, kind)] = fn
for _ in range(warmup):
    for fn in steps.values():
        fn()
times = {key: [] for key in steps}
for _ in range(reps):
    for key, fn in steps.items():
        times[key].append(timed(fn))

print(f"device {dev}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {batch}, image "
      f"{channels}x{size}x{size}, base_width {base_width}, num_scales {num_scales}, {n_params:,} parameters, "
      f"channels_last {channels_last}, {reps} interleaved reps")
print(f"{'impl':<11}{'step':<10}{'wall ms':>10}{'cpu ms':>10}{'images/s':>10}{'faults':>8}")
med = {}
for (impl, kind), ts in times.items():
    med[(impl, kind)] = (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
    wall, cpu = med[(impl, kind)]
    faults = statistics.median(t[2] for t in ts)                 # minor page faults per step (memory mapped afresh)
    print(f"{impl:<11}{kind:<10}{wall:>10.1f}{cpu:>10.1f}{1e3 * batch / wall:>10.1f}{faults:>8.0f}")
print("energy / denoiser (paper, H100: 3.7x):  "
      + ",  ".join(f"{impl} {med[(impl, 'energy')][0] / med[(impl, 'denoiser')][0]:.2f}x wall "
                   f"{med[(impl, 'energy')][1] / med[(impl, 'denoiser')][1]:.2f}x cpu" for impl in impl_list))
if penalty:
    print("penalized / confining (the mass penalty's cost):  " + ",  ".join(
        f"{impl} {med[(impl, 'penalized')][0] / med[(impl, 'confining')][0]:.2f}x wall "
        f"{med[(impl, 'penalized')][1] / med[(impl, 'confining')][1]:.2f}x cpu" for impl in impl_list))
base = impl_list[0]
for impl in impl_list[1:]:
    print(f"{impl} / {base}:  " + ",  ".join(
        f"{kind} {med[(impl, kind)][0] / med[(base, kind)][0]:.2f}x wall {med[(impl, kind)][1] / med[(base, kind)][1]:.2f}x cpu"
        for kind in ("energy", "denoiser")))
if profile_steps:
    for impl in impl_list:
        energy = profiled(steps[(impl, "energy")], profile_steps)
        shares, top = breakdown(energy, profile_steps)
        print(f"\nenergy step, {impl}: self CPU time by kind (torch.profiler, {profile_steps} steps)")
        print("  " + ",  ".join(f"{c} {s:.0%}" for c, s in shares.items()))
        print("  top ops: " + ",  ".join(f"{name[6:]} {s:.0%} ({calls:.0f}/step)" for name, s, calls in top))
        if impl in ("reference", "torch"):
            continue                    # the reference runs neither kernels.conv nor kernels.function
        parts = {"energy": by_concern(energy, profile_steps),         # the same profiled energy steps
                 "denoiser": by_concern(profiled(steps[(impl, "denoiser")], profile_steps), profile_steps)}
        print("  by concern, CPU ms per step under the profiler: energy / denoiser = ratio")
        print("  " + ",  ".join(f"{c} {parts['energy'][c]:.1f} / {parts['denoiser'][c]:.1f} = "
                                f"{parts['energy'][c] / parts['denoiser'][c]:.2f}x" for c in parts["energy"]))
