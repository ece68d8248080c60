"""Retarget driving poses to the reference person's proportions (spec 5.5).

The transform is fitted once, on frame 0 against the reference pose, and the same numbers are applied to every
frame:

1. A global anisotropic scale (shoulder width ratio for x, torso height ratio for y).
2. Bone-by-bone retargeting in a fixed order: each bone's child (and its listed descendants, and the hand on that
   arm) moves along the bone so that frame 0's bone gets the reference's length. Later frames reuse the ratios.
3. A translation putting frame 0's neck on the reference neck.

Differences from upstream (docs/pose.md): invisible points are masked instead of being -1 sentinels, missing points
and zero lengths fall back to a ratio of 1 (or the other axis) with a warning, the shoulder ratio is unsigned, and a
bone whose end points are invisible in some later frame is skipped in that frame.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from .keypoints import BODY_NAMES, Pose

LEFT_HAND, RIGHT_HAND = 0, 1
_EPS = 1e-6


class PoseAlignmentWarning(UserWarning):
    """A ratio could not be measured (missing point or zero length) and fell back to a default."""


@dataclass(frozen=True)
class Bone:
    name: str
    parent: int
    child: int
    moved: tuple[int, ...]  # body points translated with the child (the child itself first)
    hand: int | None = None  # hand translated with the child


# The upstream order; earlier bones translate both ends of later ones (spec 5.5, table B). The upstream calls the
# leg bones "left leg", although 8..10 are the right hip, knee and ankle in OpenPose order.
BONES = (
    Bone("neck", 1, 0, (0, 14, 15, 16, 17)),
    Bone("right_shoulder", 1, 2, (2, 3, 4), RIGHT_HAND),
    Bone("left_shoulder", 1, 5, (5, 6, 7), LEFT_HAND),
    Bone("right_upper_arm", 2, 3, (3, 4), RIGHT_HAND),
    Bone("right_forearm", 3, 4, (4,), RIGHT_HAND),
    Bone("left_upper_arm", 5, 6, (6, 7), LEFT_HAND),
    Bone("left_forearm", 6, 7, (7,), LEFT_HAND),
    Bone("nose_right_eye", 0, 14, (14, 16)),
    Bone("nose_left_eye", 0, 15, (15, 17)),
    Bone("right_eye_ear", 14, 16, (16,)),
    Bone("left_eye_ear", 15, 17, (17,)),
    Bone("right_thigh", 8, 9, (9, 10, 19)),
    Bone("right_shin", 9, 10, (10, 19)),
    Bone("left_thigh", 11, 12, (12, 13, 18)),
    Bone("left_shin", 12, 13, (13, 18)),
)


@dataclass
class Retargeting:
    """The transform fitted on frame 0, reused for every frame."""

    scale: np.ndarray  # [2] (sx, sy)
    bone_ratios: np.ndarray  # [len(BONES)]
    offset: np.ndarray  # [2] translation added after scaling and bone retargeting
    fallbacks: list[str] = field(default_factory=list)  # what could not be measured

    def to_dict(self) -> dict:
        return {
            "scale": [float(v) for v in self.scale],
            "bone_ratios": {bone.name: float(k) for bone, k in zip(BONES, self.bone_ratios)},
            "offset": [float(v) for v in self.offset],
            "fallbacks": list(self.fallbacks),
        }


def _warn(fallbacks: list[str], message: str) -> None:
    fallbacks.append(message)
    warnings.warn(message, PoseAlignmentWarning, stacklevel=3)


def _axis_ratio(ref: Pose, drv: Pose, points: tuple[int, ...], measure) -> float | None:
    """ref/drv ratio of a length measured on `points`, or None when a point is missing or a length is ~0."""
    if not (ref.body_valid[list(points)].all() and drv.body_valid[list(points)].all()):
        return None
    ref_len, drv_len = abs(measure(ref.body)), abs(measure(drv.body))
    if drv_len < _EPS or ref_len < _EPS:
        return None
    return ref_len / drv_len


def _shoulder_width(b: np.ndarray) -> float:
    return b[5, 0] - b[2, 0]


def _torso_height(b: np.ndarray) -> float:
    return (b[8, 1] + b[11, 1]) / 2 - (b[2, 1] + b[5, 1]) / 2


def fit_retargeting(reference: Pose, first_frame: Pose) -> Retargeting:
    """Measure the scale, bone ratios and neck offset that map `first_frame` onto `reference`.

    Never divides by zero: an unmeasurable axis uses the other axis (or 1), an unmeasurable bone keeps ratio 1, and
    a missing neck aligns the mean of the body points visible in both poses instead. Each fallback warns.
    """
    fallbacks: list[str] = []
    sx = _axis_ratio(reference, first_frame, (2, 5), _shoulder_width)
    sy = _axis_ratio(reference, first_frame, (2, 5, 8, 11), _torso_height)
    if sx is None:
        _warn(fallbacks, "shoulder width unavailable (missing shoulder or zero width): x scale uses the y scale")
    if sy is None:
        _warn(fallbacks, "torso height unavailable (missing shoulder/hip or zero height): y scale uses the x scale")
    sx, sy = (sx if sx is not None else sy), (sy if sy is not None else sx)
    if sx is None:
        _warn(fallbacks, "neither shoulder width nor torso height measurable: global scale is 1")
        sx = sy = 1.0
    scale = np.array([sx, sy])

    # Measure each bone on frame 0 after the scale and the earlier bones, as upstream does.
    pose = _scaled(first_frame, scale)
    ratios = np.ones(len(BONES))
    for i, bone in enumerate(BONES):
        ends = [bone.parent, bone.child]
        if reference.body_valid[ends].all() and pose.body_valid[ends].all():
            ref_len = np.linalg.norm(reference.body[bone.child] - reference.body[bone.parent])
            drv_len = np.linalg.norm(pose.body[bone.child] - pose.body[bone.parent])
            if drv_len >= _EPS:
                ratios[i] = ref_len / drv_len
            else:
                _warn(fallbacks, f"bone {bone.name} has zero length in frame 0: ratio 1")
        else:
            missing = [BODY_NAMES[j] for j in ends if not (reference.body_valid[j] and pose.body_valid[j])]
            _warn(fallbacks, f"bone {bone.name}: {', '.join(missing)} missing in the reference or frame 0: ratio 1")
        _move_bone(pose, bone, ratios[i])

    if reference.body_valid[1] and pose.body_valid[1]:
        offset = reference.body[1] - pose.body[1]
    else:
        common = reference.body_valid & pose.body_valid
        if common.any():
            _warn(fallbacks, "neck missing in the reference or frame 0: aligning the mean of the common points")
            offset = reference.body[common].mean(0) - pose.body[common].mean(0)
        else:
            _warn(fallbacks, "no body point visible in both the reference and frame 0: no translation")
            offset = np.zeros(2)
    return Retargeting(scale, ratios, offset, fallbacks)


def _scaled(pose: Pose, scale: np.ndarray) -> Pose:
    out = pose.copy()
    out.body *= scale
    out.hands *= scale
    out.face *= scale
    return out


def _move_bone(pose: Pose, bone: Bone, ratio: float) -> None:
    """In place: move the child (and descendants, and the arm's hand) so the bone is `ratio` times as long."""
    if ratio == 1.0 or not (pose.body_valid[bone.parent] and pose.body_valid[bone.child]):
        return
    delta = (pose.body[bone.child] - pose.body[bone.parent]) * (ratio - 1.0)
    pose.body[list(bone.moved)] += delta
    if bone.hand is not None:
        pose.hands[bone.hand] += delta


def apply_retargeting(pose: Pose, retargeting: Retargeting) -> Pose:
    """Return a retargeted copy of `pose` (masks unchanged)."""
    out = _scaled(pose, retargeting.scale)
    for bone, ratio in zip(BONES, retargeting.bone_ratios):
        _move_bone(out, bone, ratio)
    out.body += retargeting.offset
    out.hands += retargeting.offset
    out.face += retargeting.offset
    return out


def align_poses(reference: Pose, frames: list[Pose]) -> tuple[list[Pose], Retargeting]:
    """Fit on frames[0] and apply to every frame."""
    if not frames:
        return [], Retargeting(np.ones(2), np.ones(len(BONES)), np.zeros(2))
    retargeting = fit_retargeting(reference, frames[0])
    return [apply_retargeting(p, retargeting) for p in frames], retargeting
