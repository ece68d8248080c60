"""Reading the reference image and the driving frames (one video, a folder of videos, or a folder of images)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from ..data.image_file import read_image_bgr

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
DEFAULT_FPS = 30.0


def read_image(path: str | Path) -> np.ndarray:
    """BGR uint8 image, upright (the project's one reader, `data.image_file.read_image_rgb`); raises
    FileNotFoundError / ValueError with the path when it cannot be read."""
    return read_image_bgr(path)


def _natural_key(path: Path):
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


@dataclass
class FrameSource:
    """The driving frames: videos concatenated in order, or an image sequence."""

    files: list[Path]
    is_images: bool

    @classmethod
    def open(cls, path: str | Path) -> "FrameSource":
        """A video file, an image file, or a folder of either (sorted by name, numbers compared as numbers)."""
        path = Path(path)
        if path.is_file():
            return cls([path], path.suffix.lower() in IMAGE_EXTENSIONS)
        if not path.is_dir():
            raise FileNotFoundError(f"source video or folder not found: {path}")
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")), key=_natural_key)
        if not files:
            raise ValueError(f"source folder {path} is empty")
        images = [p.suffix.lower() in IMAGE_EXTENSIONS for p in files]
        if any(images) and not all(images):
            raise ValueError(f"source folder {path} mixes images and other files; use a folder of one kind")
        return cls(files, all(images))

    @property
    def fps(self) -> float:
        if self.is_images:
            return DEFAULT_FPS
        capture = cv2.VideoCapture(str(self.files[0]))
        fps = capture.get(cv2.CAP_PROP_FPS)
        capture.release()
        return float(fps) if fps and np.isfinite(fps) and fps > 0 else DEFAULT_FPS

    def approximate_length(self) -> int:
        """Frame count from the container headers (used only for the progress bar)."""
        if self.is_images:
            return len(self.files)
        total = 0
        for file in self.files:
            capture = cv2.VideoCapture(str(file))
            total += max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            capture.release()
        return total

    def __iter__(self) -> Iterator[np.ndarray]:
        """BGR frames in order. A file that yields no frame raises ValueError naming it."""
        if self.is_images:
            for file in self.files:
                yield read_image(file)
            return
        for file in self.files:
            capture = cv2.VideoCapture(str(file))
            count = 0
            try:
                while True:
                    ok, frame = capture.read()
                    if not ok:
                        break
                    count += 1
                    yield frame
            finally:
                capture.release()
            if count == 0:
                raise ValueError(f"no frame could be read from {file} (empty, truncated or not a video)")
