"""The one prepared GPU check (run through kernels/gpu_check.sh), writing markdown into results/gpu/.

    bash kernels/gpu_check.sh                 # a CUDA machine: < 8 min on an H200 -> results/gpu/summary.md
    bash kernels/gpu_check.sh --cpu           # the same stages at tiny shapes on CPU (tests/test_kernels.py)
    python -m kernels.gpu_check --cpu=True --out_dir=/tmp/check     # what the shell script runs

Stages, each a subprocess with its own time limit, in this order (a stage that cannot run here is
listed as SKIPPED with the reason, never dropped silently; once `budget_s` is spent the remaining
stages are skipped the same way):
 0. the options of every command below parsed without running (CONFIGURATOR_DRY_RUN=1), so a renamed
    key fails in seconds instead of after minutes of GPU time
 1. tests/test_kernels.py compiled for the GPU (TRITON_INTERPRET unset: bf16, >2^31 elements included)
 2. python -m kernels.bench: per-pass times, reference vs triton, ImageNet64 shapes, batch 128
 3. python bench.py: energy vs denoiser step of the paper's UNet at batch 128, reference vs triton
 4. a synthetic dataset of random 64x64x3 uint8 images, written under a temporary folder
 5. train.py, `train_steps` steps at batch 128 with the paper's UNet: img/s (the last log interval, so
    compilation is excluded) and peak memory, for kernel_impl torch (train.py's name of the reference)
    vs triton, fp32 vs TF32 (when train.py has a `tf32` key), and the denoiser (kind=denoiser) for
    the energy / denoiser ratio
 6. torchrun --nproc_per_node=1 train.py (NCCL on CUDA, gloo on CPU)
 7. eval.py (NLL, PSNR, a short ODE check) and 8. sample.py, on cuda, from the triton checkpoint
Every stage's command, exit status, seconds and last output lines go to summary.md, rewritten
after each stage (a check cut short still leaves what it measured); $OUT gets a copy when set.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

from configurator import configure, require

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# runs train.py in this process so that its peak memory can be read after it returns
TRAIN_WRAPPER = """import resource, runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    import torch
    if torch.cuda.is_available():
        print(f"PEAK_MEMORY allocated {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB, "
              f"reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB", flush=True)
    print(f"PEAK_RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB", flush=True)
"""

# parses the options of several commands in one process (each exits in configure under the dry run)
PREFLIGHT = """import json, runpy, sys
bad = []
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code not in (0, None):
            bad.append(f"{argv[0]}: {e.code}")
print("\\n".join(bad) or "all options accepted")
sys.exit(1 if bad else 0)
"""


def main(argv=None):
    config = configure(dict(
        cpu=False,            # tiny shapes on CPU through the same stages (the test of this script)
        out_dir="",           # where summary.md goes; "" = results/gpu (GPU) or a new temporary folder (--cpu)
        budget_s=420.0,       # no stage starts after this many seconds (the check stays under 8 min)
        train_steps=60,       # steps of each train.py run (img/s is read over the last 20)
    ), argv, doc=__doc__)
    cpu = config["cpu"]
    import torch
    require(cpu or torch.cuda.is_available(), "no CUDA device here; run with --cpu for the CPU mode")
    require(config["train_steps"] >= 2, f"--train_steps={config['train_steps']}: need at least 2")
    out_dir = config["out_dir"] or (tempfile.mkdtemp(prefix="gpu_check_cpu_") if cpu else os.path.join(ROOT, "results", "gpu"))
    os.makedirs(out_dir, exist_ok=True)
    work = tempfile.mkdtemp(prefix="gpu_check_work_")
    t_start = time.time()
    stages, notes = [], []
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if cpu:
        env.setdefault("OMP_NUM_THREADS", "1")

    def write_summary():
        lines = [f"# GPU check{' (CPU mode: tiny shapes, CUDA-only parts skipped)' if cpu else ''}", "",
                 f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}, {time.time() - t_start:.0f} s so far", "",
                 "| stage | status | seconds | result |", "| --- | --- | ---: | --- |"]
        lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {s['result']} |" for s in stages]
        lines += ["", *notes, ""]
        for s in stages:
            if s.get("cmd"):
                lines += [f"## {s['name']}", "", "```", s["cmd"], f"exit status {s['rc']}", "", s["tail"], "```", ""]
        with open(os.path.join(out_dir, "summary.md"), "w") as fh:
            fh.write("\n".join(lines))
        if os.environ.get("OUT"):
            shutil.copytree(out_dir, os.environ["OUT"], dirs_exist_ok=True)

    def skip(name, why):
        stages.append(dict(name=name, status="SKIPPED", seconds=0.0, result=why))
        print(f"SKIPPED {name}: {why}", flush=True)
        write_summary()

    def run(name, cmd, timeout, result=lambda out: "", shown=None):
        """Run cmd (a list) unless the budget is spent; record it (as `shown` if given); return its
        output, None if it failed or was skipped."""
        if time.time() - t_start > config["budget_s"]:
            skip(name, f"the budget of {config['budget_s']:.0f} s is spent")
            return None
        shown = shown or " ".join(cmd)
        print(f"== {name}: {shown}", flush=True)
        t0 = time.time()
        try:
            r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            rc, output = r.returncode, r.stdout + r.stderr
        except subprocess.TimeoutExpired as e:
            rc, output = "timeout", f"killed after {timeout} s\n" + (e.stdout or b"").decode(errors="replace")[-3000:]
        seconds = time.time() - t0
        lines = [ln for ln in output.splitlines() if not ln.startswith("USDT:")]
        tail = "\n".join(lines[-25:])
        try:
            res = result(output) if rc == 0 else f"FAILED (exit {rc})"
        except Exception as e:                                     # a parse failure is reported, not fatal
            res = f"could not read the result: {type(e).__name__}: {e}"
        stages.append(dict(name=name, status="ok" if rc == 0 else "FAILED", seconds=seconds, result=res,
                           cmd=shown, rc=rc, tail=tail))
        print(tail, flush=True)
        print(f"-- {name}: exit {rc}, {seconds:.0f} s, {res}", flush=True)
        write_summary()
        return output if rc == 0 else None

    py = sys.executable
    last_line = lambda out: [ln for ln in out.splitlines() if ln.strip()][-1][:200]

    # 0. every command's options, parsed without running (CONFIGURATOR_DRY_RUN): a renamed key fails here, in seconds
    fused = "auto" if cpu else "triton"
    data_dir = os.path.join(work, "data")
    size, n_train = (16, 64) if cpu else (64, 2048)
    has_tf32 = re.search(r"^tf32\b", open(os.path.join(ROOT, "train.py")).read(), re.M) is not None   # a config key
    if not has_tf32:
        notes.append("train.py has no `tf32` key yet: the TF32 runs were not made.")
    steps = 4 if cpu else config["train_steps"]
    common = [f"--data_dir={data_dir}", f"--max_steps={steps}", f"--log_interval={2 if cpu else 20}", "--eval_images=16",
              "--ckpt_interval=1000000", "--eval_interval=1000000", f"--spectrum_images={n_train}"]
    common += (["--device=cpu", "--batch_size=4", "--base_width=4", "--num_scales=1", "--layers_per_block=2", "--emb_dim=16",
                "--num_freqs=4"] if cpu else ["--device=cuda", "--batch_size=128"])
    ref = "torch"                            # train.py's name of the reference path (kernels/__init__.py)
    runs = [("energy", fused, False)] if cpu else [("energy", ref, False), ("energy", fused, False)]
    if has_tf32:
        runs += [("energy", fused, True)] if cpu else [("energy", ref, True), ("energy", fused, True)]
    runs += [("denoiser", fused, False)]
    ckpt = os.path.join(work, f"energy_{fused}_fp32", "ckpt.pt")
    dev = "cpu" if cpu else "cuda"
    eval_cmd = ["eval.py", f"--ckpt={ckpt}", f"--data_dir={data_dir}", f"--device={dev}", "--max_images=16",
                "--psnr_images=8", "--ode_images=2", "--ode_steps=2", f"--out={os.path.join(work, 'eval')}"]
    sample_cmd = ["sample.py", f"--ckpt={ckpt}", "--num_samples=4", "--n_steps=8", f"--device={dev}",
                  f"--out={os.path.join(work, 'samples')}"]
    bench_md = os.path.join(out_dir, "kernels_bench.md")
    kbench_cmd = (["kernels/bench.py", f"--impls=reference,{fused}", f"--out={bench_md}"]
                  + (["--device=cpu", "--batch=2", "--shapes=8x8", "--reps=1", "--warmup=0", "--step_batch=2", "--step_size=8",
                      "--channels=1", "--base_width=4", "--num_scales=1", "--conv_shapes=4x8"] if cpu else ["--reps=10", "--warmup=2"]))
    bench_cmd = (["bench.py", f"--impls=reference,{fused}", "--profile_steps=0"]
                 + (["--device=cpu", "--batch=2", "--size=8", "--base_width=4", "--num_scales=1", "--reps=1", "--warmup=0"] if cpu else
                    ["--device=cuda", "--batch=128", "--size=64", "--channels=3", "--base_width=64", "--num_scales=3", "--reps=5",
                     "--warmup=2"]))
    ddp_cmd = ["train.py", *[a for a in common if not a.startswith("--max_steps")], f"--max_steps={2 if cpu else 20}",
               f"--log_interval={1 if cpu else 10}", f"--kernel_impl={fused}", f"--out_dir={os.path.join(work, 'ddp')}"]
    train_cmds = [["train.py", *common, f"--kind={kind}", f"--kernel_impl={impl}"] + ([f"--tf32={tf32}"] if has_tf32 else [])
                  for kind, impl, tf32 in runs]
    env["CONFIGURATOR_DRY_RUN"] = "1"
    run("options of every command (dry run)", [py, "-c", PREFLIGHT, json.dumps(train_cmds + [ddp_cmd, eval_cmd, sample_cmd, kbench_cmd, bench_cmd])],
        120, result=lambda out: out.splitlines()[-1],
        shown="CONFIGURATOR_DRY_RUN=1: train.py (each run), eval.py, sample.py, kernels/bench.py, bench.py")
    del env["CONFIGURATOR_DRY_RUN"]

    # 1. tests
    if cpu:
        skip("kernel tests compiled for the GPU", "needs CUDA (bf16, >2^31 elements and the compiled kernels); "
             "on CPU, python -m pytest tests/test_kernels.py runs the rest (and this check)")
    else:
        run("kernel tests compiled for the GPU", [py, "-m", "pytest", "tests/test_kernels.py", "-q", "-p", "no:cacheprovider", "-rs"],
            200, result=last_line)

    # 2. per-pass benchmark
    run("kernels.bench (per pass)", [py, "-m", "kernels.bench", *kbench_cmd[1:]], 150,
        result=lambda out: [ln for ln in out.splitlines() if ln.startswith(f"- kernel_impl={fused}")][-1][2:])

    # 3. energy vs denoiser step
    def ratio(out):
        return "; ".join(ln for ln in out.splitlines() if ln.startswith(("energy / denoiser", f"{fused} / reference")))
    run("bench.py (energy vs denoiser step)", [py, *bench_cmd], 150, result=ratio)

    # 4. synthetic dataset
    os.makedirs(data_dir)
    rng = np.random.default_rng(0)
    np.save(os.path.join(data_dir, "train.npy"), rng.integers(0, 256, (n_train, size, size, 3), dtype=np.uint8))
    np.save(os.path.join(data_dir, "val.npy"), rng.integers(0, 256, (n_train // 8, size, size, 3), dtype=np.uint8))
    stages.append(dict(name="synthetic dataset", status="ok", seconds=0.0,
                       result=f"{n_train} + {n_train // 8} random {size}x{size}x3 uint8 images in {data_dir}"))
    write_summary()

    # 5. train.py: img/s and peak memory
    if cpu:
        skip(f"train.py energy {ref} fp32", "CPU mode: one energy run exercises the stage")
    speeds = {}

    def train_result(label, run_dir):
        def parse(out):
            recs = [json.loads(ln) for ln in open(os.path.join(run_dir, "log.jsonl")) if "images_per_s" in ln]
            speeds[label] = recs[-1]["images_per_s"]
            peak = [ln for ln in out.splitlines() if ln.startswith(("PEAK_MEMORY", "PEAK_RSS"))]
            return f"{speeds[label]:.1f} img/s (last {recs[-1]['step'] - (recs[-2]['step'] if len(recs) > 1 else 0)} steps); " + "; ".join(peak)
        return parse
    for kind, impl, tf32 in runs:
        label = f"{kind} {impl} {'tf32' if tf32 else 'fp32'}"
        run_dir = os.path.join(work, label.replace(" ", "_"))
        args = common + [f"--kind={kind}", f"--kernel_impl={impl}", f"--out_dir={run_dir}"] + ([f"--tf32={tf32}"] if has_tf32 else [])
        run(f"train.py {label}", [py, "-c", TRAIN_WRAPPER, "train.py", *args], 120 if not cpu else 90,
            result=train_result(label, run_dir), shown=" ".join(["python train.py", *args, "  (in-process: peak memory)"]))
    e, d = f"energy {fused} fp32", f"denoiser {fused} fp32"
    if e in speeds and d in speeds:
        notes.append(f"energy / denoiser step time from train.py img/s ({fused}, fp32): {speeds[d] / speeds[e]:.2f}x "
                     "(paper, H100: 3.7x)")
    r = f"energy {ref} fp32"
    if r in speeds and e in speeds:
        notes.append(f"train.py energy img/s, {fused} / reference (fp32): {speeds[e] / speeds[r]:.2f}x")

    # 6. torchrun, one process
    run("torchrun --nproc_per_node=1 train.py", [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                                                 *ddp_cmd], 150,
        result=lambda out: last_line([ln for ln in out.splitlines() if "img/s" in ln][-1]))

    # 7, 8. eval.py and sample.py from the fused energy run's checkpoint
    if not os.path.exists(ckpt):
        skip("eval.py", "no checkpoint: the fused energy train.py run failed or was skipped")
        skip("sample.py", "no checkpoint: the fused energy train.py run failed or was skipped")
    else:
        run("eval.py", [py, *eval_cmd], 150,
            result=lambda out: "; ".join(ln.strip() for ln in out.splitlines() if "nll" in ln.lower())[-300:])
        run("sample.py", [py, *sample_cmd], 120, result=last_line)
    failed = [s["name"] for s in stages if s["status"] == "FAILED"]
    notes.append(f"{len(failed)} stage(s) failed{': ' + ', '.join(failed) if failed else ''}; "
                 f"total {time.time() - t_start:.0f} s")
    write_summary()
    print(f"wrote {os.path.join(out_dir, 'summary.md')}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
