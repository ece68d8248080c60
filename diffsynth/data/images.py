"""Images in and out of the models: decoding any PIL mode to 8-bit RGB, resizing as upstream, tensors <-> frames.

All PIL use of the pipelines lives here, so pipelines and models only see tensors. Decoding any image to 8-bit
RGB (`to_rgb_uint8`) and reading files (`read_image_rgb`) live in `image_file.py`, which needs no torch.
"""
from __future__ import annotations

from typing import List

import numpy as np
import torch
from PIL import Image

from .image_file import ImageLike, to_rgb_uint8


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
    """Decoded video [3, F, H, W] in [-1, 1] -> F PIL images. The uint8 conversion truncates, as upstream. One
    frame at a time: the fp32 temporaries are a frame's, not the video's (2.4 GiB at 720p x 81)."""
    return [Image.fromarray(((frame.float().permute(1, 2, 0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).cpu()
                            .numpy()) for frame in video.unbind(1)]


__all__ = ["ImageLike", "to_rgb_uint8", "resize_rgb", "check_pil_image", "image_to_tensor", "video_to_tensor",
           "tensor_to_frames"]
