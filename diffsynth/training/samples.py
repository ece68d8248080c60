"""Training samples from a folder of videos: processed frames, the pose drawn on each, and a meta.json (spec 9.1).

One folder per video, plain files instead of upstream's pickles (which run code when loaded):

    <out_dir>/<video_stem>/
        frames/000000.jpg …   the cropped/resized frame, JPEG quality 95 (PIL reads correct RGB)
        poses/000000.jpg …    the pose drawn at the frame's own size, body + feet + hands, no face, written with
                              OpenCV like run_align_pose.py (so on disk the colours follow its BGR convention)
        meta.json             frame count, size, fps, source, backend, frames with no person; written last
        .prepare_training_data.json   the run manifest: every file above, listed before it is written

Every file is written atomically (no half-written JPEG, nothing written through a symlink). `--overwrite` deletes
exactly the files a sample folder's manifest lists; any other file is kept, and one in the way of a file this tool
writes (e.g. a user's `frames/000001.jpg`) fails that video with a message naming it rather than being replaced.

Frame names are zero-padded to max(6, digits needed). `read_training_sample` reads a folder back (sample_format.py);
`read_legacy_pickle_sample` reads upstream's `frame_data.pkl` + `dw_pose_with_foot_wo_face.pkl` safely.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from ..pose.backends import create_backend
from ..pose.draw import draw_pose, write_image
from ..pose.extract import fill_missing
from ..pose.onnx_runtime import DEFAULT_DET_MODEL, DEFAULT_POSE_MODEL
from ..pose.sources import FrameSource
from ..data.safe_write import Manifest, atomic_write_text, check_output_folder, make_folder
# The sample layout, and reading samples back (re-exported: callers import them from here).
from .sample_format import (FORMAT, FRAMES_DIR, META_FILE, POSES_DIR, UnsafePickleError, load_legacy_pickle,
                            read_legacy_pickle_sample, read_training_sample)

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm")
DEFAULT_OUT_SUBDIR = "training_video_pose"
JPEG_QUALITY = 95
HALVE_AT_WIDTH = 2048
MANIFEST_FILE = ".prepare_training_data.json"  # one per sample folder: samples are skipped/redone one by one
_RESERVE_CHUNK = 1024  # frame names listed in the manifest ahead of writing, per manifest save


# ---------------------------------------------------------------------------------------------------------------
# Frame processing


def crop_and_resize(frame: np.ndarray) -> np.ndarray:
    """Landscape frames (W > H) are centre-cropped to H x H; then a width >= 2048 halves both sides (linear).

    Upstream cut `(W-H)//2` columns from each side, which leaves H+1 columns when W-H is odd and an empty frame
    when W-H is 1; this crop is exactly H wide for any W > H.
    """
    height, width = frame.shape[:2]
    if width > height:
        left = (width - height) // 2
        frame = frame[:, left:left + height]
        width = height
    if width >= HALVE_AT_WIDTH:
        frame = cv2.resize(frame, (width // 2, height // 2), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(frame)


def processed_size(width: int, height: int) -> tuple[int, int]:
    """(width, height) of a width x height frame after `crop_and_resize`."""
    if width > height:
        width = height
    if width >= HALVE_AT_WIDTH:
        width, height = width // 2, height // 2
    return width, height


def frame_file_name(index: int, count: int) -> str:
    """`000000.jpg` as upstream, widened so that names sort correctly for any frame count."""
    return f"{index:0{max(6, len(str(max(count - 1, 0))))}d}.jpg"


def list_videos(video_dir: str | Path) -> list[Path]:
    """Video files (mp4/mov/avi/mkv/webm, any case) directly in `video_dir`, sorted by name."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video folder not found: {video_dir}")
    return sorted(p for p in video_dir.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in VIDEO_EXTENSIONS)


def sample_names(videos: Sequence[Path]) -> list[str]:
    """The sample folder name of each video: its stem, or `<stem>_<ext>` when two videos share a stem."""
    stems = [v.stem for v in videos]
    return [f"{v.stem}_{v.suffix[1:].lower()}" if stems.count(v.stem) > 1 else v.stem for v in videos]


# ---------------------------------------------------------------------------------------------------------------
# Sample folders


def remove_sample_files(folder: Path) -> None:
    """Delete exactly the files the sample folder's manifest lists (what this tool wrote there), then `frames/`,
    `poses/` and the folder itself if that left them empty. Anything else is kept; symlinks are not followed."""
    if folder.is_symlink() or not folder.is_dir():
        return
    Manifest.load(folder, MANIFEST_FILE).remove_listed()
    for sub in (folder / FRAMES_DIR, folder / POSES_DIR):  # created before any frame was listed
        if sub.is_dir() and not sub.is_symlink() and not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def _discard(folder: Path) -> None:
    """Remove what a failed video wrote; with a damaged manifest nothing is removed (logged)."""
    try:
        remove_sample_files(folder)
    except (OSError, ValueError) as error:
        logger.warning("could not clean up %s: %s", folder, error)


class _TooLong(Exception):
    pass


@dataclass
class PrepareSummary:
    """What a `prepare_training_data` run did; `skipped` and `failed` map a video name to the reason."""

    out_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    frames: int = 0
    frames_without_person: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        total = len(self.written) + len(self.skipped) + len(self.failed)
        lines = [f"{total} videos: {len(self.written)} written ({self.frames} frames, {self.frames_without_person} "
                 f"with no person), {len(self.skipped)} skipped, {len(self.failed)} failed in {self.seconds:.1f} s "
                 f"-> {self.out_dir}"]
        lines += [f"  skipped {name}: {reason}" for name, reason in self.skipped.items()]
        lines += [f"  failed {name}: {reason}" for name, reason in self.failed.items()]
        return "\n".join(lines)


def prepare_training_data(
    video_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    backend: str = "dwpose",
    det_model: str | Path = DEFAULT_DET_MODEL,
    pose_model: str | Path = DEFAULT_POSE_MODEL,
    max_frames: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareSummary:
    """Turn every video of `video_dir` into a sample folder (see the module docstring).

    Args:
        video_dir: folder of videos (mp4/mov/avi/mkv/webm), processed in name order.
        out_dir: where the sample folders go; default `<video_dir>/training_video_pose` (as upstream). A folder
            inside `video_dir` is fine; `video_dir` itself or a folder containing it, `/`, the home or current
            folder, and a file are refused (see `check_output_folder`).
        backend: `dwpose` (ONNX, `det_model` and `pose_model`) or `mediapipe` (offline extra).
        max_frames: videos with more frames are skipped with a logged message; None (default) = no limit.
            Upstream silently skipped videos of 2000 frames or more.
        overwrite: redo videos whose sample folder is not empty (deleting first exactly the files its manifest
            lists); otherwise such videos are skipped.
    A failure on one video (unreadable, no person in any frame, ...) is logged and the others go on.
    """
    start = time.perf_counter()
    videos = list_videos(video_dir)
    out_dir = Path(out_dir) if out_dir is not None else Path(video_dir) / DEFAULT_OUT_SUBDIR
    out_dir = check_output_folder(out_dir, inputs=(video_dir,))
    summary = PrepareSummary(out_dir)
    if not videos:
        logger.warning("no videos (%s) in %s", "/".join(VIDEO_EXTENSIONS), video_dir)
        return summary
    pose_backend = create_backend(backend, det_model, pose_model)

    for video, name in zip(tqdm(videos, unit="video", desc="videos", disable=not progress), sample_names(videos)):
        folder = out_dir / name
        problem = ("is a symbolic link; not followed" if folder.is_symlink() else
                   "exists and is not a folder" if folder.exists() and not folder.is_dir() else None)
        if problem:
            summary.failed[video.name] = f"{folder} {problem}"
            logger.error("%s: %s", video.name, summary.failed[video.name])
            continue
        redo = folder.is_dir() and any(folder.iterdir())
        if redo and not overwrite:
            state = "done" if (folder / META_FILE).is_file() else "incomplete (no meta.json)"
            summary.skipped[video.name] = f"{folder} exists, {state}; pass --overwrite to redo it"
            logger.info("skipping %s: %s", video.name, summary.skipped[video.name])
            continue
        try:
            if redo:
                remove_sample_files(folder)
            meta = _prepare_video(video, folder, pose_backend, max_frames, progress)
        except _TooLong as reason:
            _discard(folder)
            summary.skipped[video.name] = str(reason)
            logger.warning("skipping %s: %s", video.name, reason)
            continue
        except Exception as error:  # noqa: BLE001 - one bad video must not stop the others
            _discard(folder)
            summary.failed[video.name] = f"{type(error).__name__}: {error}"
            logger.error("%s failed: %s", video.name, summary.failed[video.name])
            continue
        logger.info("%s -> %s (%d frames, %d with no person)", video.name, folder, meta["num_frames"],
                    len(meta["frames_without_person"]))
        summary.written.append(name)
        summary.frames += meta["num_frames"]
        summary.frames_without_person += len(meta["frames_without_person"])
    summary.seconds = time.perf_counter() - start
    return summary


class _FrameNames:
    """Lists frame and pose names in the sample's manifest before they are written, `_RESERVE_CHUNK` at a time
    (so a crash leaves everything written listed, without rewriting the manifest for every frame)."""

    def __init__(self, manifest: Manifest, header_count: int):
        self.manifest, self.header_count, self.reserved = manifest, header_count, 0

    def name(self, index: int) -> str:
        """The file name of frame `index` while reading (widths follow the header's frame count)."""
        if index >= self.reserved:
            end = index + _RESERVE_CHUNK
            if index < self.header_count:
                end = min(end, self.header_count)  # do not claim names the video will not need
            self.manifest.reserve(_sample_files(frame_file_name(i, self.header_count) for i in range(index, end)))
            self.reserved = end
        return frame_file_name(index, self.header_count)


def _sample_files(names) -> list[str]:
    return [f"{sub}/{name}" for name in names for sub in (FRAMES_DIR, POSES_DIR)]


def _prepare_video(video: Path, folder: Path, pose_backend, max_frames: int | None, progress: bool) -> dict:
    """One video: frames are written as they are read; poses are drawn at the end, after holding the previous
    pose over frames with no person (the next one at the start), as run_align_pose does. Files are listed in the
    folder's manifest before they are written and written atomically, never over a file the manifest does not list."""
    source = FrameSource([video], is_images=False)
    header_count = source.approximate_length()
    if max_frames is not None and header_count > max_frames:
        raise _TooLong(f"{header_count} frames > --max_frames {max_frames}")
    make_folder(folder)
    frames_dir, poses_dir = make_folder(folder / FRAMES_DIR), make_folder(folder / POSES_DIR)
    manifest = Manifest.load(folder, MANIFEST_FILE)
    manifest.reserve([META_FILE])
    reading_names = _FrameNames(manifest, header_count)

    # 1. Frames, and the pose of each (one tracked person per video).
    results, source_size, size = [], None, None
    tracker = pose_backend.new_sequence()
    try:
        for index, frame in enumerate(tqdm(source, total=header_count or None, unit="frame", desc=video.name,
                                           leave=False, disable=not progress)):
            if max_frames is not None and index >= max_frames:
                raise _TooLong(f"more than --max_frames {max_frames} frames")
            frame_size = frame.shape[1::-1]
            if source_size is None:
                source_size = frame_size
            elif frame_size != source_size:
                raise ValueError(f"frame {index} is {frame_size[0]}x{frame_size[1]}, frame 0 was "
                                 f"{source_size[0]}x{source_size[1]}")
            frame = crop_and_resize(frame)
            size = frame.shape[1::-1]
            write_image(frames_dir / reading_names.name(index), frame, JPEG_QUALITY, replace=False)
            results.append(tracker(frame))
    finally:
        tracker.close()
    count = len(results)
    names = [frame_file_name(i, count) for i in range(count)]
    manifest.reserve(_sample_files(names))
    if count != header_count:  # the header guessed the count wrong: the name width may differ
        for i, new_name in enumerate(names):
            old_name = frame_file_name(i, header_count)
            if old_name != new_name:
                os.replace(frames_dir / old_name, frames_dir / new_name)  # both names listed: ours

    # 2. Poses, drawn at the frame's own size without alignment.
    poses, pose_source = fill_missing(results)
    for name, pose in zip(names, poses):
        write_image(poses_dir / name, draw_pose(pose, *size), JPEG_QUALITY, replace=False)

    # 3. meta.json last: its presence marks a complete sample.
    missing = [i for i, r in enumerate(results) if r.pose is None]
    meta = {
        "format": FORMAT,
        "source": str(video),
        "source_size": list(source_size),
        "width": size[0],
        "height": size[1],
        "fps": source.fps,
        "num_frames": count,
        "files": names,
        "backend": pose_backend.name,
        "pose_drawing": "body+feet+hands, no face, at frame size, no alignment; written with OpenCV (BGR)",
        "frames_without_person": missing,
        "pose_held_from": {str(i): pose_source[i] for i in missing},
    }
    atomic_write_text(folder / META_FILE, json.dumps(meta, indent=1) + "\n", replace=False)
    manifest.finish([*_sample_files(names), META_FILE])  # exactly what is on disk now
    return meta


__all__ = [
    "PrepareSummary", "UnsafePickleError", "crop_and_resize", "frame_file_name", "list_videos", "load_legacy_pickle",
    "prepare_training_data", "processed_size", "read_legacy_pickle_sample", "read_training_sample",
    "remove_sample_files",
]
