"""The `run_align_pose.py` job: extract poses from a reference image and a driving video, align, draw and save.

Output folder (spec 5.6 plus `poses.json`):
    pose.jpg              the reference pose, drawn unmodified
    0000.jpg, 0001.jpg …  one aligned pose per driving frame (zero-padded to at least 4 digits, wider if needed)
    poses.json            raw and aligned keypoints of every frame, the reference pose and the fitted transform
    reference.png         with `resize="pad"` or `"crop"` only: the reference image brought to the canvas's aspect
                          (the poses are measured on it, so use it as the pipeline's reference image)
    .run_align_pose.json  the run manifest: the names of the files above, listed before they are written

The canvas (pose image size) is 512x768 by default, as upstream; `canvas="auto"` follows the reference's aspect.

Every file is written atomically. `--overwrite` deletes exactly the files the previous run's manifest lists; a file
it does not list (a user's `pose.jpg` or `2023.jpg`) is never deleted or replaced: the run stops and names it.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from ..data.framing import check_mode, plan_framing, prepare_reference, resolve_canvas
from ..data.pose_folder import MANIFEST_FILE, POSES_FILE, POSES_FORMAT, REFERENCE_IMAGE_FILE, frame_file_name
from ..data.pose_folder import REFERENCE_POSE_FILE as REFERENCE_FILE
from ..data.safe_write import Manifest, atomic_output, atomic_write_text, check_output_file, check_output_folder
from .backends import FramePose, create_backend
from .draw import CANVAS_HEIGHT, CANVAS_WIDTH, draw_pose, write_image
from .keypoints import BODY_NAMES, HANDS, NUM_FACE, NUM_HAND, Pose
from .onnx_runtime import DEFAULT_DET_MODEL, DEFAULT_POSE_MODEL
from .retarget import align_poses
from .smoothing import smooth_poses
from .sources import FrameSource, read_image

@dataclass
class AlignSummary:
    frames: int
    frames_without_person: int
    seconds: float
    output_dir: Path

    def __str__(self) -> str:
        return (f"{self.frames} frames ({self.frames_without_person} with no person, pose held from a neighbour) "
                f"in {self.seconds:.1f} s -> {self.output_dir}")


@dataclass
class SmoothingOptions:
    """One-Euro parameters (normalised coordinates, Hz); see `smoothing.OneEuroFilter`."""

    min_cutoff: float = 1.0
    beta: float = 0.5
    d_cutoff: float = 1.0



def check_output_dir(path: str | Path, overwrite: bool, inputs: Sequence[str | Path] = (),
                     names: Sequence[str] = ()) -> Path:
    """Refuse an unsafe output folder (see `check_output_folder`; `inputs` are the reference image and the source),
    a non-empty one unless `overwrite`, and one holding any of `names` that its manifest does not list.
    Changes nothing; returns the path with `~` expanded."""
    path = check_output_folder(path, inputs=inputs)
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(f"output folder {path} is not empty; pass --overwrite to replace the files a "
                                  f"previous run wrote there (listed in its {MANIFEST_FILE}; other files are kept)")
        load_manifest(path).refuse_conflicts(names)
    return path


def load_manifest(path: Path) -> Manifest:
    """The folder's manifest. A folder written before manifests existed has none: then a `poses.json` of this
    tool's format ("diffsynth.pose/1") serves as one, listing itself, the reference pose and the frames it names."""
    manifest = Manifest.load(path, MANIFEST_FILE)
    poses_json = path / POSES_FILE
    if manifest.files or os.path.lexists(manifest.path) or poses_json.is_symlink() or not poses_json.is_file():
        return manifest
    try:
        document = json.loads(poses_json.read_text(encoding="utf-8"))
        if document.get("format") != POSES_FORMAT:
            return manifest
        names = [document["reference"]["file"]] + [frame["file"] for frame in document["frames"]]
    except (ValueError, KeyError, TypeError, AttributeError):
        return manifest                     # not ours, or damaged: adopt nothing
    return Manifest(path, MANIFEST_FILE, [POSES_FILE, *[n for n in names if isinstance(n, str)]])


def prepare_output_dir(path: str | Path, overwrite: bool, names: Sequence[str],
                       inputs: Sequence[str | Path] = ()) -> Path:
    """Create the folder and make room for `names`: a non-empty folder is refused unless `overwrite`, which deletes
    exactly the files the previous run's manifest lists, after checking that no unlisted file has one of `names`.
    Then lists `names` in a new manifest, so that a crash while writing them still leaves them listed."""
    path = check_output_dir(path, overwrite, inputs, names)  # refuses unlisted files before anything is deleted
    path.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(path)
    manifest.remove_listed()
    manifest.reserve(names)
    return path


def fill_missing(results: list[FramePose]) -> tuple[list[Pose], list[int]]:
    """Hold the previous pose over frames with no person (the next one at the start).

    Returns the filled poses and, per frame, the index of the frame its pose comes from.
    """
    found = [i for i, r in enumerate(results) if r.pose is not None]
    if not found:
        raise ValueError(f"no person found in any of the {len(results)} driving frames")
    source, last = [], found[0]
    for i, r in enumerate(results):
        if r.pose is not None:
            last = i
        source.append(last)
    return [results[j].pose for j in source], source


def run_align_pose(
    ref_image: str | Path,
    source: str | Path,
    output_dir: str | Path,
    *,
    backend: str = "dwpose",
    det_model: str | Path = DEFAULT_DET_MODEL,
    pose_model: str | Path = DEFAULT_POSE_MODEL,
    overwrite: bool = False,
    preview: str | Path | None = None,
    smoothing: SmoothingOptions | None = None,
    progress: bool = True,
    canvas: tuple[int, int] | str | None = None,
    resize: str = "stretch",
) -> AlignSummary:
    """Extract, align and draw; see the module docstring for what is written.

    Args:
        ref_image: the reference image whose proportions the poses take.
        source: a video, an image, or a folder of videos (concatenated) or images, in natural sort order.
        output_dir: where the pose images and poses.json go (see `prepare_output_dir`); `/`, the home or current
            folder and a folder equal to or containing the reference image or the source are refused.
        backend: `dwpose` (ONNX, `det_model` and `pose_model`) or `mediapipe` (offline extra).
        overwrite: allow a non-empty output folder (deleting only what its manifest lists) and replacing `preview`.
        preview: optional .mp4: [driving frame + raw pose | reference image + aligned pose] per frame; an existing
            file is refused unless `overwrite`.
        smoothing: One-Euro smoothing of the raw keypoints before alignment; None (default) = off, like upstream.
        canvas: the pose images' (width, height), "WxH", "auto" (the reference's aspect at 512*768 pixels, in
            multiples of 16) or None (512x768, upstream).
        resize: how the reference meets the canvas's aspect (`diffsynth.data.framing`): "stretch" (default,
            upstream: poses are measured on the original and stretched with it), "pad" or "crop" (the reference is
            padded / centre-cropped to the canvas's aspect first, written as reference.png, and measured there).
    """
    start = time.perf_counter()
    job = _check_inputs(ref_image, source, output_dir, overwrite, preview, canvas, resize,
                        backend, det_model, pose_model)
    reference = _reference_pose(job, ref_image, resize)
    results, sizes = _track_poses(job, source, progress)
    raw_poses, pose_source = fill_missing(results)
    if smoothing is not None:
        raw_poses = smooth_poses(raw_poses, job.frames.fps, smoothing.min_cutoff, smoothing.beta, smoothing.d_cutoff)
    aligned, retargeting = align_poses(reference.pose, raw_poses)
    names = [frame_file_name(i, len(aligned)) for i in range(len(aligned))]
    output_dir = _write_pose_images(job, reference, aligned, names, overwrite, progress)
    document = _poses_document(job, ref_image, reference, smoothing, retargeting,
                               zip(names, sizes, results, pose_source, aligned))
    atomic_write_text(output_dir / POSES_FILE, _to_json(document), replace=False)
    if job.preview is not None:
        write_preview(job.preview, job.frames, raw_poses, job.reference_image, aligned, job.frames.fps,
                      overwrite=overwrite, canvas=job.canvas)

    missing = sum(r.pose is None for r in results)
    return AlignSummary(len(results), missing, time.perf_counter() - start, output_dir)


@dataclass
class _AlignJob:
    """What `run_align_pose` has checked before the slow part: the images, the canvas, the source and the outputs."""

    original_image: np.ndarray     # the reference as read
    reference_image: np.ndarray    # brought to the canvas's aspect with `resize` (the original with "stretch")
    canvas: tuple[int, int]        # (width, height) of the pose images
    framing: object                # the pad/crop plan (`plan_framing`), None with "stretch"
    frames: FrameSource
    inputs: tuple                  # (reference image, source): what no output may overwrite
    output_dir: Path
    preview: Path | None
    backend: object                # the pose backend (`create_backend`)
    prepared: bool                 # whether the prepared reference image is written (resize "pad" / "crop")


def _check_inputs(ref_image, source, output_dir, overwrite, preview, canvas, resize, backend, det_model,
                  pose_model) -> _AlignJob:
    """Step 1: check every input and output before the slow part (and open the source and the pose backend)."""
    check_mode(resize)
    original_image = read_image(ref_image)
    canvas_w, canvas_h = resolve_canvas(canvas, original_image.shape[1], original_image.shape[0])
    reference_image = prepare_reference(original_image, canvas_w, canvas_h, resize)
    framing = None if resize == "stretch" else plan_framing(
        original_image.shape[1], original_image.shape[0], reference_image.shape[1], reference_image.shape[0], resize)
    frames = FrameSource.open(source)
    inputs = (ref_image, source)
    output_dir = check_output_dir(output_dir, overwrite, inputs, (REFERENCE_FILE, POSES_FILE))
    if preview is not None:
        preview = check_output_file(preview, overwrite=overwrite, inputs=inputs, flag="--overwrite")
    pose_backend = create_backend(backend, det_model, pose_model)
    return _AlignJob(original_image, reference_image, (canvas_w, canvas_h), framing, frames, inputs, output_dir,
                     preview, pose_backend, resize != "stretch")


def _reference_pose(job: _AlignJob, ref_image, resize: str) -> FramePose:
    """Step 2a: the reference's pose; no person is an error (naming a centre crop that cut the person out)."""
    reference = job.backend.estimate_image(job.reference_image)
    if reference.pose is None:
        if resize == "crop" and job.backend.estimate_image(job.original_image).pose is not None:
            canvas_w, canvas_h = job.canvas
            raise ValueError(f"--resize crop cut the person out of the reference image {ref_image}: the centre crop "
                             f"to the canvas's {canvas_w}x{canvas_h} shape keeps no one (the whole image has a "
                             f"person); use --resize pad, or a photo with the person nearer the centre")
        raise ValueError(f"no person found in the reference image {ref_image}")
    return reference


def _track_poses(job: _AlignJob, source, progress: bool) -> tuple[list[FramePose], list]:
    """Step 2b: the pose of every driving frame (None where no person is found) and each frame's (width, height)."""
    frames = job.frames
    results, sizes = [], []
    tracker = job.backend.new_sequence()
    try:
        for frame in tqdm(frames, total=frames.approximate_length(), unit="frame", desc="poses",
                          disable=not progress):
            results.append(tracker(frame))
            sizes.append(frame.shape[1::-1])
    finally:
        tracker.close()
    if not results:
        raise ValueError(f"no frame could be read from {source}")
    return results, sizes


def _write_pose_images(job: _AlignJob, reference: FramePose, aligned: list[Pose], names: list[str], overwrite: bool,
                       progress: bool) -> Path:
    """Step 3: make room in the output folder, then write the prepared reference (pad / crop), the reference pose
    and the aligned poses, and record their hashes. Returns the output folder."""
    extra = [REFERENCE_IMAGE_FILE] if job.prepared else []
    output_dir = prepare_output_dir(job.output_dir, overwrite, [REFERENCE_FILE, *names, POSES_FILE, *extra],
                                    job.inputs)
    if extra:
        write_image(output_dir / REFERENCE_IMAGE_FILE, job.reference_image, replace=False)
    write_image(output_dir / REFERENCE_FILE, draw_pose(reference.pose, *job.canvas), replace=False)
    for name, pose in zip(tqdm(names, unit="frame", desc="drawing", disable=not progress), aligned):
        write_image(output_dir / name, draw_pose(pose, *job.canvas), replace=False)
    # The images' SHA-256, so that readers take exactly these frames (list_pose_frames) and notice an edit.
    Manifest.load(output_dir, MANIFEST_FILE).record_hashes([REFERENCE_FILE, *names, *extra])
    return output_dir


def _poses_document(job: _AlignJob, ref_image, reference: FramePose, smoothing: SmoothingOptions | None,
                    retargeting, frames) -> dict:
    """Step 4: the poses.json document; `frames` yields (file name, size, FramePose, pose source, aligned pose)."""
    canvas_w, canvas_h = job.canvas
    return {
        "format": POSES_FORMAT,
        "backend": job.backend.name,
        "coordinates": "normalised: x / image width, y / image height (the reference's: of the prepared reference "
                       f"image); pose images stretch them to {canvas_w}x{canvas_h}",
        "canvas": [canvas_w, canvas_h],
        "layout": {"body": list(BODY_NAMES), "hands": list(HANDS), "hand_points": NUM_HAND, "face_points": NUM_FACE},
        "reference": {"image": str(ref_image), "size": list(job.reference_image.shape[1::-1]), "file": REFERENCE_FILE,
                      "prepared_image": REFERENCE_IMAGE_FILE if job.prepared else None,
                      "framing": job.framing.to_dict() if job.framing else {"mode": "stretch"},
                      "box": _box(reference.box), "pose": reference.pose.to_dict()},
        "source": {"files": [str(f) for f in job.frames.files], "fps": job.frames.fps},
        "smoothing": None if smoothing is None else vars(smoothing),
        "retargeting": retargeting.to_dict(),
        "frames": [
            {"index": i, "file": name, "size": list(size), "person_found": r.pose is not None,
             "pose_from_frame": src, "box": _box(r.box), "raw": None if r.pose is None else r.pose.to_dict(),
             "aligned": pose.to_dict()}
            for i, (name, size, r, src, pose) in enumerate(frames)
        ],
    }


def _to_json(document: dict) -> str:
    """Indented JSON with one line per frame: readable and editable, and fast to write for long videos."""
    document = dict(document)
    frames = document.pop("frames")
    head = json.dumps(document, indent=1)
    lines = ",\n".join("  " + json.dumps(frame) for frame in frames)
    return head[:-2] + ',\n "frames": [\n' + lines + "\n ]\n}\n"


def _box(box) -> list[float] | None:
    return None if box is None else [float(v) for v in box]


def overlay(image_bgr: np.ndarray, pose: Pose, canvas: tuple[int, int] = (CANVAS_WIDTH, CANVAS_HEIGHT)
            ) -> np.ndarray:
    """The image stretched to the pose canvas (width, height), darkened, with the pose drawn over it."""
    import cv2

    background = cv2.resize(image_bgr, tuple(canvas), interpolation=cv2.INTER_AREA) // 2
    drawn = draw_pose(pose, *canvas)
    return np.where(drawn.any(-1, keepdims=True), drawn, background)


def write_preview(path: str | Path, frames: FrameSource, raw_poses: list[Pose], reference_image: np.ndarray,
                  aligned: list[Pose], fps: float, *, overwrite: bool = False,
                  canvas: tuple[int, int] = (CANVAS_WIDTH, CANVAS_HEIGHT)) -> None:
    """mp4 with [driving frame + raw pose | reference image + aligned pose] side by side (each panel `canvas`
    sized), written atomically; an existing file is replaced only if `overwrite`."""
    import imageio.v2 as imageio

    path = check_output_file(path, overwrite=overwrite, flag="--overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, replace=overwrite) as temp, \
            imageio.get_writer(str(temp), fps=fps, macro_block_size=16) as writer:
        for frame, raw, pose in zip(frames, raw_poses, aligned):
            panel = np.concatenate([overlay(frame, raw, canvas), overlay(reference_image, pose, canvas)], axis=1)
            writer.append_data(np.ascontiguousarray(panel[:, :, ::-1]))


def redraw_from_json(poses_json: str | Path, output_dir: str | Path | None = None) -> int:
    """Redraw the pose images from the `aligned` entries of an (edited) poses.json; returns the frame count.

    Writes into `output_dir` (default: the folder of `poses_json`) atomically and lists the images in its manifest.
    Files a previous run listed there are replaced; an existing file it does not list is refused (FileExistsError)
    before anything is written, as is a frame `file` entry that is not a plain `.jpg` name.
    """
    poses_json = Path(poses_json).expanduser()
    document = json.loads(poses_json.read_text())
    if output_dir is None:
        output_dir = poses_json.parent
    else:
        output_dir = check_output_folder(output_dir)  # poses.json itself is never written: not an input to guard
    names = [REFERENCE_FILE] + [entry["file"] for entry in document["frames"]]
    for name in names:
        if not isinstance(name, str) or Path(name).name != name or name.startswith(".") or \
                not name.lower().endswith(".jpg"):
            raise ValueError(f"{poses_json}: frame file {name!r} is not a plain .jpg file name")
    output_dir.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(output_dir)
    manifest.reserve(names)  # refuses unlisted files first
    canvas = tuple(document.get("canvas") or (CANVAS_WIDTH, CANVAS_HEIGHT))
    write_image(output_dir / REFERENCE_FILE, draw_pose(Pose.from_dict(document["reference"]["pose"]), *canvas))
    for entry in document["frames"]:
        write_image(output_dir / entry["file"], draw_pose(Pose.from_dict(entry["aligned"]), *canvas))
    manifest.record_hashes(names)    # the redrawn images are now the tool's files (see list_pose_frames)
    return len(document["frames"])
