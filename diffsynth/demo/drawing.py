"""Drawing the mannequin (filled limbs over its background, antialiased by supersampling) and its pose image."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import cv2
import numpy as np

from ..pose.draw import draw_pose
from ..pose.keypoints import Pose
from .mannequin import Appearance, Body

_SUPERSAMPLE = 2                           # the mannequin is drawn at 2x the render size, then area-downscaled


def _background(app: Appearance, width: int, height: int) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = app.background
    if app.background_kind == "floor":
        image[int(app.floor * height):] = app.background2
        return image
    if app.background_kind == "gradient":
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        image = np.asarray(app.background, np.float32) * (1 - ramp) + np.asarray(app.background2, np.float32) * ramp
        image = np.broadcast_to(np.round(image), (height, width, 3)).astype(np.uint8)
    return image


def _limb(canvas: np.ndarray, a, b, thickness: float, color, scale: float) -> None:
    pa = tuple(int(round(v * scale)) for v in a)
    pb = tuple(int(round(v * scale)) for v in b)
    t = max(int(round(thickness * scale)), 1)
    cv2.line(canvas, pa, pb, color, thickness=t, lineType=cv2.LINE_8)
    cv2.circle(canvas, pa, t // 2, color, -1)
    cv2.circle(canvas, pb, t // 2, color, -1)


def draw_mannequin(joints: dict, body: Body, app: Appearance, width: int, height: int, behind: Sequence = ()
                   ) -> tuple:
    """(RGB uint8 frame, bool mask) of the figure over its background, antialiased by 2x supersampling.
    `behind`: (joints, body, appearance) of other figures drawn first (not in the mask)."""
    s = _SUPERSAMPLE
    W, H = width * s, height * s
    fg = cv2.resize(_background(app, width, height), (W, H), interpolation=cv2.INTER_NEAREST)
    alpha = np.zeros((H, W), np.uint8)
    for other in behind:
        _paint(fg, None, *other, height)
    _paint(fg, alpha, joints, body, app, height)
    frame = cv2.resize(fg, (width, height), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA) > 64
    return frame, mask


def _paint(fg: np.ndarray, alpha: Optional[np.ndarray], joints: dict, body: Body, app: Appearance, height: int
           ) -> None:
    """Draw one figure onto the supersampled canvas `fg` (and 255 into `alpha` where it covers, unless None)."""
    s = _SUPERSAMPLE
    limb = body.limb * height
    arm = 0.8 * limb
    yaw = joints["_yaw"]
    # the arm on the side turned away from the camera is drawn first (behind the torso)
    arm_order = ("l", "r") if yaw < 0 else ("r", "l")
    parts = []

    def arm_parts(side):
        sleeve = app.top if app.long_sleeves else app.skin
        return [("limb", joints[f"{side}_shoulder"], joints[f"{side}_elbow"], arm, app.top),
                ("limb", joints[f"{side}_elbow"], joints[f"{side}_wrist"], arm * 0.9, sleeve),
                ("disc", joints[f"{side}_wrist"], arm * 0.6, app.skin)]

    parts += arm_parts(arm_order[0])
    for side in ("r", "l"):
        parts += [("limb", joints[f"{side}_hip"], joints[f"{side}_knee"], limb, app.bottom),
                  ("limb", joints[f"{side}_knee"], joints[f"{side}_ankle"], limb * 0.9, app.bottom),
                  ("limb", joints[f"{side}_ankle"], joints[f"{side}_toe"], limb * 0.7, app.shoes)]
    parts.append(("poly", [joints["r_shoulder"], joints["l_shoulder"], joints["l_hip"] + [limb * 0.3, 0],
                           joints["r_hip"] - [limb * 0.3, 0]], app.top))
    parts.append(("limb", joints["r_shoulder"], joints["l_shoulder"], arm, app.top))
    parts.append(("limb", joints["r_hip"], joints["l_hip"], limb, app.bottom))
    parts.append(("limb", joints["neck"], joints["head"], limb * 0.6, app.skin))
    parts.append(("disc", joints["head"], body.head * height, app.skin))
    parts.append(("hair", joints["head"], body.head * height, app.hair))
    parts += arm_parts(arm_order[1])

    for part in parts:
        for target, color in ((fg, part[-1]), (alpha, 255))[:1 if alpha is None else 2]:
            color = tuple(int(c) for c in color) if isinstance(color, tuple) else color
            kind = part[0]
            if kind == "limb":
                _limb(target, part[1], part[2], part[3], color, s)
            elif kind == "disc":
                cv2.circle(target, tuple(int(round(v * s)) for v in part[1]), max(int(round(part[2] * s)), 1),
                           color, -1)
            elif kind == "poly":
                pts = np.round(np.array(part[1]) * s).astype(np.int32)
                cv2.fillConvexPoly(target, pts, color)
            elif kind == "hair":     # the upper part of the head, shifted away from the face
                c = joints["head"] + np.array([-math.sin(yaw) * part[2] * 0.25, -part[2] * 0.25])
                cv2.ellipse(target, tuple(int(round(v * s)) for v in c),
                            (max(int(part[2] * s * 1.05), 1), max(int(part[2] * s * 0.8), 1)), 0, 180, 360, color, -1)


def draw_pose_rgb(pose: Pose, width: int, height: int) -> np.ndarray:
    """The pose image as PIL reads it back from a JPEG written by `draw.write_image` (draw_pose paints in OpenCV's
    BGR order, so the channels are reversed), which is what training and inference consume."""
    return np.ascontiguousarray(draw_pose(pose, width=width, height=height)[..., ::-1])
