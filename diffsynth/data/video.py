"""Reading and writing videos and image sequences (imageio + its bundled ffmpeg; no torchvision)."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
import itertools
from typing import Iterable, List, Optional, Sequence, Union

import imageio.v2 as imageio
import numpy as np
from PIL import Image
from tqdm import tqdm

from .safe_write import atomic_output, check_output_file

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
Frame = Union[Image.Image, np.ndarray]
_NO_FRAME = object()


def _to_uint8_rgb(frame: Frame) -> np.ndarray:
    array = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame)
    if array.dtype != np.uint8:
        raise ValueError(f"video frames must be uint8 RGB arrays or PIL images; got dtype {array.dtype}")
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"video frames must be H x W x 3; got shape {array.shape}")
    return array


def save_video(frames: Union[Sequence[Frame], Iterable[Frame]], save_path: Union[str, os.PathLike], fps: float = 15,
               quality: int = 9, ffmpeg_params: Optional[List[str]] = None, progress: bool = True, *,
               overwrite: bool = False) -> str:
    """Write frames (PIL images or HxWx3 uint8 arrays) to an H.264 mp4 with the ffmpeg bundled by imageio-ffmpeg.

    `frames` may be a list or any iterable, e.g. a generator that decodes the video chunk by chunk
    (`pipe.decode_iter`, `pipe(..., output_type="iterator")`): each frame is encoded as soon as it arrives, so the
    whole video is never held in memory. The path is checked before the first frame is asked for.

    Frame sizes must be even (yuv420p); odd sizes are padded by one black row/column rather than rescaled.
    An existing file is refused (FileExistsError) unless `overwrite=True`; a folder, or a path whose parent is a
    file or not writable, is refused before encoding. The video is encoded into a hidden temporary file next to
    `save_path` and renamed at the end, so a failure (also one raised by a frame generator) never leaves a partial
    file and a symlink at `save_path` is replaced, never written through. Returns the path, with `~` expanded.
    """
    sized = hasattr(frames, "__len__")
    if sized and len(frames) == 0:
        raise ValueError("save_video got no frames")
    save_path = check_output_file(save_path, overwrite=overwrite, flag="overwrite=True")
    source = frames
    try:
        if not sized:                  # peek, so an empty stream is refused before a file is created
            frames = iter(frames)
            first = next(frames, _NO_FRAME)
            if first is _NO_FRAME:
                raise ValueError("save_video got no frames")
            frames = itertools.chain([first], frames)
        save_path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(save_path, replace=overwrite) as partial:
            writer = imageio.get_writer(partial, fps=fps, quality=quality, ffmpeg_params=ffmpeg_params,
                                        macro_block_size=1, format="FFMPEG", codec="libx264",
                                        pixelformat="yuv420p")
            try:
                for frame in tqdm(frames, desc="Saving video", disable=not progress,
                                  total=len(source) if sized else None):
                    array = _to_uint8_rgb(frame)
                    pad_h, pad_w = array.shape[0] % 2, array.shape[1] % 2
                    if pad_h or pad_w:
                        array = np.pad(array, ((0, pad_h), (0, pad_w), (0, 0)))
                    writer.append_data(array)
            except BaseException:
                with contextlib.suppress(Exception):  # keep the original error; the temporary file is deleted
                    writer.close()
                raise
            writer.close()
    finally:
        if not sized and hasattr(source, "close"):   # stop a generator left part-way (runs its clean-up)
            source.close()
    return str(save_path)


def save_frames(frames: Sequence[Frame], folder: Union[str, os.PathLike], suffix: str = ".png", *,
                overwrite: bool = False) -> List[str]:
    """Write frames as zero-padded numbered images, wide enough for any count (00000.png, 00001.png, ...).

    Each image is written atomically (never through a symlink); existing files of those names are refused
    (FileExistsError, before anything is written) unless `overwrite=True`.
    """
    folder = Path(folder).expanduser()
    width = max(5, len(str(len(frames) - 1)))
    paths = [folder / f"{i:0{width}d}{suffix}" for i in range(len(frames))]
    existing = [p for p in paths if os.path.lexists(p)]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} of the {len(paths)} names); pass "
                              f"overwrite=True to replace them")
    folder.mkdir(parents=True, exist_ok=True)
    for path, frame in zip(paths, frames):
        with atomic_output(path, replace=overwrite) as temp:  # the temporary name keeps the suffix for PIL
            Image.fromarray(_to_uint8_rgb(frame)).save(temp)
    return [str(p) for p in paths]


def list_images(folder: Union[str, os.PathLike]) -> List[Path]:
    """Image files of a folder in natural numeric order (so 10.jpg follows 9.jpg)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {folder} does not exist")
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
    key = lambda p: (int(p.stem), "") if p.stem.isdigit() else (float("inf"), p.stem)  # noqa: E731
    return sorted(files, key=key)


_FFMPEG_PREFIX = re.compile(r"^\[[^\]]*@ 0x[0-9a-f]+\]\s*")


def _short_reason(error: BaseException) -> str:
    """One short line from a reader's error: for ffmpeg's (the banner, the build configuration and every library
    version, ~2,600 characters) the messages its demuxers printed, else the error's own first line."""
    text = str(error)
    head, _, stderr = text.partition("=== stderr ===")
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    messages = [_FFMPEG_PREFIX.sub("", line) for line in lines if _FFMPEG_PREFIX.match(line)]
    reason = "; ".join(dict.fromkeys(messages[:2] or lines[-1:])) or " ".join(head.split())
    reason = reason or type(error).__name__
    return reason if len(reason) <= 200 else reason[:199] + "…"


class VideoData:
    """Frames of a video file or an image folder as PIL images, optionally resized to (height, width).

    `VideoData(video_file="a.mp4")`, `VideoData(image_folder="poses/", height=832, width=480)`; index it,
    take `len()`, or `raw_data()` for the whole list. Video files are decoded lazily, frame by frame.
    """

    def __init__(self, video_file: Optional[str] = None, image_folder: Optional[str] = None,
                 height: Optional[int] = None, width: Optional[int] = None):
        if (video_file is None) == (image_folder is None):
            raise ValueError("pass exactly one of video_file= or image_folder=")
        self.height, self.width = height, width
        self._video_file = video_file
        if video_file is not None:
            if not Path(video_file).is_file():
                raise FileNotFoundError(f"video file {video_file} does not exist")
            try:
                self._reader = imageio.get_reader(video_file)
                self._length = self._reader.count_frames()
            except Exception as error:  # noqa: BLE001 - imageio/ffmpeg raise OSError, RuntimeError, IndexError...
                raise ValueError(f"cannot read video {video_file}: {_short_reason(error)} (damaged, or not a "
                                 f"video)") from None
            self._images = None
        else:
            self._images = list_images(image_folder)
            self._length = len(self._images)
            self._reader = None
        if self._length == 0:
            raise ValueError(f"no frames found in {video_file or image_folder}")

    def shape(self):
        return (self.height, self.width) if self.height is not None else self[0].size[::-1]

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Image.Image:
        if not -self._length <= index < self._length:
            raise IndexError(f"frame {index} out of range for {self._length} frames")
        index %= self._length
        source = self._video_file if self._reader is not None else self._images[index]
        try:
            if self._reader is not None:
                image = Image.fromarray(self._reader.get_data(index)).convert("RGB")
            else:
                with Image.open(self._images[index]) as file:
                    image = file.convert("RGB")
        except Exception as error:  # noqa: BLE001 - decoders raise many kinds; one line naming the file instead
            raise ValueError(f"cannot read frame {index} of {source}: {_short_reason(error)} (damaged, or not "
                             f"{'a video' if self._reader is not None else 'an image'})") from None
        if self.height is not None and self.width is not None and image.size != (self.width, self.height):
            image = image.resize((self.width, self.height), Image.BICUBIC)
        return image

    def raw_data(self) -> List[Image.Image]:
        """All frames as a list of PIL images."""
        return [self[i] for i in range(len(self))]

    def close(self):
        if self._reader is not None:
            self._reader.close()


__all__ = ["save_video", "save_frames", "list_images", "VideoData"]
