"""data/imagenet64/prepare.py on pickles in the official layout; data/patches/prepare.py on synthetic and real photos."""
import importlib.util
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGENET = os.path.join(ROOT, "data", "imagenet64", "prepare.py")
PATCHES = os.path.join(ROOT, "data", "patches", "prepare.py")


def load_script(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def official_row(image):
    """(64, 64, 3) -> (12288,) the way the official pickles store it: all red, then green, then blue."""
    return np.concatenate([image[:, :, 0].ravel(), image[:, :, 1].ravel(), image[:, :, 2].ravel()])


def write_official(src, sizes=None, seed=0):
    """train_data_batch_1..10 and val_data with a few random images each; returns {file: (n, 64, 64, 3)}."""
    rng = np.random.default_rng(seed)
    names = [f"train_data_batch_{i}" for i in range(1, 11)] + ["val_data"]
    sizes = sizes or {name: 1 + i % 3 for i, name in enumerate(names)}
    images = {}
    for name in names:
        images[name] = rng.integers(0, 256, (sizes[name], 64, 64, 3), dtype=np.uint8)
        batch = {"data": np.stack([official_row(im) for im in images[name]]),
                 "labels": list(rng.integers(1, 1001, sizes[name]))}
        with open(os.path.join(src, name), "wb") as fh:
            pickle.dump(batch, fh)
    return images


def prepare_imagenet(src, out, counts, *flags):
    return subprocess.run([sys.executable, IMAGENET, f"--src={src}", f"--out={out}", f"--counts={counts}", *flags],
                          capture_output=True, text=True, timeout=60)


def test_imagenet64_colour_and_grayscale(tmp_path):
    images = write_official(tmp_path)
    train = np.concatenate([images[f"train_data_batch_{i}"] for i in range(1, 11)])
    val = images["val_data"]
    counts = f"{len(train)},{len(val)}"
    run = prepare_imagenet(tmp_path, tmp_path / "colour", counts)
    assert run.returncode == 0, run.stderr
    for split, expected in (("train", train), ("val", val)):
        x = np.load(tmp_path / "colour" / f"{split}.npy")
        assert x.dtype == np.uint8 and x.shape == expected.shape
        np.testing.assert_array_equal(x, expected)
    run = prepare_imagenet(tmp_path, tmp_path / "gray", counts, "--grayscale")
    assert run.returncode == 0, run.stderr
    x = np.load(tmp_path / "gray" / "train.npy")
    assert x.dtype == np.uint8 and x.shape == (len(train), 64, 64, 1)
    luma = 0.299 * train[..., 0].astype(np.float64) + 0.587 * train[..., 1] + 0.114 * train[..., 2]
    off = np.abs(x[..., 0].astype(np.float64) - luma)
    tie = np.abs(luma - np.floor(luma) - 0.5) < 1e-6                       # x.5 may round either way
    assert off.max() <= 1.0 and (off[~tie] <= 0.5).all()
    assert not os.path.exists(tmp_path / "gray" / "train.npy.tmp.npy")


@pytest.mark.parametrize("damage, message", [
    ("missing", "train_data_batch_7 not found"),
    ("corrupt", "is corrupt or not a pickle"),
    ("wrong layout", "expected a dict with 'data' uint8 (n, 12288)"),
    ("wrong count", "expected 99"),
])
def test_imagenet64_bad_files_fail_clearly(tmp_path, damage, message):
    images = write_official(tmp_path)
    n_train = sum(len(images[f"train_data_batch_{i}"]) for i in range(1, 11))
    path = tmp_path / "train_data_batch_7"
    if damage == "missing":
        path.unlink()
    elif damage == "corrupt":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "wrong layout":
        with open(path, "wb") as fh:
            pickle.dump({"data": np.zeros((2, 64, 64, 3), np.uint8)}, fh)
    run = prepare_imagenet(tmp_path, tmp_path / "out", f"{99 if damage == 'wrong count' else n_train},{len(images['val_data'])}")
    assert run.returncode != 0
    assert message in run.stderr and "Traceback" not in run.stderr, run.stderr
    assert not os.path.exists(tmp_path / "out" / "train.npy")              # nothing half-written is left
    assert not os.path.exists(tmp_path / "out" / "train.npy.tmp.npy")


def test_patches_cutting_on_a_synthetic_image():
    patches = load_script(PATCHES, "patches_prepare")
    image = np.random.default_rng(1).integers(0, 256, (70, 90), dtype=np.uint8)
    size, stride = 32, 8
    expected = [image[i:i + size, j:j + size] for i in range(0, 70 - size + 1, stride)
                for j in range(0, 90 - size + 1, stride)]
    np.testing.assert_array_equal(patches.cut_patches(image, size, stride), np.stack(expected))
    colour = np.random.default_rng(2).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    luma = colour.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(patches.to_gray(colour).astype(np.float64) - luma).max() <= 0.5 + 1e-9
    x = patches.make_split([image, image[:40, :40]], size, stride, seed=0)
    assert x.shape == (len(expected) + 4, size, size, 1) and x.dtype == np.uint8
    unshuffled = np.concatenate([np.stack(expected), patches.cut_patches(image[:40, :40], size, stride)])
    np.testing.assert_array_equal(np.sort(x.reshape(len(x), -1), axis=0), np.sort(unshuffled.reshape(len(x), -1), axis=0))


def test_patches_from_the_scikit_image_photographs(tmp_path):
    pytest.importorskip("skimage")
    patches = load_script(PATCHES, "patches_prepare")
    assert not set(patches.TRAIN_PHOTOS) & set(patches.VAL_PHOTOS)
    run = subprocess.run([sys.executable, PATCHES, f"--out={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    train, val = np.load(tmp_path / "train.npy"), np.load(tmp_path / "val.npy")
    assert train.dtype == val.dtype == np.uint8
    assert train.shape[1:] == val.shape[1:] == (32, 32, 1)
    assert len(train) >= 20_000 and len(val) >= 1000
    # split by photograph: no textured validation patch is also a training patch
    textured = lambda x: {p.tobytes() for p in x if p.std() > 2}
    assert not textured(train) & textured(val)
