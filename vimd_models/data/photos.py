"""Real photographs for super-resolution without a download: the images scikit-image ships in its
package (``skimage/data``), split into disjoint training and test photos (``PHOTOS``).

``data.dataset: photos``: training cuts random HR patches from the training photos (``data.train_size``
patches per epoch, cycling over the photos); evaluation runs on the whole test photos. HR is
mod-cropped to the scale, LR made like MATLAB's bicubic and rounded to 8 bits; grey photos are
repeated over the three channels and an alpha channel is dropped.
"""
from __future__ import annotations

import os

import torch

from ..errors import UserError
from .sr import make_lr, mod_crop

# split -> file names in skimage's data folder. The test photos are never trained on; the two
# motorcycle photos (a stereo pair of one scene) are both in the test split.
PHOTOS = {
    "train": ("astronaut.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png", "brick.png", "grass.png",
              "gravel.png", "moon.png", "cell.png", "clock_motion.png"),
    "test": ("chelsea.png", "camera.png", "coins.png", "motorcycle_left.png", "motorcycle_right.png"),
}


def photo_dir() -> str:
    try:
        import skimage
    except ImportError:
        raise UserError("data.dataset 'photos' reads the photographs scikit-image ships: "
                        "pip install 'vimd[photos]' (scikit-image)") from None
    return os.path.join(os.path.dirname(skimage.__file__), "data")


def read_photo(name: str) -> torch.Tensor:
    """One photo as uint8 (3, H, W)."""
    from PIL import Image
    path = os.path.join(photo_dir(), name)
    if not os.path.isfile(path):
        raise UserError(f"photo {name} not found in {photo_dir()} (this scikit-image does not ship it)")
    with Image.open(path) as im:
        img = im.convert("RGB")  # L -> three equal channels, RGBA -> RGB
    return torch.frombuffer(bytearray(img.tobytes()), dtype=torch.uint8).view(img.height, img.width, 3).permute(2, 0, 1)


class PhotoSR:
    """``get_u8(i)`` -> (hr, lr) uint8 of photo ``i % len(photos)``; ``length`` items (training: patches
    per epoch) or one per photo. Photos are decoded and their LR made once, on first use."""

    def __init__(self, split: str, scale: int, length: int | None = None):
        if split not in PHOTOS:
            raise UserError(f"photos split must be one of {', '.join(PHOTOS)}, got {split!r}")
        self.files, self.scale = PHOTOS[split], scale
        self.length = length or len(self.files)
        self.name = f"photos_{split}"
        self.where = f"{photo_dir()} ({len(self.files)} {split} photos)"
        self._mem: list | None = None

    def __len__(self) -> int:
        return self.length

    def preload(self) -> None:
        if self._mem is None:
            pairs = []
            for f in self.files:
                hr = mod_crop(read_photo(f), self.scale).contiguous()
                pairs.append((hr, make_lr(hr, self.scale)))
            self._mem = pairs

    def file_groups(self) -> list[tuple[str, str]]:
        return [(os.path.join(photo_dir(), f), "HR") for f in self.files]

    def get_u8(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.preload()
        return self._mem[index % len(self.files)]

    def get(self, index: int):
        from .sr import to_float
        hr, lr = self.get_u8(index)
        return to_float(hr), to_float(lr)


__all__ = ["PHOTOS", "PhotoSR", "read_photo", "photo_dir"]
