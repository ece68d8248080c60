"""Poses for one (reference, driving video) pair, cached in a folder next to the output and reused while the inputs
are unchanged.

The folder is a `run_align_pose` output folder (pose.jpg, 0000.jpg…, poses.json, reference.png) whose manifest
(`.run_align_pose.json`) also records, once every file is complete, what it was made from: the SHA-256 of the
reference and of the driving video, the canvas, the resize mode, the backend and its model files, the smoothing.
A later run with the same record reuses the folder while its pose images are still the ones written (their SHA-256
in the manifest); any difference recomputes it, deleting only the files the manifest lists (never a file this tool
did not write). The frames are exactly those the manifest lists (`list_pose_frames`): another `00005.jpg` or a
user's `2023.jpg` in the folder is not a pose. A folder that is a symlink is refused (never written through); what
a killed run leaves (the temporary files of its atomic writes, with or without a manifest) is cleaned and recomputed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple


from ..data.pose_folder import (MANIFEST_FILE, POSES_FILE, REFERENCE_IMAGE_FILE, REFERENCE_POSE_FILE, is_frame_file,
                                list_pose_frames)
from ..data.safe_write import Manifest, check_output_folder, is_temporary_name

CACHE_FORMAT = "diffsynth.animate.poses/2"       # 2: the pose images' SHA-256 are in the manifest


@dataclass
class PoseFolder:
    """A complete pose folder: where it is, the reference image the poses were measured on (the prepared
    reference.png, or the original with `resize="stretch"`), the frame count, the driving fps, and whether it was
    reused from an earlier run."""

    path: Path
    reference_image: Path
    frames: int
    fps: float
    canvas: Tuple[int, int]
    reused: bool


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's content (a folder: of its files' names and contents, in name order)."""
    digest = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open(file, "rb") as stream:
            for block in iter(lambda: stream.read(chunk), b""):
                digest.update(block)
    return digest.hexdigest()


def _model_identity(path: str) -> dict:
    """A pose model file by path, size and modification time (hashing 200 MB per run would be slow)."""
    stat = Path(path).stat() if Path(path).is_file() else None
    return {"path": os.path.abspath(path), "size": stat.st_size if stat else None,
            "mtime_ns": stat.st_mtime_ns if stat else None}


def cache_key(reference, driving, canvas: Tuple[int, int], resize: str, backend: str, models: Sequence[str],
              smooth: bool) -> dict:
    """What a pose folder is made from (see the module docstring); equal keys mean equal folders."""
    return {"format": CACHE_FORMAT, "reference_sha256": file_sha256(reference), "driving_sha256": file_sha256(driving),
            "canvas": list(canvas), "resize": resize, "backend": backend,
            "models": [_model_identity(m) for m in models] if backend == "dwpose" else [], "smooth": bool(smooth)}


def _complete(manifest: Manifest) -> bool:
    """Every listed file is there and every pose image is the one the run wrote (its recorded SHA-256)."""
    images = [n for n in manifest.files if is_frame_file(n) or n in (REFERENCE_POSE_FILE, REFERENCE_IMAGE_FILE)]
    return bool(manifest.files) and all((manifest.folder / name).is_file() for name in manifest.files) and \
        bool(images) and not manifest.changed(images)


def _remove_leftovers(folder: Path) -> None:
    """Delete what a run killed in the middle of a write leaves: the hidden temporary files of atomic writes
    (`.<name>.<12 hex>.tmp<suffix>`, see `safe_write`); nothing else."""
    for entry in folder.iterdir():
        if is_temporary_name(entry.name) and (entry.is_file() or entry.is_symlink()):
            entry.unlink()


def prepare_poses(reference, driving, folder, canvas: Tuple[int, int], resize: str = "pad",
                  backend: str = "auto", det_model: Optional[str] = None, pose_model: Optional[str] = None,
                  smooth: bool = False, progress: bool = False) -> PoseFolder:
    """Extract and align the poses of `driving` to `reference` into `folder` on a `canvas` (width, height), or
    reuse the folder when an earlier run recorded the same inputs and its pose images are unchanged. A folder that
    is a symlink, or a non-empty one without a manifest (not made by this tool), is refused. `backend="auto"`:
    DWPose when both its files are there, else the offline MediaPipe backend, said in one line on stderr."""
    from ..pose.backends import resolve_backend  # noqa: PLC0415
    from ..pose.extract import SmoothingOptions, load_manifest, run_align_pose  # noqa: PLC0415
    from ..pose.onnx_runtime import DEFAULT_DET_MODEL, DEFAULT_POSE_MODEL  # noqa: PLC0415

    folder = check_output_folder(folder, inputs=[reference, driving])
    if folder.is_symlink():
        raise ValueError(f"pose folder {folder} is a symbolic link; refusing to write through it: remove the link "
                         f"(its target is kept) or choose another --out")
    models = (str(det_model or DEFAULT_DET_MODEL), str(pose_model or DEFAULT_POSE_MODEL))
    backend, notice = resolve_backend(backend, *models)     # `auto`: DWPose if its files are there, else offline
    if notice:
        print(notice, file=sys.stderr)
    key = cache_key(reference, driving, canvas, resize, backend, models, smooth)
    reused = False
    if folder.is_dir() and any(folder.iterdir()):
        manifest = load_manifest(folder)
        if not manifest.files:
            strangers = sorted(p.name for p in folder.iterdir() if not is_temporary_name(p.name))
            if strangers:
                shown = ", ".join(strangers[:3]) + (f" and {len(strangers) - 3} more" if len(strangers) > 3 else "")
                raise FileExistsError(f"pose folder {folder} holds files not written by diffsynth ({shown}; no "
                                      f"{MANIFEST_FILE}); move them away or choose another --out")
        _remove_leftovers(folder)      # a killed run's temporary files: ours by name, never a user's file
        reused = manifest.inputs == key and _complete(manifest)
    if not reused:
        run_align_pose(reference, driving, folder, backend=backend, det_model=models[0], pose_model=models[1],
                       overwrite=True, smoothing=SmoothingOptions() if smooth else None, progress=progress,
                       canvas=canvas, resize=resize)
        manifest = Manifest.load(folder, MANIFEST_FILE)
        manifest.inputs = key            # recorded last: a run that stopped half-way is never reused
        manifest.save()
    document = json.loads((folder / POSES_FILE).read_text(encoding="utf-8"))
    prepared = folder / REFERENCE_IMAGE_FILE if resize != "stretch" else Path(reference)
    return PoseFolder(folder, prepared, len(list_pose_frames(folder)), float(document["source"]["fps"]),
                      tuple(document.get("canvas", canvas)), reused)


def write_pose_preview(poses: PoseFolder, driving, out, overwrite: bool = False) -> Path:
    """The aligned-pose check video from a pose folder: [driving frame + raw pose | prepared reference + aligned
    pose] per frame (written atomically; an existing file is refused unless `overwrite`)."""
    from ..pose.extract import write_preview  # noqa: PLC0415
    from ..pose.keypoints import Pose  # noqa: PLC0415
    from ..pose.sources import FrameSource, read_image  # noqa: PLC0415

    document = json.loads((poses.path / POSES_FILE).read_text(encoding="utf-8"))
    frames = document["frames"]
    raw = [Pose.from_dict(frames[f["pose_from_frame"]]["raw"]) for f in frames]
    aligned = [Pose.from_dict(f["aligned"]) for f in frames]
    reference = read_image(poses.reference_image)
    write_preview(out, FrameSource.open(driving), raw, reference, aligned, poses.fps, overwrite=overwrite,
                  canvas=tuple(poses.canvas))
    return Path(out)


__all__ = ["PoseFolder", "prepare_poses", "write_pose_preview", "cache_key", "file_sha256", "CACHE_FORMAT"]
