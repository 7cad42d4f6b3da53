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


# ----------------------------------------------------------------------------- dataset.covariance_spectrum
def gaussian_images(n, H, W, C, seed=0):
    """n images (N, H, W, C) float32 from N(0.5, A A^T) with a known covariance; (images, sorted eigenvalues)."""
    rng = np.random.default_rng(seed)
    d = H * W * C
    A = rng.normal(size=(d, d)) * np.logspace(-2, -0.5, d)          # spread eigenvalues over ~3 decades
    cov = A @ A.T
    x = 0.5 + rng.normal(size=(n, d)) @ A.T
    return x.reshape(n, H, W, C).astype(np.float32), np.sort(np.linalg.eigvalsh(cov))


def test_covariance_spectrum_matches_numpy_and_the_truth():
    from dataset import covariance_spectrum
    images, true_lam = gaussian_images(20000, 4, 2, 2)                # d = 16
    flat = images.reshape(len(images), -1).astype(np.float64)
    sample_lam = np.sort(np.linalg.eigvalsh(np.cov(flat.T, bias=True)))  # independent: numpy, float64
    var, spectrum = covariance_spectrum(images, n_bins=256)
    assert len(spectrum) == 16                                        # d < n_bins: every eigenvalue
    np.testing.assert_allclose(spectrum, sample_lam, rtol=1e-8)
    np.testing.assert_allclose(var, flat.var(axis=0).mean(), rtol=1e-10)
    # sampling error of an eigenvalue ~ sqrt(2 / n) = 1%: within 5% of the truth
    np.testing.assert_allclose(spectrum, true_lam, rtol=0.05)
    # 4 bins of 4: geometric means of the sorted eigenvalues
    _, binned = covariance_spectrum(images, n_bins=4)
    np.testing.assert_allclose(binned, np.exp(np.log(sample_lam).reshape(4, 4).mean(1)), rtol=1e-8)
    # 6 does not divide 16: the largest divisor below it, 4
    assert len(covariance_spectrum(images, n_bins=6)[1]) == 4
    # max_images: the first images only
    _, first = covariance_spectrum(images, max_images=1000)
    first_lam = np.sort(np.linalg.eigvalsh(np.cov(flat[:1000].T, bias=True)))
    np.testing.assert_allclose(first, first_lam, rtol=1e-8)


def test_covariance_spectrum_of_uint8_is_in_model_units():
    from dataset import covariance_spectrum
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (500, 3, 3, 1)).astype(np.uint8)
    var, spectrum = covariance_spectrum(images)
    var_f, spectrum_f = covariance_spectrum((images / 255.0).astype(np.float32))
    np.testing.assert_allclose(spectrum, spectrum_f, rtol=1e-6)
    np.testing.assert_allclose(var, (255 ** 2 - 1) / 12 / 255 ** 2, rtol=0.1)    # uniform over 0..255


def test_covariance_spectrum_needs_more_images_than_dimensions():
    from dataset import covariance_spectrum
    images, _ = gaussian_images(16, 4, 2, 2)
    with pytest.raises(ValueError, match="more images than dimensions"):
        covariance_spectrum(images)


def test_synthetic_splits(tmp_path):
    """data/synthetic/prepare.py: uint8 splits of the asked sizes, written chunk by chunk (4096 images a chunk)."""
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "synthetic", "prepare.py")
    run = subprocess.run([sys.executable, script, "--n_train=5000", "--n_val=3", "--size=4", "--channels=1",
                          f"--out={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    train, val = np.load(tmp_path / "train.npy"), np.load(tmp_path / "val.npy")
    assert train.shape == (5000, 4, 4, 1) and val.shape == (3, 4, 4, 1) and train.dtype == val.dtype == np.uint8
    counts = np.bincount(train.ravel(), minlength=256)              # uniform over 0..255, the last chunk included
    assert counts.min() > 0 and train[4096:].std() > 60


def spectrum_by_hand(x):
    """numpy, float64: the sample cross-spectrum S (H, W, C, C) of images x (N, H, W, C) about the per-channel
    mean (orthonormal 2-D DFT), the mean pixel variance v and the mean of S over the ring round(|k|) = 1."""
    N, H, W, C = x.shape
    y = np.fft.fft2(x.astype(np.float64) - x.mean(axis=(0, 1, 2)), axes=(1, 2), norm="ortho")   # (N, H, W, C)
    S = np.einsum("nhwc,nhwd->hwcd", y, y.conj()) / N
    v = np.einsum("hwcc->", S).real / (H * W * C)
    k = np.sqrt(np.fft.fftfreq(H, 1 / H)[:, None] ** 2 + np.fft.fftfreq(W, 1 / W)[None, :] ** 2)
    return S, v, S[np.round(k) == 1].mean(axis=0)


def test_stationary_spectrum_dc_target_is_the_lowest_ring():
    """k = 0: the shrinkage target is the mean of S over the ring round(|k|) = 1 (the DC's own ring is the DC alone).
    N = 1: S_0 = 0, so P_0 = R_ring1 / 2 + floor v I, far above the floor alone. Large N: P_0 differs from the
    sample S_0 + floor v I by exactly (R_ring1 - S_0) / (N + 1), O(1/N)."""
    from dataset import stationary_spectrum
    rng = np.random.default_rng(5)
    floor, C = 1e-3, 2
    one = (0.5 + 0.2 * rng.normal(size=(1, 8, 8, C))).astype(np.float32)
    _, P, _ = stationary_spectrum(one, floor=floor)
    S, v, R1 = spectrum_by_hand(one)
    np.testing.assert_allclose(S[0, 0], 0, atol=1e-12)
    expected = R1 / 2 + floor * v * np.eye(C)
    np.testing.assert_allclose(P[0, 0].numpy(), expected, rtol=1e-6, atol=1e-12)
    assert np.linalg.eigvalsh(P[0, 0].numpy()).min() > 10 * floor * v          # not the floor alone
    for N in (100, 2000):
        x = (0.5 + 0.2 * rng.normal(size=(N, 8, 8, C))).astype(np.float32)
        _, P, _ = stationary_spectrum(x, floor=floor)
        S, v, R1 = spectrum_by_hand(x)
        change = P[0, 0].numpy() - (S[0, 0] + floor * v * np.eye(C))           # against the sample DC variance
        np.testing.assert_allclose(change, (R1 - S[0, 0]) / (N + 1), rtol=1e-5, atol=1e-9)
        assert np.abs(change).max() <= (np.abs(R1).max() + np.abs(S[0, 0]).max()) / (N + 1) * (1 + 1e-6)
