"""Every command-line script: --help lists its keys, and bad input stops it with one line, no traceback.

Options go through configurator.py in every script. Each case runs the script in this process as
`python SCRIPT ARGS` would (runpy, sys.argv), which saves a Python and torch start-up per case;
test_real_process checks one case as a separate process.
"""
import contextlib
import io
import os
import platform
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest
import torch

from model import Denoiser, EnergyUNet, UNetConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
    ENV.pop(var, None)

# script (with its sub-command, if any) -> keys its --help must list
SCRIPTS = {
    ("train.py",): ["data_dir", "max_steps", "batch_size", "lr", "base_width", "num_scales", "layers_per_block",
                    "groups", "data_var", "scale_energy", "analytic_term", "t_embedding", "preset"],
    ("eval.py",): ["ckpt", "data_dir", "split", "max_images", "t_max", "out"],
    ("sample.py",): ["ckpt", "num_samples", "seed", "n_steps", "mala_steps", "out"],
    ("baseline.py",): ["data_dir", "split", "ridge", "ckpt", "out"],
    ("figures.py", "fig2"): ["ckpt_a", "ckpt_b", "n_train", "data_dir"],
    ("figures.py", "fig3"): ["ckpt", "n_shown", "data_dir", "max_images"],
    ("figures.py", "fig4"): ["ckpt", "n_curves", "n_grid", "haar_levels"],
    ("figures.py", "fig5"): ["ckpt", "n_chosen", "n_t", "n_draws"],
    ("figures.py", "subsets"): ["data_dir", "n_train", "out_prefix"],
    ("data/grf/prepare.py",): ["size", "alpha", "k0", "n_train", "warp", "out"],
    ("data/imagenet64/prepare.py",): ["src", "out", "grayscale", "counts"],
    ("data/patches/prepare.py",): ["out", "size", "stride", "seed"],
    ("data/synthetic/prepare.py",): ["n_train", "n_val", "size", "channels", "out"],
}


def run(script, *args):
    """Run a script in this process as `python script args` would: (exit status, stdout, stderr).

    A SystemExit with a message is what Python turns into that message on stderr and status 1, no
    traceback; any other exception escapes, and fails the test. (test_real_process runs one for real.)
    """
    argv, stdout, stderr = sys.argv, io.StringIO(), io.StringIO()
    sys.argv = [script[0], *script[1:], *args]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(os.path.join(ROOT, script[0]), run_name="__main__")
        rc = 0
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) or e.code is None else 1
        if not isinstance(e.code, int) and e.code is not None:
            print(e.code, file=stderr)
    finally:
        sys.argv = argv
    return rc or 0, stdout.getvalue(), stderr.getvalue()


def one_line_error(rc, stderr, *expected):
    """A non-zero exit with one line on stderr, `script: message`, holding every expected string (progress
    bars, which eval.progress draws on stderr before the work that failed, are not counted)."""
    lines = [l for l in stderr.replace("\r", "\n").strip().splitlines() if l.strip() and not re.search(r"\d+%\|", l)]
    assert rc != 0, stderr
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])


@pytest.fixture(scope="module")
def runs():
    """--help and --no_such_key=1 of every script."""
    return {(script, case): run(script, *args) for script in SCRIPTS
            for case, args in (("help", ["--help"]), ("unknown", ["--no_such_key=1"]))}


@pytest.mark.parametrize("script", SCRIPTS, ids=" ".join)
def test_help_lists_every_key(runs, script):
    rc, stdout, stderr = runs[(script, "help")]
    assert rc == 0, stderr
    listed = re.findall(r"^\s+--(\w+)=", stdout, flags=re.M)
    for key in SCRIPTS[script]:
        assert key in listed, (key, stdout[-2000:])
    rows = [line for line in stdout.splitlines() if re.match(r"\s+--\w+=", line)]
    assert all(len(row.split()) >= 3 for row in rows), rows   # key=default, type and a comment on every row


@pytest.mark.parametrize("script", SCRIPTS, ids=" ".join)
def test_unknown_key_is_a_one_line_error(runs, script):
    rc, _, stderr = runs[(script, "unknown")]
    one_line_error(rc, stderr, "--no_such_key", os.path.basename(script[0]))


def test_train_lists_every_model_field(runs):
    """train.py defines every UNetConfig field but the three measured on the data as a key of its own."""
    from dataclasses import fields

    from model import UNetConfig
    listed = set(re.findall(r"^\s+--(\w+)=", runs[(("train.py",), "help")][1], flags=re.M))
    missing = {f.name for f in fields(UNetConfig)} - {"channels", "data_spectrum", "image_size"} - listed
    assert not missing, missing


def test_figures_without_a_command():
    for args, expected in ((["--no_such_key=1"], "--no_such_key=1"), (["fig9"], "fig9"), ([], "nothing")):
        rc, _, stderr = run(("figures.py",), *args)
        one_line_error(rc, stderr, "first argument must be a command", expected)
    rc, stdout, _ = run(("figures.py",), "--help")
    assert rc == 0 and all(name in stdout for name in ("fig2", "fig3", "fig4", "fig5", "subsets"))


def test_real_process():
    """The same as a separate process: status 1 and one line on stderr, no traceback."""
    proc = subprocess.run([sys.executable, "train.py", "--no_such_key=1"], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=120)
    one_line_error(proc.returncode, proc.stderr, "train.py: unknown key --no_such_key")


# ----------------------------------------------------------------------------- bad input, swept over the CLIs
TINY = ["--base_width=4", "--num_scales=2", "--layers_per_block=2", "--emb_dim=8", "--num_freqs=4", "--batch_size=4",
        "--device=cpu", "--max_steps=1"]
TINY_MODEL = dict(channels=1, base_width=4, num_scales=1, layers_per_block=2, emb_dim=8, num_freqs=4)


def write_split(folder, train, val):
    os.makedirs(folder, exist_ok=True)
    np.save(os.path.join(folder, "train.npy"), train)
    np.save(os.path.join(folder, "val.npy"), val)
    return str(folder)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Good and bad datasets and checkpoints, made once."""
    root = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(0)
    u8 = lambda n, shape=(8, 8, 1): rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    nan = rng.random((80, 8, 8, 1), dtype=np.float32)
    nan[5, 2, 3, 0] = np.nan
    nan_val = nan[:8].copy()
    nan_val[3, 0, 0, 0] = np.inf
    f = dict(root=root,
             data=write_split(root / "data", u8(80), u8(8)),
             rgb=write_split(root / "rgb", u8(80, (8, 8, 3)), u8(8, (8, 8, 3))),
             nan=write_split(root / "nan", nan, nan_val),
             f64=write_split(root / "f64", u8(80).astype(np.float64), u8(8).astype(np.float64)),
             two=write_split(root / "two", u8(80, (8, 8, 2)), u8(8, (8, 8, 2))),
             odd=write_split(root / "odd", u8(80, (10, 10, 1)), u8(8, (10, 10, 1))),
             few=write_split(root / "few", u8(40), u8(8)),
             empty=write_split(root / "empty", u8(0), u8(0)),
             mismatch=write_split(root / "mismatch", u8(80), u8(8, (16, 16, 1))))
    for kind, cls in (("energy", EnergyUNet), ("denoiser", Denoiser)):
        torch.manual_seed(0)
        cfg = UNetConfig(**TINY_MODEL)
        torch.save(dict(model=cls(cfg).state_dict(), model_config=cfg.to_dict(), kind=kind, step=1,
                        config=dict(image_shape=[8, 8, 1])), root / f"{kind}.pt")
        f[kind] = str(root / f"{kind}.pt")
    (root / "text.pt").write_text("not a checkpoint\n")
    (root / "cut.pt").write_bytes((root / "energy.pt").read_bytes()[:500])
    os.makedirs(root / "corrupt_out")
    (root / "corrupt_out" / "ckpt.pt").write_bytes(b"not a checkpoint")
    f.update(text=str(root / "text.pt"), cut=str(root / "cut.pt"), corrupt_out=str(root / "corrupt_out"))
    return f


# (script, arguments with {placeholders} from files, text the one-line error must hold)
CASES = [
    # train.py: data
    ("train.py", "--data_dir={root}/nowhere", "train.npy not found"),
    ("train.py", "--data_dir={two}", "expected (N, H, W, C)"),
    ("train.py", "--data_dir={f64}", "dtype float64"),
    ("train.py", "--data_dir={odd}", "not divisible by 2^num_scales"),
    ("train.py", "--data_dir={few} --gaussian_term=False --analytic_term=True", "spectrum needs more images than dimensions"),
    ("train.py", "--data_dir={data} --analytic_term=True", "turn one off"),
    ("train.py", "--data_dir={data} --spectrum_floor=0", "--spectrum_floor=0.0: must be > 0"),
    ("train.py", "--data_dir={data} --energy_bound=-1", "--energy_bound=-1.0: must be > 0 or None"),
    ("train.py", "--data_dir={nan}", "train.npy: image 5 (0-based) has non-finite pixels"),
    ("train.py", "--data_dir={nan} --kind=denoiser", "train.npy: image 5"),
    ("train.py", "--data_dir={empty}", "holds no images"),
    ("train.py", "--data_dir={mismatch}", "does not match train.npy"),
    ("train.py", "--data_dir={data} --out_dir={corrupt_out}", "is corrupt"),
    # train.py: values
    ("train.py", "--data_dir={data} --lr=-1", "--lr=-1.0: must be > 0"),
    ("train.py", "--data_dir={data} --lr=nan", "--lr=nan: must be > 0"),
    ("train.py", "--data_dir={data} --beta2=1", "--beta2=1.0: must be in [0, 1)"),
    ("train.py", "--data_dir={data} --max_steps=-3", "--max_steps=-3: must be >= 1"),
    ("train.py", "--data_dir={data} --batch_size=0", "--batch_size=0: must be >= 1"),
    ("train.py", "--data_dir={data} --eval_images=0", "--eval_images=0: must be >= 1"),
    ("train.py", "--data_dir={data} --eval_t_max=0", "--eval_t_max=0.0: must be > 0"),
    ("train.py", "--data_dir={data} --time_weight=-1", "--time_weight=-1.0: must be >= 0"),
    ("train.py", "--data_dir={data} --ema_halflife_images=-8", "--ema_halflife_images=-8: must be >= 0"),
    ("train.py", "--data_dir={data} --data_var=0", "--data_var=0.0: must be > 0"),
    ("train.py", "--data_dir={data} --batch_size=5 --grad_accum=2", "--batch_size=5 must be divisible"),
    ("train.py", "--data_dir={data} --groups=3", "groups=3 must divide every width"),
    ("train.py", "--data_dir={data} --layers_per_block=1", "layers_per_block must be >= 2"),
    ("train.py", "--data_dir={data} --max_steps=ten", "--max_steps=ten: expected int"),
    ("train.py", "--data_dir={data} --kind=score", "--kind=score: expected 'energy' | 'denoiser'"),
    ("train.py", "--data_dir={data} --device=gpu", "--device=gpu: expected auto, cpu, cuda or cuda:N"),
    ("train.py", "--data_dir={data} --preset=huge", "unknown preset --preset=huge"),
    # eval.py
    ("eval.py", "--data_dir={data}", "needs --ckpt=PATH"),
    ("eval.py", "--ckpt={root}/nope.pt --data_dir={data}", "nope.pt does not exist"),
    ("eval.py", "--ckpt={text} --data_dir={data}", "text.pt is not a file written by train.py"),
    ("eval.py", "--ckpt={cut} --data_dir={data}", "cut.pt is not a file written by train.py"),
    ("eval.py", "--ckpt={denoiser} --data_dir={data}", "holds a 'denoiser' model but a 'energy' model is needed"),
    ("eval.py", "--ckpt={energy} --data_dir={rgb}", "3-channel images"),
    ("eval.py", "--ckpt={energy} --data_dir={mismatch}", "trained on 8x8x1 images"),
    ("eval.py", "--ckpt={energy} --data_dir={nan}", "val.npy: image 3 (0-based) has non-finite pixels"),
    ("eval.py", "--ckpt={energy} --data_dir={f64}", "dtype float64"),
    ("eval.py", "--ckpt={energy} --data_dir={empty}", "holds no images"),
    ("eval.py", "--ckpt={energy} --data_dir={root}/nowhere", "val.npy not found"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --max_images=0", "--max_images=0: must be >= 1, or -1"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --n_draws=0", "--n_draws=0: must be > 0"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --t_max=-1", "--t_max=-1.0: must be > 0"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --batch_size=-2", "--batch_size=-2: must be > 0"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --ode_images=-1", "--ode_images=-1: must be >= 0"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --ode_steps=0", "--ode_steps=0: must be > 0"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --ode_t_min=1e4", "--ode_t_min=10000.0: must be < --t_max"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --psnr_images=-5", "--psnr_images=-5: must be >= 0"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --split=test", "--split=test: expected 'train' | 'val'"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --weights=ema", "holds no EMA weights"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --denoiser_ckpt={energy}", "holds a 'energy' model but a 'denoiser'"),
    ("eval.py", "--ckpt={energy} --data_dir={data} --device=cuda:3", "--device=cuda:3"),
    # sample.py
    ("sample.py", "", "needs --ckpt=PATH"),
    ("sample.py", "--ckpt={root}/nope.pt", "does not exist"),
    ("sample.py", "--ckpt={text}", "is not a file written by train.py"),
    ("sample.py", "--ckpt={denoiser}", "holds a 'denoiser' model"),
    ("sample.py", "--ckpt={energy} --num_samples=0", "--num_samples=0: must be > 0"),
    ("sample.py", "--ckpt={energy} --num_samples=-3", "--num_samples=-3: must be > 0"),
    ("sample.py", "--ckpt={energy} --n_steps=0", "--n_steps=0: must be > 0"),
    ("sample.py", "--ckpt={energy} --t_max=-1", "--t_max=-1.0: must be > 0"),
    ("sample.py", "--ckpt={energy} --t_min=2000", "--t_min=2000.0: must be < --t_max"),
    ("sample.py", "--ckpt={energy} --mala_steps=-1", "--mala_steps=-1: must be >= 0"),
    ("sample.py", "--ckpt={energy} --mala_step=0", "--mala_step=0.0: must be > 0"),
    ("sample.py", "--ckpt={energy} --const_t=0", "--const_t=0.0: must be > 0"),
    ("sample.py", "--ckpt={energy} --batch_size=0", "--batch_size=0: must be > 0"),
    ("sample.py", "--ckpt={energy} --image_size=-8", "--image_size=-8: must be >= 1, or 0"),
    ("sample.py", "--ckpt={energy} --prior_mean=nan", "--prior_mean=nan: must be finite"),
    ("sample.py", "--ckpt={energy} --data_dir={nan}", "val.npy: image 3"),
    ("sample.py", "--ckpt={energy} --data_dir={rgb}", "3-channel images"),
    # figures.py
    ("figures.py", "fig3 --data_dir={data}", "fig3 needs --ckpt=PATH"),
    ("figures.py", "fig3 --ckpt={energy}", "fig3 needs --data_dir=DIR"),
    ("figures.py", "fig3 --ckpt={text} --data_dir={data}", "is not a file written by train.py"),
    ("figures.py", "fig3 --ckpt={denoiser} --data_dir={data}", "holds a 'denoiser' model"),
    ("figures.py", "fig3 --ckpt={energy} --data_dir={nan}", "val.npy: image 3"),
    ("figures.py", "fig3 --ckpt={energy} --data_dir={data} --n_shown=0", "--n_shown=0: must be > 0"),
    ("figures.py", "fig4 --ckpt={energy} --data_dir={data} --max_images=0", "--max_images=0: must be >= 1, or -1"),
    ("figures.py", "fig4 --ckpt={energy} --data_dir={data} --n_grid=-1", "--n_grid=-1: must be > 0"),
    ("figures.py", "fig5 --ckpt={energy} --data_dir={data} --n_t=0", "--n_t=0: must be > 0"),
    ("figures.py", "fig5 --ckpt={energy} --data_dir={data} --const_images=0", "--const_images=0: must be > 0"),
    ("figures.py", "fig2 --ckpt_a={energy} --ckpt_b={energy} --data_dir={data} --n_train=50", "--n_train=50: two disjoint"),
    ("figures.py", "fig2 --ckpt_a={energy} --data_dir={data}", "fig2 needs --ckpt_a=PATH --ckpt_b=PATH"),
    ("figures.py", "subsets --data_dir={data} --n_train=0", "--n_train=0: must be > 0"),
    ("figures.py", "subsets --data_dir={root}/nowhere", "train.npy not found"),
    # baseline.py
    ("baseline.py", "", "needs --data_dir=DIR"),
    ("baseline.py", "--data_dir={root}/nowhere", "train.npy not found"),
    ("baseline.py", "--data_dir={nan}", "train.npy: image 5"),
    ("baseline.py", "--data_dir={mismatch}", "need the same image shape"),
    ("baseline.py", "--data_dir={empty}", "at least 2 training images"),
    ("baseline.py", "--data_dir={few}", "not positive definite"),
    ("baseline.py", "--data_dir={data} --ridge=-1", "--ridge=-1.0: must be >= 0"),
    ("baseline.py", "--data_dir={data} --ckpt={text}", "is not a file written by train.py"),
    ("baseline.py", "--data_dir={data} --ckpt={denoiser}", "holds a 'denoiser' model"),
    # data preparation
    ("data/grf/prepare.py", "--size=0 --out={root}/g", "need size >= 1"),
    ("data/grf/prepare.py", "--amplitude=-1 --out={root}/g", "amplitude > 0"),
    ("data/grf/prepare.py", "--n_train=0 --out={root}/g", "--n_train and --n_val must be >= 1"),
    ("data/grf/prepare.py", "--warp=-1 --out={root}/g", "--warp must be >= 0"),
    ("data/imagenet64/prepare.py", "--out={root}/i", "needs --src=DIR"),
    ("data/imagenet64/prepare.py", "--src={root}/nowhere --out={root}/i", "val_data not found"),
    ("data/imagenet64/prepare.py", "--src={root} --counts=5 --out={root}/i", "--counts=5: expected two counts"),
    ("data/imagenet64/prepare.py", "--src={root} --counts=0,5 --out={root}/i", "--counts=0,5: expected two counts >= 1"),
    ("data/patches/prepare.py", "--size=0 --out={root}/p", "--size=0 and --stride=8 must be >= 1"),
    ("data/patches/prepare.py", "--stride=-1 --out={root}/p", "--stride=-1 must be >= 1"),
    ("data/synthetic/prepare.py", "--n_train=0 --out={root}/s", "need --n_train, --n_val, --size >= 1"),
    ("data/synthetic/prepare.py", "--channels=2 --out={root}/s", "--channels 1 or 3"),
]


@pytest.mark.parametrize("script, args, expected", CASES, ids=[f"{c[0]} {c[1]}" for c in CASES])
def test_bad_input_is_a_one_line_error(files, script, args, expected):
    argv = [a.format(**files) for a in args.split()]
    if script == "train.py":
        argv = TINY + [f"--out_dir={files['root']}/out"] + argv
    command = tuple(argv[:1]) if script == "figures.py" else ()
    rc, _, stderr = run((script, *command), *argv[len(command):])
    one_line_error(rc, stderr, expected, os.path.basename(script) + ":")


# ----------------------------------------------------------------------------- --device and the arithmetic flags
def test_setup_device_sets_the_shared_flags():
    from backends import full_precision, setup_device
    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())
    try:
        assert setup_device("cpu", tf32=True) == "cpu"
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with full_precision():                                  # train.py's evaluation: fp32 whatever --tf32
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32   # restored
        setup_device("cpu", deterministic=True)
        assert not torch.backends.cudnn.allow_tf32 and torch.backends.cudnn.deterministic
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
        assert setup_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
        for bad in ("gpu", "cuda:x", "cuda:99"):
            with pytest.raises(ValueError, match="--device="):
                setup_device(bad)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[:2]
        torch.backends.cudnn.deterministic = saved[2]
        torch.use_deterministic_algorithms(saved[3])



KEEP_MEMORY_PROBE = """
import resource, sys, torch
from backends import keep_freed_memory
from losses import dual_score_matching
from model import EnergyUNet, UNetConfig
limit = keep_freed_memory() if sys.argv[1] == "keep" else 0
torch.manual_seed(0)
model = EnergyUNet(UNetConfig(channels=1, base_width=8, num_scales=2))
x = torch.rand(8, 1, 32, 32)
def step():
    dual_score_matching(model, x)["loss"].mean().backward()
step(); step()
faults = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(limit, sorted(faults)[3])                   # the median step: the heap may still grow in the first few
"""


def test_keep_freed_memory_spares_page_faults():
    """backends.keep_freed_memory (train.py calls it before its CPU loop): dual score matching steps fault
    (almost) no pages in once warm. With glibc's defaults each step hands memory back to the system and
    faults it in again (median step 550-1900 faults on the machine this was written on; 2-6 with it, after
    up to ~130 in the first steps while the heap grows, hence the median of 6 steps). Skipped where the
    default does not fault (nothing to spare) or the setting is not available (not glibc)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    runs = {}
    for mode in ("default", "keep"):
        out = subprocess.run([sys.executable, "-c", KEEP_MEMORY_PROBE, mode], cwd=root, capture_output=True,
                             text=True, check=True).stdout.split()
        runs[mode] = int(out[0]), float(out[1])
    limit, faults = runs["keep"]
    if limit == 0:
        assert platform.libc_ver()[0] != "glibc", "keep_freed_memory failed on glibc"
        pytest.skip("not glibc: keep_freed_memory changes nothing")
    if runs["default"][1] < 200:
        pytest.skip(f"glibc's default faults only {runs['default'][1]:.0f} pages a step here")
    assert faults < 0.1 * runs["default"][1], f"{faults:.0f} page faults a step with it, {runs['default'][1]:.0f} without"
