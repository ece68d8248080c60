"""Whole-body keypoints: DWPose's RTMPose-style SimCC model exported to ONNX (spec 5.3)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .onnx_runtime import DEFAULT_POSE_MODEL, create_session

BOX_PADDING = 1.25
SIMCC_SPLIT_RATIO = 2.0
# The upstream normalisation constants are the RGB ImageNet ones, but they are applied to the BGR frame in BGR
# channel order. The released model was trained/exported with exactly this, so keep it.
MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)


def box_to_center_scale(box: np.ndarray, aspect_ratio: float, padding: float = BOX_PADDING):
    """xyxy box -> (center, scale): the box grown by `padding` and widened or heightened to `aspect_ratio` (w/h)."""
    x1, y1, x2, y2 = np.asarray(box, np.float64)
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    if w > h * aspect_ratio:
        h = w / aspect_ratio
    else:
        w = h * aspect_ratio
    return center, np.array([w, h])


def warp_matrix(center: np.ndarray, scale: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """The 2x3 affine (no rotation) that maps the box `center +- scale/2` onto an output of (w, h) pixels.

    Built from three point pairs with cv2.getAffineTransform in float32, like mmpose, for identical numerics.
    """
    dst_w, dst_h = output_size
    src_center = center
    src_top = center + np.array([0.0, -scale[0] * 0.5])
    dst_center = np.array([dst_w * 0.5, dst_h * 0.5])
    dst_top = dst_center + np.array([0.0, -dst_w * 0.5])

    def third(a, b):  # b + (a - b) rotated by 90 degrees
        d = a - b
        return b + np.array([-d[1], d[0]])

    src = np.stack([src_center, src_top, third(src_center, src_top)]).astype(np.float32)
    dst = np.stack([dst_center, dst_top, third(dst_center, dst_top)]).astype(np.float32)
    return cv2.getAffineTransform(src, dst)


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = SIMCC_SPLIT_RATIO):
    """[K, Wx], [K, Wy] SimCC logits -> locations [K, 2] in input pixels and scores [K] = min of the two maxima.

    Locations whose score is <= 0 are -1 (as upstream); callers use the score to decide visibility.
    """
    locs = np.stack([simcc_x.argmax(1), simcc_y.argmax(1)], -1).astype(np.float32)
    scores = np.minimum(simcc_x.max(1), simcc_y.max(1))
    locs[scores <= 0] = -1
    return locs / split_ratio, scores


class WholeBodyEstimator:
    """133-point COCO-WholeBody pose model on one person box.

    Args:
        model_path: the SimCC ONNX file (default `checkpoints/dw-ll_ucoco_384.onnx`); the input size is read from it.
        providers: onnxruntime providers; default CUDA if available, else CPU.
    """

    def __init__(self, model_path: str | Path = DEFAULT_POSE_MODEL, providers: list[str] | None = None):
        self.session = create_session(model_path, providers)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        h, w = model_input.shape[2:4]
        if not (isinstance(h, int) and isinstance(w, int)):
            raise ValueError(f"{model_path}: the pose model needs a fixed input size, got {model_input.shape}")
        self.input_size = (w, h)  # (288, 384) for dw-ll_ucoco_384

    def preprocess(self, image_bgr: np.ndarray, box: np.ndarray):
        w, h = self.input_size
        center, scale = box_to_center_scale(box, aspect_ratio=w / h)
        crop = cv2.warpAffine(image_bgr, warp_matrix(center, scale, (w, h)), (w, h), flags=cv2.INTER_LINEAR)
        crop = crop.astype(np.float32)
        crop -= MEAN
        crop /= STD
        return np.ascontiguousarray(crop.transpose(2, 0, 1)[None]), center, scale

    def __call__(self, image_bgr: np.ndarray, box: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Keypoints [133, 2] in source pixels and scores [133] for the person in `box` (xyxy; None = whole image)."""
        if box is None:
            box = np.array([0, 0, image_bgr.shape[1], image_bgr.shape[0]], np.float64)
        inputs, center, scale = self.preprocess(image_bgr, box)
        simcc_x, simcc_y = self.session.run(None, {self.input_name: inputs})[:2]
        locs, scores = simcc_decode(simcc_x[0], simcc_y[0])
        keypoints = locs / np.array(self.input_size) * scale + center - scale / 2
        return keypoints, scores
