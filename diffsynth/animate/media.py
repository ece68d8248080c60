"""Writing an animation's files: the clip (with the driving video's audio when it has some) and the
[reference | pose | generated] comparison, both from one pass over the generated frames, both atomic.

Audio is copied with the ffmpeg binary that imageio-ffmpeg bundles, run as an argument list (never a shell).
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Iterable

import imageio.v2 as imageio
import numpy as np

from ..data.images import resize_rgb, to_rgb_uint8
from ..data.pose_folder import comparison_panels
from ..data.safe_write import atomic_output, check_output_file
from ..data.video import save_video

_AUDIO_STREAM = re.compile(r"Stream #\d+:\d+.*?: Audio:")


def ffmpeg_exe() -> str:
    """The ffmpeg binary bundled with imageio-ffmpeg."""
    import imageio_ffmpeg  # noqa: PLC0415

    return imageio_ffmpeg.get_ffmpeg_exe()


def has_audio(path) -> bool:
    """Whether the media file has an audio stream (from ffmpeg's stream listing)."""
    result = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                            errors="replace", check=False)
    return bool(_AUDIO_STREAM.search(result.stderr))


def mux_audio(video, audio_source, out, *, overwrite: bool = False) -> Path:
    """Write `out`: the video stream of `video` (copied, not re-encoded) with the first audio stream of
    `audio_source` (AAC), cut to the video's length. Atomic; an existing `out` is replaced only if `overwrite`."""
    out = Path(out)
    with atomic_output(out, replace=overwrite) as temp:
        command = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-i", str(video), "-i",
                   str(audio_source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy", "-c:a", "aac", "-b:a",
                   "192k", "-shortest", "-movflags", "+faststart", str(temp)]
        result = subprocess.run(command, capture_output=True, text=True, errors="replace", check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"ffmpeg could not copy the audio of {audio_source} into {out}: {last}")
    return out


class _VideoWriter:
    """An H.264 writer with save_video's settings, for a second stream written in the same pass."""

    def __init__(self, path: Path, fps: float):
        self.writer = imageio.get_writer(str(path), fps=fps, quality=9, macro_block_size=1, format="FFMPEG",
                                         codec="libx264", pixelformat="yuv420p")

    def append(self, frame: np.ndarray) -> None:
        pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
        if pad_h or pad_w:
            frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)))
        self.writer.append_data(frame)

    def close(self) -> None:
        self.writer.close()


def write_outputs(frames: Iterable, reference, dwpose_data, clip_path, comparison_path, fps: float,
                  audio_source=None, *, overwrite: bool = False, on_frame=None) -> bool:
    """Write the generated `frames` (PIL images or arrays, a list or a stream) to `clip_path`, and
    [reference | pose | generated] panels to `comparison_path`, in one pass. When `audio_source` has an audio
    track it is copied into the clip. Both paths are checked first; each file appears complete or not at all.
    `on_frame(i)` is called after each frame. Returns whether audio was copied."""
    clip_path = check_output_file(clip_path, overwrite=overwrite, flag="--overwrite")
    comparison_path = check_output_file(comparison_path, overwrite=overwrite, flag="--overwrite")
    audio = audio_source is not None and has_audio(audio_source)
    clip_path.parent.mkdir(parents=True, exist_ok=True)
    comparison_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=clip_path.parent, prefix=f".{clip_path.stem}.") as work:
        video_only = Path(work) / "video.mp4"
        height, width = dwpose_data.shape[2:]
        reference = resize_rgb(to_rgb_uint8(reference), height, width)   # once, not per panel

        def tee():
            for i, frame in enumerate(frames):
                rgb = to_rgb_uint8(frame)
                if i >= dwpose_data.shape[1]:
                    raise ValueError(f"more generated frames than the {dwpose_data.shape[1]} pose frames")
                writer.append(comparison_panels(reference, dwpose_data[:, i:i + 1], [rgb])[0])
                if on_frame is not None:
                    on_frame(i + 1)
                yield rgb

        with atomic_output(comparison_path, replace=overwrite) as comparison_temp:
            writer = _VideoWriter(comparison_temp, fps)
            try:
                save_video(tee(), video_only, fps=fps, progress=False)
            except BaseException:
                with contextlib.suppress(Exception):   # keep the original error; the temporary file is deleted
                    writer.close()
                raise
            writer.close()
        if audio:
            mux_audio(video_only, audio_source, clip_path, overwrite=overwrite)
        else:
            with atomic_output(clip_path, replace=overwrite) as clip_temp:
                os.replace(video_only, clip_temp)
    return audio


def check_photo(path, max_pixels: int) -> tuple:
    """(width, height) of a photo from its header, before anything decodes it: a file that is not a readable image
    and a photo over `max_pixels` are refused (ValueError naming the file and the fix)."""
    import warnings  # noqa: PLC0415

    from PIL import Image  # noqa: PLC0415

    fix = "downscale it (the generation uses about 1 megapixel at 720p)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:   # PIL's own limit, 2 x 89.5 MP: over ours unless it was raised
        found = re.search(r"\((\d+) pixels\)", str(error))
        size = f" ({int(found.group(1)) / 1e6:.0f} megapixels)" if found else ""
        raise ValueError(f"reference photo {path} is too large{size}: over the {max_pixels / 1e6:g}-megapixel "
                         f"limit; {fix}") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ValueError(f"cannot read reference photo {path}: {' '.join(str(error).split())}; give a JPEG or PNG "
                         f"photo") from None
    if width * height > max_pixels:
        raise ValueError(f"reference photo {path} is {width}x{height} ({width * height / 1e6:.0f} megapixels), over "
                         f"the {max_pixels / 1e6:g}-megapixel limit (AnimateSettings.max_photo_pixels); {fix}")
    return width, height


EXACT_COUNT_BELOW = 256    # header frame counts below this are checked by reading the frames (cheap, and exact)


def driving_frame_count(path) -> int:
    """The number of driving frames of a video file, an image, or a folder of videos / images (as the pose
    extraction reads them, with OpenCV). A video that cannot be opened or holds no frame raises ValueError naming
    it. Short videos are counted frame by frame, long ones from the header."""
    import cv2  # noqa: PLC0415

    from ..pose.sources import FrameSource  # noqa: PLC0415

    source = FrameSource.open(path)
    if source.is_images:
        return len(source.files)
    total = 0
    for file in source.files:
        capture = cv2.VideoCapture(str(file))
        try:
            if not capture.isOpened():
                raise ValueError(f"cannot read driving video {file}: not a video, or damaged")
            count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
            if count < EXACT_COUNT_BELOW:
                count = 0
                while capture.grab():
                    count += 1
        finally:
            capture.release()
        if count == 0:
            raise ValueError(f"cannot read driving video {file}: no frame could be decoded (damaged, or not a video)")
        total += count
    return total


__all__ = ["write_outputs", "has_audio", "mux_audio", "ffmpeg_exe", "check_photo", "driving_frame_count"]
