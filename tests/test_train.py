"""train.py end to end on a tiny model: DDP gradients, exact resume, NaN stop (bad input: tests/test_cli.py).

Each test runs train.py (or torchrun) as a subprocess on 8x8 grayscale images with one thread.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from eval import load_weights
from model import load_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--base_width=4", "--num_scales=2", "--layers_per_block=2", "--emb_dim=8", "--num_freqs=4",
        "--batch_size=4", "--log_interval=1", "--eval_interval=1000", "--eval_images=8", "--device=cpu"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def write_data(folder, shape=(8, 8, 1), dtype=np.uint8, n=(80, 8)):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "val"), n):
        np.save(os.path.join(folder, f"{split}.npy"), rng.integers(0, 256, (count, *shape)).astype(dtype))
    return str(folder)


def start(*args, launcher=(sys.executable,)):
    """Launch train.py with the tiny config (runs started together overlap their start-up costs)."""
    return subprocess.Popen([*launcher, os.path.join(ROOT, "train.py"), *TINY, *args], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc):
    stdout, stderr = proc.communicate(timeout=180)
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def train(*args, **kwargs):
    return finish(start(*args, **kwargs))


def records(out_dir, key="loss"):
    with open(os.path.join(out_dir, "log.jsonl")) as fh:
        return {r["step"]: r[key] for r in map(json.loads, fh) if key in r}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("data"))


def test_ddp_gradients_equal_single_process(data_dir, tmp_path):
    """2 ranks (gloo) x 1 micro-batch of 2 and 1 process x 2 micro-batches of 2 see the same global batch, the
    mass penalty's Gaussian draws included (one generator per micro-batch)."""
    common = [f"--data_dir={data_dir}", "--max_steps=1", "--zero_init_out=False",   # zeroed: only the last conv moves at step 1
              "--norm_weight=10"]
    ddp = start(*common, f"--out_dir={tmp_path / 'ddp'}", f"--grad_dump={tmp_path / 'ddp.pt'}",
                launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    single = finish(start(*common, "--grad_accum=2", f"--out_dir={tmp_path / 'single'}",
                          f"--grad_dump={tmp_path / 'single.pt'}"))
    ddp = finish(ddp)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "world size 2" in ddp.stdout
    assert single.returncode == 0, single.stderr[-3000:]
    g_ddp, g_single = torch.load(tmp_path / "ddp.pt"), torch.load(tmp_path / "single.pt")
    assert g_ddp.keys() == g_single.keys()
    for name in g_single:
        assert g_single[name].abs().max() > 0, name
        torch.testing.assert_close(g_ddp[name], g_single[name], rtol=1e-5, atol=1e-7, msg=name)
    assert records(tmp_path / "ddp")[1] == pytest.approx(records(tmp_path / "single")[1], rel=1e-6)
    # the in-training evaluation is all-reduced: same micro-batches, same noise, same numbers
    e_ddp, e_single = records(tmp_path / "ddp", "eval")[1], records(tmp_path / "single", "eval")[1]
    assert e_ddp["n_images"] == e_single["n_images"] == 8
    assert e_ddp["nll_bpd"] == pytest.approx(e_single["nll_bpd"], rel=1e-5)


def test_resume_repeats_uninterrupted_run(data_dir, tmp_path):
    common = [f"--data_dir={data_dir}", "--ckpt_interval=2", "--ema_halflife_images=8"]
    full = start(*common, "--max_steps=4", f"--out_dir={tmp_path / 'full'}")
    first = train(*common, "--max_steps=2", f"--out_dir={tmp_path / 'resumed'}")
    assert first.returncode == 0, first.stderr[-3000:]
    second = train(*common, "--max_steps=4", f"--out_dir={tmp_path / 'resumed'}")
    assert second.returncode == 0, second.stderr[-3000:]
    full = finish(full)
    assert full.returncode == 0, full.stderr[-3000:]
    assert "resuming from" in second.stdout and "at step 2" in second.stdout
    losses_full, losses_resumed = records(tmp_path / "full"), records(tmp_path / "resumed")
    assert sorted(losses_full) == sorted(losses_resumed) == [1, 2, 3, 4]
    assert all(np.isfinite(list(losses_full.values())))
    # bit for bit, after the restart too: by construction on a CPU, where every kernel is deterministic for a
    # fixed thread count (both runs have OMP_NUM_THREADS=1), the data order and noise come from generators
    # seeded by (seed, step, micro-batch), and the checkpoint holds the exact weights, Adam state and EMA
    assert losses_resumed == losses_full
    a = torch.load(tmp_path / "full" / "ckpt.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "ckpt.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and a["kind"] == "energy"
    for key in ("model", "ema"):
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert torch.load(tmp_path / "full" / "ckpt_prev.pt", weights_only=True)["step"] == 2
    model, ckpt = load_model(str(tmp_path / "full" / "ckpt.pt"), kind="energy")
    assert ckpt["config"]["max_steps"] == 4 and ckpt["model_config"]["channels"] == 1
    assert ckpt["config"]["image_shape"] == [8, 8, 1]               # eval / sample / figures need no data_dir
    ema_model, ema_ckpt = load_weights(str(tmp_path / "full" / "ckpt.pt"), "cpu")   # the EMA by default
    assert ema_ckpt["weights"] == "ema"
    for name, p in ema_model.named_parameters():
        assert torch.equal(p.detach(), a["ema"][name]), name
    # the default confining energy: the Gaussian term measured on the 80 training images (its buffers are in
    # the state_dict, compared above), the pixel variance in both configs, read back by the resumed run
    mc = ckpt["model_config"]
    assert mc["gaussian_term"] and tuple(mc["image_size"]) == (8, 8) and mc["energy_bound"] == 1.0
    assert ckpt["config"]["data_var"] == mc["data_var"] > 0 and b["model_config"]["data_var"] == mc["data_var"]
    x = np.load(os.path.join(data_dir, "train.npy")).astype(np.float64) / 255
    assert mc["data_var"] == pytest.approx(x.var(), rel=1e-5)      # Parseval: mean of diag P_k = E (x - m)^2
    assert model.gaussian.mean.item() == pytest.approx(x.mean(), rel=1e-5)
    with open(tmp_path / "full" / "config.json") as fh:
        assert json.load(fh)["ema_halflife_images"] == 8
    # a checkpoint of the non-fused Adam (older runs) resumes into the fused one, with the same numbers
    old = torch.load(tmp_path / "full" / "ckpt_prev.pt", weights_only=True)
    for group in old["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=None)
    for state in old["optimizer"]["state"].values():
        state["step"] = state["step"].cpu()
    os.makedirs(tmp_path / "old")
    torch.save(old, tmp_path / "old" / "ckpt.pt")
    again = train(*common, "--max_steps=4", f"--out_dir={tmp_path / 'old'}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert records(tmp_path / "old") == {k: v for k, v in losses_full.items() if k > 2}


def test_non_finite_loss_stops_and_keeps_last_checkpoint(data_dir, tmp_path):
    """The denoiser with an absurd learning rate: step 1 is fine, then the loss overflows.

    The host looks at the on-device flag only at log, evaluation and checkpoint steps: with a checkpoint
    every step it stops at the first bad one; with logs and checkpoints every 4 steps it stops at step 4,
    having skipped every update from the bad step on, and writes no checkpoint."""
    out, deferred = tmp_path / "nan", tmp_path / "deferred"
    late = start(f"--data_dir={data_dir}", "--kind=denoiser", "--lr=1e30", "--max_steps=8", "--log_interval=4",
                 "--ckpt_interval=4", f"--out_dir={deferred}")
    run = train(f"--data_dir={data_dir}", "--kind=denoiser", "--lr=1e30", "--max_steps=5", "--ckpt_interval=1",
                f"--out_dir={out}")
    late = finish(late)
    assert late.returncode != 0 and "stopped at step 4 with the weights of step" in late.stdout, late.stdout[-2000:]
    assert not os.path.exists(deferred / "ckpt.pt")
    assert run.returncode != 0
    assert "not finite" in run.stdout and "last good one" in run.stdout
    ckpt = torch.load(out / "ckpt.pt", weights_only=True)
    assert ckpt["kind"] == "denoiser" and 1 <= ckpt["step"] < 5
    mc = ckpt["model_config"]                                     # no energy: no data statistics measured
    assert not mc["analytic_term"] and not mc["scale_energy"] and mc["data_spectrum"] is None
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_defaults_train_on_a_single_image(tmp_path):
    """The stationary Gaussian term is defined for any N >= 1 (dataset.stationary_spectrum): no singular covariance."""
    folder = write_data(tmp_path / "one", n=(1, 8))
    run = train(f"--data_dir={folder}", "--max_steps=2", "--eval_interval=2", f"--out_dir={tmp_path / 'out'}")
    assert run.returncode == 0, run.stderr[-3000:]
    nll = records(tmp_path / "out", "eval")[2]["nll_bpd"]
    assert np.isfinite(nll)
