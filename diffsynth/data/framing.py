"""Framing: the size a generation gets from the reference photo, and fitting a picture into a frame of another
aspect ratio without distorting the person in it. One home for this arithmetic, used by `python -m diffsynth
animate`, `run_align_pose.py --canvas/--resize` and the web UI.

    height, width = fit_area(1920, 1080, RESOLUTIONS["480p"])         # landscape photo -> 464 x 832
    prepared = frame_image(photo, 832, 464, "pad")                     # exactly 832x464, nothing stretched

Modes (`RESIZE_MODES`):
- `pad`: scale the whole picture to fit inside the frame and fill the rest with the picture's border colour (the
  median of its outermost pixels), centred;
- `crop`: scale it to cover the frame and cut the overflow equally on both sides (centre crop);
- `stretch`: scale each axis independently to the frame (the upstream behaviour: a person whose photo is not of the
  frame's aspect comes out thinner or wider).

Everything maps points the same way as pixels (`Framing.map_normalised`), so a pose found in the original picture
lands on the same spot of the prepared one. No torch here: the pose tool, which imports this, also runs in the
torch-free MediaPipe environment.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Tuple

import numpy as np

RESOLUTIONS = {"480p": 832 * 480, "720p": 1280 * 720}   # pixel areas of Wan2.1's two I2V sizes
RESIZE_MODES = ("pad", "crop", "stretch")
SIZE_MULTIPLE = 16                 # VAE stride 8 x DiT patch 2
DEFAULT_CANVAS = (512, 768)        # (width, height) of the upstream pose images
_SIZE = re.compile(r"^\s*(\d+)\s*[xX*]\s*(\d+)\s*$")


def fit_area(image_width: int, image_height: int, area: int, multiple: int = SIZE_MULTIPLE) -> Tuple[int, int]:
    """(height, width) with the image's aspect ratio at about `area` pixels, each rounded down to `multiple`.

    The rule of Wan2.1's I2V (`diffsynth.pipelines.wan_video.size_for_reference` is this with multiple 16). Torch-free,
    so the pose tool's `--canvas auto` can use it in the MediaPipe environment."""
    if image_width <= 0 or image_height <= 0:
        raise ValueError(f"image size must be positive; got {image_width}x{image_height}")
    if area < multiple * multiple:
        raise ValueError(f"the pixel area must be at least {multiple}*{multiple}; got {area}")
    aspect = image_height / image_width
    height = int(math.sqrt(area * aspect) // multiple * multiple)
    width = int(math.sqrt(area / aspect) // multiple * multiple)
    return max(height, multiple), max(width, multiple)


def parse_area(resolution: str | int) -> int:
    """"480p" / "720p" (`RESOLUTIONS`) or a pixel area such as "4096" -> the area in pixels."""
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        area = resolution
    elif isinstance(resolution, str) and resolution.strip().lower() in RESOLUTIONS:
        return RESOLUTIONS[resolution.strip().lower()]
    elif isinstance(resolution, str) and resolution.strip().isdigit():
        area = int(resolution.strip())
    else:
        raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)} or a pixel area like 4096; "
                         f"got {resolution!r}")
    if area < SIZE_MULTIPLE * SIZE_MULTIPLE:
        raise ValueError(f"a resolution given as a pixel area must be at least {SIZE_MULTIPLE ** 2}; got {area}")
    return area


def parse_size(text: str) -> Tuple[int, int]:
    """"WxH" (e.g. "512x768") -> (width, height), both positive."""
    match = _SIZE.match(str(text))
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise ValueError(f"a size must look like WIDTHxHEIGHT, e.g. 512x768; got {text!r}")
    return int(match.group(1)), int(match.group(2))


def check_mode(mode: str) -> str:
    """`mode` if it is one of `RESIZE_MODES`; otherwise a ValueError naming the choices."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {', '.join(RESIZE_MODES)}; got {mode!r}")
    return mode


@dataclass(frozen=True)
class Framing:
    """How a `source` (width, height) picture is placed in a `target` (width, height) frame: target pixel =
    source pixel * scale + offset (pixel edges, continuous coordinates)."""

    mode: str
    source: Tuple[int, int]
    target: Tuple[int, int]
    scale: Tuple[float, float]
    offset: Tuple[float, float]

    def map_normalised(self, points: np.ndarray) -> np.ndarray:
        """Points [..., 2] normalised to the source (x / width, y / height) -> normalised to the target."""
        points = np.asarray(points, np.float64)
        source, target = np.array(self.source, np.float64), np.array(self.target, np.float64)
        return (points * source * np.array(self.scale) + np.array(self.offset)) / target

    def to_dict(self) -> dict:
        return {"mode": self.mode, "source": list(self.source), "target": list(self.target),
                "scale": [float(v) for v in self.scale], "offset": [float(v) for v in self.offset]}


def plan_framing(source_width: int, source_height: int, target_width: int, target_height: int,
                 mode: str) -> Framing:
    """The placement of a source picture in a target frame for `mode` (see the module docstring)."""
    check_mode(mode)
    sw, sh, tw, th = source_width, source_height, target_width, target_height
    if min(sw, sh, tw, th) <= 0:
        raise ValueError(f"sizes must be positive; got source {sw}x{sh}, target {tw}x{th}")
    if mode == "stretch":
        return Framing(mode, (sw, sh), (tw, th), (tw / sw, th / sh), (0.0, 0.0))
    # The scaled size is rounded to whole pixels (as the resized picture will be); the scale follows it exactly.
    s = (min if mode == "pad" else max)(tw / sw, th / sh)
    width, height = max(1, round(sw * s)), max(1, round(sh * s))
    return Framing(mode, (sw, sh), (tw, th), (width / sw, height / sh),
                   (float((tw - width) // 2), float((th - height) // 2)))


def framed_size(source_width: int, source_height: int, aspect_width: int, aspect_height: int,
                mode: str) -> Tuple[int, int]:
    """(width, height) of a frame with the aspect of `aspect_width:aspect_height` at the source's own scale: the
    smallest frame holding the whole source (`pad`), the largest inside it (`crop`), or the source size
    (`stretch`). Preparing a reference at this size keeps all of its pixels' resolution."""
    check_mode(mode)
    if mode == "stretch":
        return source_width, source_height
    aspect = aspect_width / aspect_height
    wider = source_width / source_height > aspect
    if (mode == "pad") == wider:   # keep the width, change the height
        return source_width, max(1, round(source_width / aspect))
    return max(1, round(source_height * aspect)), source_height


def border_colour(image: np.ndarray) -> np.ndarray:
    """The per-channel median of the image's outermost pixels (the colour padding extends)."""
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    return np.median(border.reshape(-1, image.shape[2]), axis=0).round().astype(image.dtype)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2  # noqa: PLC0415 - a core dependency, imported where used

    if image.shape[1] == width and image.shape[0] == height:
        return image
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def frame_image(image: np.ndarray, target_width: int, target_height: int, mode: str) -> np.ndarray:
    """An H x W x C uint8 picture placed in a `target_width` x `target_height` frame (see `plan_framing`). Works
    for RGB and BGR alike (padding takes the colour from the picture itself)."""
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError("frame_image expects an H x W x C uint8 array")
    framing = plan_framing(image.shape[1], image.shape[0], target_width, target_height, mode)
    if mode == "stretch":
        return np.ascontiguousarray(_resize(image, target_width, target_height))
    width = round(image.shape[1] * framing.scale[0])
    height = round(image.shape[0] * framing.scale[1])
    scaled = _resize(image, width, height)
    x, y = int(framing.offset[0]), int(framing.offset[1])
    if mode == "crop":
        return np.ascontiguousarray(scaled[-y:-y + target_height, -x:-x + target_width])
    out = np.empty((target_height, target_width, image.shape[2]), np.uint8)
    out[:] = border_colour(image)
    out[y:y + height, x:x + width] = scaled
    return out


def prepare_reference(image: np.ndarray, aspect_width: int, aspect_height: int, mode: str) -> np.ndarray:
    """The reference picture brought to the aspect of `aspect_width:aspect_height` at its own scale (`framed_size`)
    without distortion (`pad`/`crop`), or unchanged (`stretch`: the consumer stretches it, as upstream)."""
    width, height = framed_size(image.shape[1], image.shape[0], aspect_width, aspect_height, mode)
    if mode == "stretch":
        return image
    return frame_image(image, width, height, mode)


def resolve_canvas(canvas, image_width: int, image_height: int) -> Tuple[int, int]:
    """The pose canvas (width, height): a (width, height) pair, "WxH", None (`DEFAULT_CANVAS`, the upstream
    512x768), or "auto": the image's aspect at the default canvas's area, in multiples of 16."""
    if canvas is None:
        return DEFAULT_CANVAS
    if isinstance(canvas, str) and canvas.strip().lower() == "auto":
        height, width = fit_area(image_width, image_height, DEFAULT_CANVAS[0] * DEFAULT_CANVAS[1])
        return width, height
    if isinstance(canvas, str):
        return parse_size(canvas)
    width, height = (int(v) for v in canvas)
    if width <= 0 or height <= 0:
        raise ValueError(f"canvas size must be positive; got {width}x{height}")
    return width, height


__all__ = ["RESOLUTIONS", "RESIZE_MODES", "SIZE_MULTIPLE", "DEFAULT_CANVAS", "Framing", "fit_area", "parse_area",
           "parse_size", "check_mode", "plan_framing", "framed_size", "border_colour", "frame_image",
           "prepare_reference", "resolve_canvas"]
