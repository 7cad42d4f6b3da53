"""A small real-image dataset for CPU runs: grayscale 32x32 patches of the photographs in scikit-image.

    python data/patches/prepare.py                   # -> data/patches/train.npy, val.npy, uint8 (N, 32, 32, 1)
    python data/patches/prepare.py --stride=16       # fewer, less overlapping patches

Photographs are split between train and val (no photograph in both), converted to grayscale with
ITU-R 601 luma (as the grayscale ImageNet64), and cut into overlapping patches (stride 8 by default:
neighbours share 3/4 of their pixels), shuffled with a fixed seed. Needs scikit-image, whose wheel
ships these photographs (no download).
"""
import argparse
import os

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
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="output folder")
    parser.add_argument("--size", type=int, default=32, help="patch side in pixels")
    parser.add_argument("--stride", type=int, default=8, help="step between patches in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle")
    args = parser.parse_args()
    try:
        import skimage  # noqa: F401
    except ImportError:
        raise SystemExit("prepare.py needs scikit-image: pip install scikit-image (see requirements.txt)")
    os.makedirs(args.out, exist_ok=True)
    for split, photos in (("train", TRAIN_PHOTOS), ("val", VAL_PHOTOS)):
        x = make_split([load_photo(p) for p in photos], args.size, args.stride, args.seed)
        np.save(os.path.join(args.out, f"{split}.npy"), x)
        print(f"{split}: {x.shape} {x.dtype} from {', '.join(photos)}")
