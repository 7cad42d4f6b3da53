"""Cost of one dual score matching training step vs one plain denoiser step (docs/method.md §6: 3.7x on an H100).

    python bench.py                                   # small CPU config (1 thread per core here)
    python bench.py --device=cuda --batch=128 --size=64 --channels=3 --base_width=64 --num_scales=3

The energy step is: forward, first backward with create_graph=True (the scores), loss backward
(double backward), Adam update. The denoiser step is forward, backward, Adam update, same UNet, same
batch. Both are timed interleaved, rep by rep, so machine noise hits them alike; the table gives the
median ms per step and the ratio.
"""
import argparse
import statistics
import time

import torch

from losses import denoiser_score_matching, dual_score_matching
from model import Denoiser, EnergyUNet, UNetConfig, count_parameters

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--device", default="cpu")
parser.add_argument("--batch", type=int, default=16)               # images per step
parser.add_argument("--size", type=int, default=32)                # image height = width
parser.add_argument("--channels", type=int, default=1)
parser.add_argument("--base_width", type=int, default=16)
parser.add_argument("--num_scales", type=int, default=2)
parser.add_argument("--kernel_impl", default="auto")
parser.add_argument("--reps", type=int, default=10)                # timed steps of each kind
parser.add_argument("--warmup", type=int, default=2)
args = parser.parse_args()

torch.manual_seed(0)
device = torch.device(args.device)
cfg = UNetConfig(channels=args.channels, base_width=args.base_width, num_scales=args.num_scales,
                 kernel_impl=args.kernel_impl)
x = torch.rand(args.batch, args.channels, args.size, args.size, device=device)
energy, denoiser = EnergyUNet(cfg).to(device), Denoiser(cfg).to(device)


def make_step(model, loss_fn):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(x)["loss"].mean().backward()
        opt.step()
    return step


steps = {
    "dual score matching (energy)": make_step(energy, lambda x: dual_score_matching(energy, x)),
    "plain denoiser": make_step(denoiser, lambda x: denoiser_score_matching(denoiser.f, x)),
}


def timed(fn):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0)


for _ in range(args.warmup):
    for fn in steps.values():
        fn()
times = {name: [] for name in steps}
for _ in range(args.reps):
    for name, fn in steps.items():
        times[name].append(timed(fn))

print(f"device {device}, torch {torch.__version__}, threads {torch.get_num_threads()}, batch {args.batch}, "
      f"image {args.channels}x{args.size}x{args.size}, base_width {args.base_width}, num_scales {args.num_scales}, "
      f"{count_parameters(energy):,} parameters, kernel_impl {args.kernel_impl}")
print(f"{'step':<32}{'median ms':>12}{'min ms':>10}{'images/s':>10}")
med = {}
for name, ts in times.items():
    med[name] = statistics.median(ts)
    print(f"{name:<32}{med[name]:>12.1f}{min(ts):>10.1f}{1e3 * args.batch / med[name]:>10.1f}")
names = list(steps)
best = {name: min(ts) for name, ts in times.items()}
print(f"ratio energy / denoiser: {med[names[0]] / med[names[1]]:.2f}x median, "
      f"{best[names[0]] / best[names[1]]:.2f}x min (paper, H100: 3.7x)")
