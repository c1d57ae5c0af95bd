"""Sample photos shipped inside installed packages, and deterministic crops of them.

Photos: scikit-image's colour photos, matplotlib's ``grace_hopper.jpg``, scikit-learn's
``china.jpg`` and ``flower.jpg``. No downloads: every file is read from the package folder.

Calibration crops come only from :data:`CALIBRATION_PHOTOS`; evaluation crops come from
all photos with another seed, so :data:`HELD_OUT_PHOTOS` are never seen by calibration.
Two evaluation sets share no source photo with calibration at all: :func:`held_out_crops`
(:data:`HELD_OUT_PHOTOS`, seed 1) and :func:`other_crops` (:data:`OTHER_PHOTOS`, scikit-image's
greyscale photos and matplotlib's gift-pack photo, seed 2).
A crop is a random-resized crop (area 25-100 %, aspect 3/4-4/3) with a random horizontal
flip, resized to the model's size: the usual ImageNet-style augmentation, made
deterministic by the seed.
"""

from __future__ import annotations

import functools
from typing import Iterator
from pathlib import Path

import numpy as np

from trtq.core.errors import DataError

CALIBRATION_PHOTOS = ("astronaut", "rocket", "motorcycle_left", "motorcycle_right", "china",
                      "hubble_deep_field", "ihc", "retina")
HELD_OUT_PHOTOS = ("chelsea", "coffee", "grace_hopper", "flower")
OTHER_PHOTOS = ("camera", "brick", "grass", "gravel", "coins", "moon", "clock_motion", "gift_pack")
CALIBRATION_SEED = 0
EVALUATION_SEED = 1
OTHER_SEED = 2


def photo_paths() -> dict[str, Path]:
    """Name -> file of every sample photo that is installed."""
    paths: dict[str, Path] = {}
    try:
        import skimage

        d = Path(skimage.__file__).parent / "data"
        for name in ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
                     "motorcycle_right.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png",
                     "brick.png", "grass.png", "gravel.png", "coins.png", "moon.png", "clock_motion.png"):
            paths[name.rsplit(".", 1)[0]] = d / name
    except ImportError:
        pass
    try:
        import matplotlib

        d = Path(matplotlib.get_data_path()) / "sample_data"
        paths["grace_hopper"], paths["gift_pack"] = d / "grace_hopper.jpg", d / "Minduka_Present_Blue_Pack.png"
    except ImportError:
        pass
    try:
        import sklearn

        d = Path(sklearn.__file__).parent / "datasets" / "images"
        paths["china"], paths["flower"] = d / "china.jpg", d / "flower.jpg"
    except ImportError:
        pass
    return {k: v for k, v in paths.items() if v.is_file()}


@functools.lru_cache(maxsize=None)
def _photo_image(name: str):
    from PIL import Image

    paths = photo_paths()
    if name not in paths:
        raise DataError(f"sample photo '{name}' is not installed; available: {', '.join(sorted(paths))}. "
                        "Install the photos with: pip install 'trtq[models]'")
    with Image.open(paths[name]) as img:
        return img.convert("RGB")


def load_photo(name: str) -> np.ndarray:
    """One sample photo as a uint8 HxWx3 RGB array."""
    return np.asarray(_photo_image(name), dtype=np.uint8)


def random_resized_crop(photo, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of 25-100 % of the area with aspect 3/4-4/3, resized to ``size``, maybe flipped.

    ``photo`` is a PIL image or a uint8 HxWx3 array.
    """
    from PIL import Image

    if not isinstance(photo, Image.Image):
        photo = Image.fromarray(np.asarray(photo, np.uint8))
    w, h = photo.size
    for _ in range(10):
        area = h * w * rng.uniform(0.25, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * aspect))), int(round(np.sqrt(area / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw = ch = min(h, w)
    top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    img = photo.resize((size, size), Image.BILINEAR, box=(left, top, left + cw, top + ch))
    crop = np.asarray(img, dtype=np.uint8)
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def iter_crops(count: int, size: int = 224, photos: tuple[str, ...] | None = None,
               seed: int = CALIBRATION_SEED) -> Iterator[np.ndarray]:
    """Lazily yield ``count`` deterministic crops (uint8 HxWx3 RGB), cycling over ``photos``."""
    names = tuple(photos) if photos is not None else tuple(sorted(photo_paths()))
    if not names:
        raise DataError("no sample photos are installed: pip install 'trtq[models]'")
    rng = np.random.default_rng(seed)
    for i in range(count):
        yield random_resized_crop(_photo_image(names[i % len(names)]), size, rng)


def sample_crops(count: int, size: int = 224, photos: tuple[str, ...] | None = None,
                 seed: int = CALIBRATION_SEED) -> np.ndarray:
    """``count`` deterministic crops (uint8, NxHxWx3 RGB), cycling over ``photos``."""
    out = np.empty((count, size, size, 3), np.uint8)
    for i, crop in enumerate(iter_crops(count, size, photos, seed)):
        out[i] = crop
    return out


def calibration_crops(count: int, size: int = 224) -> np.ndarray:
    """Crops of the calibration photos only (held-out photos never appear)."""
    return sample_crops(count, size, CALIBRATION_PHOTOS, CALIBRATION_SEED)


def evaluation_crops(count: int, size: int = 224) -> np.ndarray:
    """Crops of all photos, held-out ones included, with a seed calibration does not use."""
    return sample_crops(count, size, CALIBRATION_PHOTOS + HELD_OUT_PHOTOS, EVALUATION_SEED)


def held_out_crops(count: int, size: int = 224) -> np.ndarray:
    """Crops of the held-out photos only: no source photo in common with calibration."""
    return sample_crops(count, size, HELD_OUT_PHOTOS, EVALUATION_SEED)


def other_crops(count: int, size: int = 224) -> np.ndarray:
    """Crops of :data:`OTHER_PHOTOS` (another seed): a second set sharing no photo with calibration
    nor with :func:`held_out_crops`."""
    return sample_crops(count, size, OTHER_PHOTOS, OTHER_SEED)
