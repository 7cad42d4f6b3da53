"""Every command-line script: --help lists its keys, and bad input stops it with one line, no traceback.

Options go through configurator.py in every script. Each case runs the script in this process as
`python SCRIPT ARGS` would (runpy, sys.argv), which saves a Python and torch start-up per case;
test_real_process checks one case as a separate process.
"""
import contextlib
import io
import os
import re
import runpy
import subprocess
import sys

import pytest

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
    """A non-zero exit with one line on stderr, `script: message`, holding every expected string."""
    lines = stderr.strip().splitlines()
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
