"""Images in and out of the models: decoding any PIL mode to 8-bit RGB, resizing as upstream, tensors <-> frames.

All PIL use of the pipelines lives here, so pipelines and models only see tensors. 16-bit and float images are
*scaled* to 8 bits (PIL's own `convert("RGB")` clips them: a 16-bit grey photo came out 98% white).
"""
from __future__ import annotations

from typing import List, Union

import numpy as np
import torch
from PIL import Image

ImageLike = Union[Image.Image, np.ndarray]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")


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
    """A PIL image of any mode, or an H x W x 3 uint8 array, as a contiguous H x W x 3 uint8 RGB array."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image arrays must be H x W x 3 uint8 RGB; got {image.dtype} {image.shape}")
        return np.ascontiguousarray(image)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image or an H x W x 3 uint8 array; got {type(image).__name__}")
    if image.mode in _SIXTEEN_BIT_MODES or image.mode in ("I", "F"):
        grey = _scale_to_uint8(np.asarray(image), image.mode)
        return np.ascontiguousarray(np.repeat(grey[..., None], 3, axis=2))
    return np.asarray(image.convert("RGB")).copy()


def resize_rgb(array: np.ndarray, height: int, width: int, resample=Image.BILINEAR) -> np.ndarray:
    """Resize an RGB uint8 array with PIL (bilinear by default, as the upstream pose loading)."""
    if array.shape[:2] == (height, width):
        return array
    return np.asarray(Image.fromarray(array).resize((width, height), resample)).copy()


def check_pil_image(image, name: str) -> Image.Image:
    """`image` if it is a PIL image; otherwise a ValueError naming the argument and the fix."""
    if isinstance(image, Image.Image):
        return image
    hint = " (convert it with PIL.Image.fromarray(array))" if isinstance(image, np.ndarray) else ""
    raise ValueError(f"{name} must be a PIL image; got {type(image).__name__}{hint}")


def image_to_tensor(image: ImageLike, height: int, width: int) -> torch.Tensor:
    """Image -> [1, 3, H, W] float in [-1, 1], resized with PIL bicubic (aspect ratio not kept), as upstream."""
    rgb = resize_rgb(to_rgb_uint8(image), height, width, Image.BICUBIC)
    array = torch.from_numpy(rgb.astype(np.float32))
    return array.permute(2, 0, 1)[None] * (2 / 255) - 1


def video_to_tensor(frames, height: int, width: int) -> torch.Tensor:
    """Frames -> [1, 3, F, H, W] in [-1, 1]."""
    return torch.cat([image_to_tensor(f, height, width) for f in frames])[None].transpose(1, 2)


def tensor_to_frames(video: torch.Tensor) -> List[Image.Image]:
    """Decoded video [3, F, H, W] in [-1, 1] -> F PIL images. The uint8 conversion truncates, as upstream."""
    frames = ((video.float().permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return [Image.fromarray(frame) for frame in frames]


__all__ = ["ImageLike", "to_rgb_uint8", "resize_rgb", "check_pil_image", "image_to_tensor", "video_to_tensor",
           "tensor_to_frames"]
