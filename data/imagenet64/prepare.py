"""ImageNet64 (docs/method.md §4) from the official pickles to train.npy / val.npy, uint8 (N, 64, 64, C).

Download "Downsampled ImageNet 64x64" from image-net.org (Imagenet64_train_part1.zip,
Imagenet64_train_part2.zip, Imagenet64_val.zip; Chrabaszcz et al. 2017), unzip all three into one
folder SRC holding train_data_batch_1 ... train_data_batch_10 and val_data, then

    python data/imagenet64/prepare.py --src=SRC                  # colour -> data/imagenet64/{train,val}.npy
    python data/imagenet64/prepare.py --src=SRC --grayscale      # ITU-R 601 luma -> data/imagenet64_gray/

Each pickle is a dict with `data`, uint8 (n, 12288): per row 4096 red values, then 4096 green, then
4096 blue, each a row-major 64x64 plane. Rows are streamed into a preallocated memory-mapped .npy
(written under a temporary name, renamed when complete), so memory holds one pickle at a time.
The pickles are unpickled: use only the official files.
"""
import os
import pickle
import sys
import time

import numpy as np

SIDE = 64
TRAIN_FILES = [f"train_data_batch_{i}" for i in range(1, 11)]
VAL_FILES = ["val_data"]
COUNTS = (1_281_167, 50_000)                     # official train and validation image counts
LUMA = np.array([0.299, 0.587, 0.114])           # ITU-R 601


def read_pickle(path):
    """`data` (n, 3 * SIDE^2) uint8 of one official pickle; ValueError on anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: unzip Imagenet64_train_part1.zip, Imagenet64_train_part2.zip "
                                f"and Imagenet64_val.zip (image-net.org, 'Downsampled ImageNet 64x64') into --src")
    try:
        with open(path, "rb") as fh:
            batch = pickle.load(fh)
    except Exception as e:
        raise ValueError(f"{path} is corrupt or not a pickle ({type(e).__name__}: {e}); download it again") from e
    data = batch.get("data") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * SIDE ** 2:
        got = f"{type(data).__name__} {getattr(data, 'shape', '')} {getattr(data, 'dtype', '')}"
        raise ValueError(f"{path}: expected a dict with 'data' uint8 (n, {3 * SIDE ** 2}), got {got}; download it again")
    return data


def to_images(rows, grayscale):
    """(n, 3 * SIDE^2) channel-planar rows -> (n, SIDE, SIDE, C) uint8, C = 1 with grayscale."""
    x = rows.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)                   # (n, H, W, 3)
    if grayscale:
        x = np.rint(x @ LUMA)[..., None].clip(0, 255).astype(np.uint8)         # (n, H, W, 1)
    return x


def convert(files, out_path, count, grayscale, chunk=10_000):
    """Stream the pickles `files` into out_path, a (count, SIDE, SIDE, C) uint8 .npy."""
    tmp = out_path + ".tmp.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(count, SIDE, SIDE, 1 if grayscale else 3))
    n, t0 = 0, time.time()
    try:
        for path in files:
            data = read_pickle(path)
            if n + len(data) > count:
                raise ValueError(f"{path} brings the count past the expected {count} images: wrong or duplicated files")
            for i in range(0, len(data), chunk):
                out[n + i:n + i + len(data[i:i + chunk])] = to_images(data[i:i + chunk], grayscale)
            n += len(data)
            rate = n / max(time.time() - t0, 1e-9)
            eta = f"{(count - n) / rate / 60:.1f} min" if rate > 0 else "?"
            print(f"{path}: {len(data)} images, {n}/{count}, {rate:.0f} images/s, eta {eta}", flush=True)
        if n != count:
            raise ValueError(f"{out_path}: read {n} images, expected {count}: files are missing or truncated")
        out.flush()
    except BaseException:
        del out
        os.remove(tmp)
        raise
    del out
    os.replace(tmp, out_path)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from configurator import configure, fail, require
    config = configure(dict(
        src="",                      # folder with train_data_batch_1 .. train_data_batch_10 and val_data (required)
        out="",                      # output folder; "" = data/imagenet64 (data/imagenet64_gray with --grayscale)
        grayscale=False,             # ITU-R 601 luma, (N, 64, 64, 1)
        counts=COUNTS,               # expected train,val image counts (default: the official ones)
    ), doc=__doc__, source_file=__file__)
    require(config["src"], "needs --src=DIR, the folder holding the unzipped official pickles (see --help)")
    require(len(config["counts"]) == 2 and min(config["counts"]) >= 1,
            f"--counts={','.join(map(str, config['counts']))}: expected two counts >= 1, train,val")
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = config["out"] or (here + "_gray" if config["grayscale"] else here)
    n_train, n_val = config["counts"]
    os.makedirs(out_dir, exist_ok=True)
    try:
        for files, name, count in ((VAL_FILES, "val", n_val), (TRAIN_FILES, "train", n_train)):
            convert([os.path.join(config['src'], f) for f in files], os.path.join(out_dir, f"{name}.npy"), count,
                    config["grayscale"])
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    print(f"wrote {out_dir}/train.npy and val.npy")
