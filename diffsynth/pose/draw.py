"""Draw a pose as the OpenPose-style skeleton UniAnimate was trained on (spec 5.6).

Colours are written into the array as listed and the image is saved with OpenCV, so on disk (and through PIL) each
colour appears reversed: COLORS[0] = (255, 0, 0) reads back as pure blue, hand joints (0, 0, 255) as red. Training
data was produced the same way; keep it.
"""
from __future__ import annotations

import colorsys
import math
from pathlib import Path

import cv2
import numpy as np

from ..data.safe_write import atomic_write_bytes
from .keypoints import Pose

CANVAS_WIDTH, CANVAS_HEIGHT = 512, 768
STICK_WIDTH = 4
JOINT_RADIUS = 4
DIM = 0.6

# 1-based OpenPose pairs; the last two are left ankle -> left toe and right ankle -> right toe.
LIMBS = tuple(
    (a - 1, b - 1) for a, b in (
        (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
        (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (14, 19), (11, 20),
    )
)
COLORS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85), (170, 255, 255), (255, 255, 0),
)
HAND_EDGES = tuple(
    (0 if j == 0 else finger * 4 + j, finger * 4 + j + 1) for finger in range(5) for j in range(4)
)
HAND_EDGE_COLORS = tuple(tuple(c * 255 for c in colorsys.hsv_to_rgb(e / len(HAND_EDGES), 1.0, 1.0))
                         for e in range(len(HAND_EDGES)))
HAND_JOINT_COLOR = (0, 0, 255)

# uint8(v * 0.6) for every byte value: the upstream dimming `(canvas * 0.6).astype(np.uint8)` as a lookup table.
_DIM_LUT = (np.arange(256, dtype=np.float64) * DIM).astype(np.uint8)


def draw_pose(pose: Pose, width: int = CANVAS_WIDTH, height: int = CANVAS_HEIGHT,
              canvas: np.ndarray | None = None) -> np.ndarray:
    """Draw body, feet and hands (no face) on a black [height, width, 3] uint8 canvas (or onto `canvas`)."""
    if canvas is None:
        canvas = np.zeros((height, width, 3), np.uint8)
    else:
        height, width = canvas.shape[:2]
    size = np.array([width, height], np.float64)
    body = pose.body * size
    valid = pose.body_valid

    # 1. Limbs: filled ellipses, then everything drawn so far is dimmed.
    for (a, b), color in zip(LIMBS, COLORS):
        if not (valid[a] and valid[b]):
            continue
        (xa, ya), (xb, yb) = body[a], body[b]
        length = ((xa - xb) ** 2 + (ya - yb) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        center = (int((xa + xb) / 2), int((ya + yb) / 2))
        polygon = cv2.ellipse2Poly(center, (int(length / 2), STICK_WIDTH), int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, color)
    cv2.LUT(canvas, _DIM_LUT, dst=canvas)

    # 2. Joints.
    for i in np.flatnonzero(valid):
        x, y = body[i]
        cv2.circle(canvas, (int(x), int(y)), JOINT_RADIUS, COLORS[i], thickness=-1)

    # 3. Hands, not dimmed.
    for hand, hand_valid in zip(pose.hands * size, pose.hands_valid):
        if not hand_valid.any():
            continue
        pixels = [(int(x), int(y)) for x, y in hand]
        for (a, b), color in zip(HAND_EDGES, HAND_EDGE_COLORS):
            if hand_valid[a] and hand_valid[b]:
                cv2.line(canvas, pixels[a], pixels[b], color, thickness=2)
        for i in np.flatnonzero(hand_valid):
            cv2.circle(canvas, pixels[i], JOINT_RADIUS, HAND_JOINT_COLOR, thickness=-1)
    return canvas


def write_image(path: str | Path, image_bgr: np.ndarray, jpeg_quality: int = 95, *, replace: bool = True) -> None:
    """Encode with OpenCV (so the BGR convention above holds on disk) and write atomically: a failure leaves no
    partial file, and a symlink at `path` is replaced, never written through. `replace=False` refuses an existing
    `path` (FileExistsError). Raises if encoding or writing fails."""
    path = Path(path)
    params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if path.suffix.lower() in (".jpg", ".jpeg") else []
    ok, data = cv2.imencode(path.suffix, image_bgr, params)
    if not ok:
        raise OSError(f"could not encode {path}")
    atomic_write_bytes(path, data.tobytes(), replace=replace)
