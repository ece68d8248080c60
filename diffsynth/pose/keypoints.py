"""The pose of one frame in the OpenPose layout UniAnimate draws, with explicit visibility masks.

Layout (spec 5.4): 18 OpenPose body points, then the left and right toe (20 in `body`), two 21-point hands
(left, right) and 68 face points. Coordinates are normalised: x / image width, y / image height.

Upstream marks missing points by writing -1 into the coordinates and then scales and translates those sentinels
together with the real points; here every part carries a boolean mask and the coordinates of invisible points are
never looked at.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BODY_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle", "right_eye", "left_eye",
    "right_ear", "left_ear", "left_toe", "right_toe",
)
NUM_BODY = 20  # 18 OpenPose points + left toe + right toe
NUM_HAND = 21
NUM_FACE = 68
HANDS = ("left", "right")

# COCO-WholeBody index -> OpenPose body index 0..17 (spec 5.4, step 2). None marks the neck, which is the mean of
# the two shoulders (COCO 5 and 6).
_OPENPOSE_FROM_COCO = (0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3)
_LEFT_TOE_FROM_COCO = (17, 18)  # big toe, small toe (the heel, 19, is dropped)
_RIGHT_TOE_FROM_COCO = (20, 21)  # big toe, small toe (the heel, 22, is dropped)
_FACE_COCO = slice(23, 91)
_LEFT_HAND_COCO = slice(91, 112)
_RIGHT_HAND_COCO = slice(112, 133)


@dataclass
class Pose:
    """One person in one frame. Arrays are float64 coordinates plus a bool mask of the same leading shape."""

    body: np.ndarray  # [20, 2]  18 OpenPose points + left toe + right toe
    body_valid: np.ndarray  # [20]
    hands: np.ndarray  # [2, 21, 2]  0 = left hand, 1 = right hand
    hands_valid: np.ndarray  # [2, 21]
    face: np.ndarray  # [68, 2]  kept for poses.json, never drawn
    face_valid: np.ndarray  # [68]

    @classmethod
    def empty(cls) -> "Pose":
        return cls(
            body=np.zeros((NUM_BODY, 2)), body_valid=np.zeros(NUM_BODY, bool),
            hands=np.zeros((2, NUM_HAND, 2)), hands_valid=np.zeros((2, NUM_HAND), bool),
            face=np.zeros((NUM_FACE, 2)), face_valid=np.zeros(NUM_FACE, bool),
        )

    @property
    def has_person(self) -> bool:
        return bool(self.body_valid.any())

    def copy(self) -> "Pose":
        return Pose(*(np.array(getattr(self, name)) for name in _FIELDS))

    def to_dict(self) -> dict:
        """JSON-friendly form: lists of [x, y], with null for an invisible point."""
        return {
            "body": _points_to_list(self.body, self.body_valid),
            "hands": [_points_to_list(self.hands[i], self.hands_valid[i]) for i in range(2)],
            "face": _points_to_list(self.face, self.face_valid),
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Pose":
        body, body_valid = _points_from_list(data["body"], NUM_BODY)
        left, left_valid = _points_from_list(data["hands"][0], NUM_HAND)
        right, right_valid = _points_from_list(data["hands"][1], NUM_HAND)
        face, face_valid = _points_from_list(data.get("face", [None] * NUM_FACE), NUM_FACE)
        return cls(body, body_valid, np.stack([left, right]), np.stack([left_valid, right_valid]), face, face_valid)


_FIELDS = ("body", "body_valid", "hands", "hands_valid", "face", "face_valid")


def _points_to_list(points: np.ndarray, valid: np.ndarray) -> list:
    return [[float(x), float(y)] if ok else None for (x, y), ok in zip(points, valid)]


def _points_from_list(items: list, n: int) -> tuple[np.ndarray, np.ndarray]:
    if len(items) != n:
        raise ValueError(f"expected {n} points, got {len(items)}")
    points = np.zeros((n, 2))
    valid = np.zeros(n, bool)
    for i, item in enumerate(items):
        if item is not None:
            points[i] = item[:2]
            valid[i] = True
    return points, valid


@dataclass
class FramePose:
    """One backend result: the person's pose (None when no person was found) and its box (xyxy pixels)."""

    pose: Pose | None
    box: np.ndarray | None = None


def wholebody_to_pose(
    keypoints: np.ndarray, scores: np.ndarray, width: int, height: int, threshold: float = 0.3
) -> Pose:
    """Convert one person's 133 COCO-WholeBody keypoints (pixels) to the normalised OpenPose layout (spec 5.4).

    Args:
        keypoints: [133, 2] pixel coordinates in the source image.
        scores: [133] confidences; a point is visible when its score is above `threshold`.
        width, height: size of the source image, used to normalise.
    """
    keypoints = np.asarray(keypoints, np.float64)
    scores = np.asarray(scores, np.float64)
    ok = scores > threshold
    xy = keypoints / np.array([width, height], np.float64)

    pose = Pose.empty()
    for dst, src in enumerate(_OPENPOSE_FROM_COCO):
        if src is None:  # the neck: mean of the shoulders, visible only if both are
            pose.body[dst] = (xy[5] + xy[6]) / 2
            pose.body_valid[dst] = ok[5] and ok[6]
        else:
            pose.body[dst] = xy[src]
            pose.body_valid[dst] = ok[src]
    for dst, (a, b) in ((18, _LEFT_TOE_FROM_COCO), (19, _RIGHT_TOE_FROM_COCO)):
        pose.body[dst] = (xy[a] + xy[b]) / 2
        pose.body_valid[dst] = ok[a] and ok[b]
    pose.hands[0], pose.hands_valid[0] = xy[_LEFT_HAND_COCO], ok[_LEFT_HAND_COCO]
    pose.hands[1], pose.hands_valid[1] = xy[_RIGHT_HAND_COCO], ok[_RIGHT_HAND_COCO]
    pose.face, pose.face_valid = xy[_FACE_COCO].copy(), ok[_FACE_COCO].copy()
    return pose
