"""Synthetic splits of uniform random uint8 images: a dataset of any size for memory and speed checks.

    python data/synthetic/prepare.py --n_train=40000 --n_val=40000 --out=/tmp/synth40k   # 64x64x3 like ImageNet64

The images are independent uniform noise (nothing to learn); only their number, size and dtype
matter. Written chunk by chunk into memory-mapped .npy files, so memory does not grow with the count.
"""
import os
import sys

import numpy as np

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from configurator import configure, require
    config = configure(dict(
        n_train=10_000,              # training images
        n_val=10_000,                # validation images
        size=64,                     # image side H = W in pixels
        channels=3,                  # C: 3 colour, 1 grayscale
        seed=0,                      # seed of the pixel values
        out="data/synthetic",        # output folder
    ), doc=__doc__, source_file=__file__)
    require(min(config["n_train"], config["n_val"], config["size"]) >= 1 and config["channels"] in (1, 3),
            f"need --n_train, --n_val, --size >= 1 and --channels 1 or 3, got {config}")
    os.makedirs(config["out"], exist_ok=True)
    rng = np.random.default_rng(config["seed"])
    shape = (config["size"], config["size"], config["channels"])
    for split in ("train", "val"):
        path = os.path.join(config["out"], f"{split}.npy")
        x = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(config[f"n_{split}"], *shape))
        for i in range(0, len(x), 4096):
            x[i:i + 4096] = rng.integers(0, 256, (len(x[i:i + 4096]), *shape), dtype=np.uint8)
        x.flush()
        del x
        print(f"wrote {path}: ({config[f'n_{split}']}, {', '.join(map(str, shape))}) uint8")
