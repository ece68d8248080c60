"""Reading an image file: the one reader every entry uses for photos and pose images (numpy + PIL, no torch, so the
pose tool shares it).

- EXIF orientation is applied (a phone photo stored sideways with orientation 6 comes out upright, as viewers and
  OpenCV show it), so the photo and the pose drawn from it always agree;
- 16-bit and float images are scaled to 8 bits, not clipped (PIL's own `convert("RGB")` clips: a 16-bit grey photo
  came out 98% white);
- an alpha channel is dropped (the colour under it is kept), as OpenCV's `IMREAD_COLOR` does.
"""
from __future__ import annotations

import os
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[Image.Image, np.ndarray]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_EXIF_ORIENTATION = 0x0112


def _scale_to_uint8(values: np.ndarray, mode: str) -> np.ndarray:
    """Grey values of a 16-bit, 32-bit int or float image -> uint8, by the range the mode implies."""
    values = values.astype(np.float64)
    finite = values[np.isfinite(values)]
    peak = float(finite.max()) if finite.size else 0.0
    if mode in _SIXTEEN_BIT_MODES:
        scale = 255 / 65535
    elif mode == "F" and peak <= 1.0:
        scale = 255.0                     # float images in [0, 1]
    elif peak <= 255:
        scale = 1.0                       # "I"/"F" images that hold 8-bit values
    else:
        scale = 255 / 65535               # "I"/"F" images that hold 16-bit values (how PIL opens 16-bit PNGs)
    scaled = np.nan_to_num(values * scale, nan=0.0, posinf=255.0, neginf=0.0)
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)


def to_rgb_uint8(image: ImageLike) -> np.ndarray:
    """A PIL image of any mode, or an H x W x 3 uint8 array, as a contiguous H x W x 3 uint8 RGB array. A PIL image
    that still carries an EXIF orientation (`Image.open` of a phone photo, as upstream's README passes it) is turned
    upright first, as `read_image_rgb` does, so the photo agrees with the pose drawn from it."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image arrays must be H x W x 3 uint8 RGB; got {image.dtype} {image.shape}")
        return np.ascontiguousarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or an H x W x 3 uint8 array; got {type(image).__name__}")
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(image), image.mode)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.asarray(image.convert("RGB")).copy()


def read_image_rgb(path: Union[str, os.PathLike]) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB, upright (EXIF orientation applied); errors name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return to_rgb_uint8(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {path}: not an image, or damaged ({error})") from None


def read_image_bgr(path: Union[str, os.PathLike]) -> np.ndarray:
    """`read_image_rgb` in OpenCV's channel order (for the pose tool, which works in BGR)."""
    return np.ascontiguousarray(read_image_rgb(path)[..., ::-1])


__all__ = ["ImageLike", "to_rgb_uint8", "read_image_rgb", "read_image_bgr"]
