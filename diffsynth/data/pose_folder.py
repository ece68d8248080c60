"""The pose folder written by `run_align_pose.py`, and everything that reads it: one home for names and layout.

    <pose_dir>/
        pose.jpg              the reference pose (drawn from the reference image, unaligned)
        0000.jpg, 0001.jpg …  one aligned pose per driving frame, zero-padded to >= 4 digits
        poses.json            keypoints (see diffsynth/pose/extract.py)
        reference.png         only with run_align_pose.py --resize pad|crop: the reference image prepared to the
                              canvas's aspect, on which the poses were measured (give it to the pipeline)

Pose images are written with OpenCV (BGR in memory, so the file holds the colours a viewer shows) and read here with
PIL as RGB: `[3, F, H, W]` pose tensors are RGB, channel 0 = red, the colours the released model was trained on.
Frames are ordered by their number (`10.jpg` after `9.jpg`), never as text.

`select_frames` is the one frame-window rule used by inference and by training (`diffsynth/training/dataset.py`).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Sequence, Union

import numpy as np

if TYPE_CHECKING:   # torch and PIL are imported where tensors are made: the pose tool runs without them
    import torch

    from .images import ImageLike

REFERENCE_POSE_FILE = "pose.jpg"
REFERENCE_IMAGE_FILE = "reference.png"   # the prepared reference (run_align_pose.py --resize pad|crop)
POSES_FILE = "poses.json"
POSES_FORMAT = "diffsynth.pose/1"         # the "format" entry of poses.json
MANIFEST_FILE = ".run_align_pose.json"    # what the tool wrote there: the only files --overwrite may delete
FRAME_SUFFIX = ".jpg"
_FRAME_FILE = re.compile(r"^(\d+)\.jpg$")
PathLike = Union[str, os.PathLike]


def frame_file_name(index: int, count: int) -> str:
    """`0000.jpg` as upstream, widened so that names sort correctly for any frame count."""
    return f"{index:0{max(4, len(str(max(count - 1, 0))))}d}{FRAME_SUFFIX}"


def is_frame_file(name: str) -> bool:
    """A digit-named .jpg: the name pattern of pose frames (the reference `pose.jpg` is not one)."""
    return _FRAME_FILE.match(name) is not None


def _manifest(pose_dir: Path):
    """The folder's run manifest, or None when it has none (a hand-made or upstream pose folder)."""
    from .safe_write import Manifest  # noqa: PLC0415

    manifest = Manifest.load(pose_dir, MANIFEST_FILE)
    return manifest if manifest.files else None


def _refuse_changed(manifest, names: Sequence[str]) -> None:
    """ValueError naming the first of `names` that is not the file run_align_pose wrote (see `Manifest.changed`);
    a manifest without hashes (written before they were recorded) vouches for nothing and checks nothing."""
    if not manifest.sha256:
        return
    changed = manifest.changed(names)
    if changed:
        path = manifest.folder / changed[0]
        what = "is missing" if not os.path.lexists(path) else "differs from the file run_align_pose wrote"
        more = f" (and {len(changed) - 1} more)" if len(changed) > 1 else ""
        raise ValueError(f"pose image {path} {what}{more} (SHA-256 recorded in {MANIFEST_FILE}): make the pose "
                         f"folder again (run_align_pose.py --overwrite, or delete it and rerun animate), or redraw "
                         f"it from an edited {POSES_FILE} with redraw_from_json")


def list_pose_frames(pose_dir: PathLike) -> List[Path]:
    """The pose frames of a folder in numeric order (`9.jpg` < `10.jpg` < `0011.jpg`'s 11).

    A folder with a run manifest (`.run_align_pose.json`) has exactly the frames it lists: another digit-named
    .jpg there (a stray `00005.jpg`, a user's `2023.jpg`) is not a pose frame, and a listed frame that is missing
    or no longer the file run_align_pose wrote (its SHA-256) is refused, naming it. A folder without a manifest
    (hand-made, or written by the upstream script) has every digit-named .jpg."""
    pose_dir = Path(pose_dir)
    if not pose_dir.is_dir():
        raise FileNotFoundError(f"pose folder {pose_dir} does not exist: make it with run_align_pose.py")
    manifest = _manifest(pose_dir)
    if manifest is not None:
        names = [name for name in manifest.files if is_frame_file(name)]
        _refuse_changed(manifest, names)
        frames = [pose_dir / name for name in names]
        missing = [p for p in frames if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"pose frame {missing[0]} is listed in {MANIFEST_FILE} but missing: the run "
                                    f"that made the folder did not finish; make it again")
    else:
        frames = [p for p in pose_dir.iterdir() if is_frame_file(p.name) and p.is_file()]
    frames.sort(key=lambda p: (int(_FRAME_FILE.match(p.name).group(1)), p.name))
    if not frames:
        raise ValueError(f"no pose frames (0000.jpg, 0001.jpg, ...) in {pose_dir}: run run_align_pose.py first")
    return frames


def reference_pose_file(pose_dir: PathLike) -> Path:
    """`<pose_dir>/pose.jpg`, which must exist (and, in a folder with a manifest, be the file run_align_pose
    wrote)."""
    path = Path(pose_dir) / REFERENCE_POSE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"reference pose {path} not found: make the pose folder with run_align_pose.py")
    manifest = _manifest(Path(pose_dir))
    if manifest is not None:
        _refuse_changed(manifest, [REFERENCE_POSE_FILE])
    return path


def select_frames(num_available: int, num_frames: int, stride: int = 1,
                  rng: Optional[np.random.Generator] = None) -> List[int]:
    """`num_frames` indices into `num_available` frames: the one frame-window rule of every entry (the example
    scripts, `animate`, the web UI and training).

    When the window fits (`stride * (num_frames - 1) + 1` frames), it starts at a start drawn uniformly from every
    start that fits (`rng`; the first window when None) and takes every `stride`-th frame. Shorter videos are spread
    over: stride `max(N // num_frames, 1)` from frame 0, and the last index repeats to fill `num_frames`.
    Upstream differs by one frame at the edges (inference never starts at the last start that fits, training drops
    the last frame) and needs `stride` frames more before a strided window fits.
    """
    if num_available < 1:
        raise ValueError("select_frames: there are no frames to choose from")
    if num_frames < 1 or stride < 1:
        raise ValueError(f"select_frames: num_frames ({num_frames}) and stride ({stride}) must be >= 1")
    span = stride * (num_frames - 1) + 1
    if num_available >= span:
        start = 0 if rng is None else int(rng.integers(0, num_available - span + 1))
        indices = list(range(start, start + span, stride))
    else:
        stride = max(num_available // num_frames, 1)
        indices = list(range(0, min(stride * num_frames, num_available), stride))
    return indices + [indices[-1]] * (num_frames - len(indices))


def frames_at_stride(num_available: int, stride: int = 1, max_frames: Optional[int] = None) -> int:
    """How many frames `select_frames` can take at `stride` without spreading or repeating: every `stride`-th
    frame from the first, at most `max_frames`."""
    count = len(range(0, num_available, stride))
    return count if max_frames is None else min(count, max_frames)


def read_rgb(path: PathLike) -> np.ndarray:
    """An image file as H x W x 3 uint8 RGB (16-bit and float images scaled, not clipped). A file that cannot be
    decoded (not an image, truncated) raises ValueError naming it."""
    from PIL import Image  # noqa: PLC0415

    from .images import to_rgb_uint8  # noqa: PLC0415

    if not Path(path).is_file():
        raise FileNotFoundError(f"image {path} not found")
    try:
        with Image.open(path) as image:
            return to_rgb_uint8(image)
    except (OSError, SyntaxError, ValueError) as error:    # PIL: UnidentifiedImageError, truncated data, ...
        raise ValueError(f"cannot read image {path}: {' '.join(str(error).split()) or type(error).__name__}; "
                         f"replace or remove the file") from None


def pose_tensors(pose_images: Sequence[ImageLike], reference_pose: ImageLike, height: int, width: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose images (RGB) -> (`dwpose_data` [3, F, H, W] float 0..255, `random_ref_dwpose` [H, W, 3] uint8),
    resized bilinearly to the generation size like the upstream scripts."""
    import torch  # noqa: PLC0415

    from .images import resize_rgb, to_rgb_uint8  # noqa: PLC0415

    if len(pose_images) == 0:
        raise ValueError("pose_images is empty: pass at least one pose frame (e.g. from run_align_pose.py)")
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive; got {height}x{width}")
    frames = np.stack([resize_rgb(to_rgb_uint8(p), height, width) for p in pose_images])
    dwpose_data = torch.from_numpy(frames).permute(3, 0, 1, 2).float()
    reference = torch.from_numpy(resize_rgb(to_rgb_uint8(reference_pose), height, width))
    return dwpose_data, reference


@dataclass
class PoseClip:
    """What the pipeline needs from a pose folder, plus where it came from."""

    dwpose_data: torch.Tensor         # [3, F, H, W] float 0..255, RGB
    random_ref_dwpose: torch.Tensor   # [H, W, 3] uint8, RGB
    files: List[Path]                 # the pose frame of each of the F frames


def read_pose_clip(pose_dir: PathLike, height: int, width: int, num_frames: Optional[int] = None,
                   frame_interval: int = 1, seed: Optional[int] = 0) -> PoseClip:
    """Read a run_align_pose.py folder into pipeline inputs.

    `num_frames=None` takes every `frame_interval`-th frame (long videos); otherwise `select_frames` picks a window
    of `num_frames` with stride `frame_interval`, at a start drawn from `seed` (None: a fresh random start).
    """
    frames = list_pose_frames(pose_dir)
    if num_frames is None:
        indices = select_frames(len(frames), frames_at_stride(len(frames), frame_interval), frame_interval)
    else:
        indices = select_frames(len(frames), num_frames, frame_interval, np.random.default_rng(seed))
    return read_pose_frames(pose_dir, [frames[i] for i in indices], height, width)


def read_pose_frames(pose_dir: PathLike, chosen: Sequence[Path], height: int, width: int) -> PoseClip:
    """The chosen pose frames (`list_pose_frames` at the `select_frames` indices) and the reference pose of a pose
    folder, as pipeline inputs at `height` x `width`."""
    dwpose_data, ref = pose_tensors([read_rgb(p) for p in chosen], read_rgb(reference_pose_file(pose_dir)),
                                    height, width)
    return PoseClip(dwpose_data, ref, list(chosen))


def comparison_panels(reference: ImageLike, dwpose_data: torch.Tensor, generated: Sequence[ImageLike]
                      ) -> List[np.ndarray]:
    """Side-by-side frames [reference | pose | generated] (H x 3W x 3 uint8 RGB), the layout of every saved
    result. The reference is resized to the pose size; the generated frames must already have it."""
    import torch  # noqa: PLC0415

    from .images import resize_rgb, to_rgb_uint8  # noqa: PLC0415

    _, count, height, width = dwpose_data.shape
    if len(generated) != count:
        raise ValueError(f"{len(generated)} generated frames for {count} pose frames")
    ref = resize_rgb(to_rgb_uint8(reference), height, width)
    poses = dwpose_data.clamp(0, 255).to(torch.uint8).permute(1, 2, 3, 0).numpy()
    panels = []
    for pose, frame in zip(poses, generated):
        frame = to_rgb_uint8(frame)
        if frame.shape[:2] != (height, width):
            raise ValueError(f"generated frame is {frame.shape[1]}x{frame.shape[0]}, poses are {width}x{height}")
        panels.append(np.concatenate([ref, pose, frame], axis=1))
    return panels


__all__ = ["REFERENCE_POSE_FILE", "REFERENCE_IMAGE_FILE", "POSES_FILE", "POSES_FORMAT", "MANIFEST_FILE", "frame_file_name", "is_frame_file", "list_pose_frames", "frames_at_stride", "read_pose_frames",
           "reference_pose_file", "select_frames", "read_rgb", "pose_tensors", "PoseClip", "read_pose_clip",
           "comparison_panels"]
