"""A small real-image dataset for CPU runs: grayscale 32x32 patches of the photographs in scikit-image.

    python data/patches/prepare.py                   # -> data/patches/train.npy, val.npy, uint8 (N, 32, 32, 1)
    python data/patches/prepare.py --stride=16       # fewer, less overlapping patches

Photographs are split between train and val (no photograph in both), converted to grayscale with
ITU-R 601 luma (as the grayscale ImageNet64), and cut into overlapping patches (stride 8 by default:
neighbours share 3/4 of their pixels), shuffled with a fixed seed. Needs scikit-image, whose wheel
ships these photographs (no download).
"""
import os
import sys

import numpy as np

TRAIN_PHOTOS = ["astronaut", "brick", "chelsea", "coins", "grass", "gravel", "immunohistochemistry",
                "moon", "rocket", "motorcycle_left"]
VAL_PHOTOS = ["camera", "coffee"]
LUMA = np.array([0.299, 0.587, 0.114])           # ITU-R 601


def load_photo(name):
    """One scikit-image photograph as (H, W) uint8 grayscale."""
    import skimage.data
    image = skimage.data.stereo_motorcycle()[0] if name == "motorcycle_left" else getattr(skimage.data, name)()
    return to_gray(image)


def to_gray(image):
    """(H, W) or (H, W, 3) uint8 -> (H, W) uint8, ITU-R 601 luma for colour."""
    if image.ndim == 2:
        return image
    return np.rint(image[..., :3] @ LUMA).clip(0, 255).astype(np.uint8)


def cut_patches(image, size, stride):
    """(H, W) -> (n, size, size): every size x size window at multiples of stride, row-major order."""
    windows = np.lib.stride_tricks.sliding_window_view(image, (size, size))[::stride, ::stride]  # (nh, nw, size, size)
    return windows.reshape(-1, size, size)


def make_split(images, size, stride, seed):
    """Patches of all images, shuffled: (N, size, size, 1) uint8."""
    patches = np.concatenate([cut_patches(im, size, stride) for im in images])
    return patches[np.random.default_rng(seed).permutation(len(patches)), :, :, None]


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from configurator import configure, fail, require
    config = configure(dict(
        out="",                      # output folder; "" = this script's folder (data/patches)
        size=32,                     # patch side in pixels
        stride=8,                    # step between patches in pixels
        seed=0,                      # seed of the shuffle
    ), doc=__doc__, source_file=__file__)
    require(config["size"] >= 1 and config["stride"] >= 1,
            f"--size={config['size']} and --stride={config['stride']} must be >= 1 (pixels)")
    try:
        import skimage  # noqa: F401
    except ImportError:
        fail("needs scikit-image: pip install scikit-image (see requirements.txt)")
    out = config["out"] or os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    for split, photos in (("train", TRAIN_PHOTOS), ("val", VAL_PHOTOS)):
        x = make_split([load_photo(p) for p in photos], config['size'], config['stride'], config['seed'])
        np.save(os.path.join(out, f"{split}.npy"), x)
        print(f"{split}: {x.shape} {x.dtype} from {', '.join(photos)}")
