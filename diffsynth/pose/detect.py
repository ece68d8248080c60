"""Person detector: YOLOX-L exported to ONNX, as used by DWPose (spec 5.2)."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from .onnx_runtime import DEFAULT_DET_MODEL, create_session

STRIDES = (8, 16, 32)
PAD_VALUE = 114
PERSON_CLASS = 0


def letterbox(image_bgr: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Resize keeping the aspect ratio and paste at the top-left of a canvas filled with 114.

    Returns the [1, 3, H, W] float32 input (BGR, not normalised) and the resize ratio r.
    """
    h, w = image_bgr.shape[:2]
    size_h, size_w = size
    r = min(size_h / h, size_w / w)
    canvas = np.full((size_h, size_w, 3), PAD_VALUE, np.uint8)
    resized = cv2.resize(image_bgr, (int(w * r), int(h * r)), interpolation=cv2.INTER_LINEAR)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], np.float32), r


@lru_cache(maxsize=4)
def _grid(size: tuple[int, int], strides: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Cell offsets [N, 2] and strides [N, 1] of the YOLOX output rows, stride 8 cells first."""
    grids, expanded = [], []
    for stride in strides:
        hs, ws = size[0] // stride, size[1] // stride
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        expanded.append(np.full((hs * ws, 1), stride))
    return np.concatenate(grids).astype(np.float64), np.concatenate(expanded).astype(np.float64)


def decode_grid(outputs: np.ndarray, size: tuple[int, int], strides=STRIDES) -> np.ndarray:
    """YOLOX grid decoding of [N, 4 + 1 + C] predictions into (cx, cy, w, h, obj, cls...) in input pixels."""
    grid, stride = _grid(tuple(size), tuple(strides))
    decoded = outputs.astype(np.float64)  # a copy
    decoded[:, :2] = (decoded[:, :2] + grid) * stride
    decoded[:, 2:4] = np.exp(decoded[:, 2:4]) * stride
    return decoded


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy NMS by descending score; areas use the "+1 pixel" convention of the upstream code."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = scores.argsort()[::-1]
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
        iou = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(iou <= iou_threshold)[0] + 1]
    return keep


def postprocess(
    outputs: np.ndarray, ratio: float, size: tuple[int, int],
    nms_iou: float = 0.45, nms_score: float = 0.1, person_score: float = 0.3,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw [1, N, 85] output -> person boxes [K, 4] (xyxy, source pixels) and scores [K], best first.

    Upstream runs class-aware NMS over all 80 classes and then keeps class 0; NMS of one class never affects
    another, so running it on the person class alone gives the same boxes.
    """
    pred = decode_grid(outputs[0, :, : 5 + PERSON_CLASS + 1], size)  # only the person class is needed
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1) / ratio
    scores = pred[:, 4] * pred[:, 5 + PERSON_CLASS]
    candidates = scores > nms_score
    boxes, scores = boxes[candidates], scores[candidates]
    if len(scores) == 0:
        return np.zeros((0, 4)), np.zeros(0)
    keep = nms(boxes, scores, nms_iou)
    boxes, scores = boxes[keep], scores[keep]
    persons = scores > person_score
    return boxes[persons], scores[persons]


class PersonDetector:
    """YOLOX person detector on BGR frames.

    Args:
        model_path: the YOLOX ONNX file (default `checkpoints/yolox_l.onnx`).
        providers: onnxruntime providers; default CUDA if available, else CPU.
    """

    def __init__(self, model_path: str | Path = DEFAULT_DET_MODEL, providers: list[str] | None = None):
        self.session = create_session(model_path, providers)
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        h, w = model_input.shape[2:4]
        self.input_size = (h, w) if isinstance(h, int) and isinstance(w, int) else (640, 640)

    def __call__(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Returns person boxes [K, 4] (x1, y1, x2, y2 in pixels) and their scores [K], best first."""
        inputs, ratio = letterbox(image_bgr, self.input_size)
        outputs = self.session.run(None, {self.input_name: inputs})[0]
        return postprocess(outputs, ratio, self.input_size)
