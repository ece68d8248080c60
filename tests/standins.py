"""Tiny ONNX stand-ins for the DWPose models, with the real input/output signatures, for tests and benchmarks.

- The detector (`images` [1,3,640,640] -> `output` [1,8400,85]) returns planted YOLOX predictions. Their scores are
  multiplied by a gate that is 1 when some input pixel is brighter than 201 and 0 otherwise, so a dark frame (the
  letterbox padding is 114) has no person and a frame with a bright figure has the planted one.
- The pose model (`input` [1,3,384,288] -> `simcc_x` [1,133,576], `simcc_y` [1,133,768]) returns planted SimCC peaks
  at given crop-space keypoints.

Needs the `onnx` package (a test dependency); imported only when a builder is called.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from diffsynth.pose.keypoints import Pose, wholebody_to_pose

DET_SIZE = 640
DET_STRIDES = (8, 16, 32)
POSE_INPUT_W, POSE_INPUT_H = 288, 384
NUM_WHOLEBODY = 133
SIMCC_SPLIT = 2

# COCO-WholeBody body + feet of a person standing facing the camera, in pose-model crop pixels (288x384).
_BODY_AND_FEET = np.array([
    (144, 60), (152, 52), (136, 52), (162, 58), (126, 58),  # nose, L eye, R eye, L ear, R ear
    (184, 110), (104, 110), (200, 170), (88, 170), (208, 225), (80, 225),  # shoulders, elbows, wrists (L, R)
    (168, 215), (120, 215), (172, 285), (116, 285), (174, 350), (114, 350),  # hips, knees, ankles (L, R)
    (184, 362), (190, 360), (170, 356), (104, 362), (98, 360), (118, 356),  # L big/small toe, heel; R ...
], np.float64)


def _hand(wrist: tuple[float, float], direction: float) -> np.ndarray:
    """21 hand points: the wrist, then 5 fingers of 4 joints fanning out below it."""
    points = [wrist]
    for finger in range(5):
        for joint in range(1, 5):
            points.append((wrist[0] + direction * (finger - 2) * 3, wrist[1] + joint * 4))
    return np.array(points, np.float64)


def wholebody_keypoints() -> np.ndarray:
    """[133, 2] crop-space keypoints of the synthetic person (all on the 0.5-pixel SimCC grid)."""
    angles = np.linspace(0, 2 * math.pi, 68, endpoint=False)
    face = np.round(np.stack([144 + 14 * np.cos(angles), 62 + 18 * np.sin(angles)], 1) * 2) / 2
    return np.concatenate([_BODY_AND_FEET, face, _hand((208, 225), 1.0), _hand((80, 225), -1.0)])


def synthetic_pose(box=(100.0, 50.0, 400.0, 650.0), width: int = 512, height: int = 768,
                   scores: np.ndarray | None = None) -> Pose:
    """The synthetic person as the OpenPose-layout `Pose` it becomes when found in `box` of a width x height image."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    aspect = POSE_INPUT_W / POSE_INPUT_H
    w, h = (w, w / aspect) if w > h * aspect else (h * aspect, h)
    crop = wholebody_keypoints()
    pixels = crop / (POSE_INPUT_W, POSE_INPUT_H) * (w, h) + (cx - w / 2, cy - h / 2)
    scores = np.full(NUM_WHOLEBODY, 0.9) if scores is None else scores
    return wholebody_to_pose(pixels, scores, width, height)


def _save(graph, path: Path) -> Path:
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="diffsynth-standin")
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def detector_outputs(boxes) -> tuple[np.ndarray, np.ndarray]:
    """Planted YOLOX rows for `boxes`, a list of ((x1, y1, x2, y2) in 640x640 input pixels, objectness, class,
    class probability). Returns (regression part, score part), each [1, 8400, 85] float32."""
    offsets, start = {}, 0
    for stride in DET_STRIDES:
        offsets[stride] = start
        start += (DET_SIZE // stride) ** 2
    regression = np.zeros((1, start, 85), np.float32)
    scores = np.zeros((1, start, 85), np.float32)
    used = set()
    for (x1, y1, x2, y2), objectness, cls, cls_prob in boxes:
        cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
        for stride in DET_STRIDES:  # the first stride whose cell under the centre is free
            gx, gy = int(cx // stride), int(cy // stride)
            row = offsets[stride] + gy * (DET_SIZE // stride) + gx
            if row not in used:
                break
        else:
            raise ValueError("too many planted boxes on the same centre")
        used.add(row)
        regression[0, row, :4] = (cx / stride - gx, cy / stride - gy, math.log(w / stride), math.log(h / stride))
        scores[0, row, 4] = objectness
        scores[0, row, 5 + cls] = cls_prob
    return regression, scores


def build_detector(path: str | Path, boxes) -> Path:
    """Write a YOLOX stand-in that outputs the planted `boxes` (see `detector_outputs`) when the input has a pixel
    brighter than 201, and no box at all otherwise."""
    from onnx import TensorProto, helper, numpy_helper

    regression, scores = detector_outputs(boxes)
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["max"], keepdims=0),
        helper.make_node("Sub", ["max", "threshold"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "one"], ["gate"]),
        helper.make_node("Mul", ["scores", "gate"], ["gated"]),
        helper.make_node("Add", ["regression", "gated"], ["output"]),
    ]
    constants = [
        numpy_helper.from_array(regression, "regression"), numpy_helper.from_array(scores, "scores"),
        numpy_helper.from_array(np.array(200.0, np.float32), "threshold"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
    ]
    graph = helper.make_graph(
        nodes, "yolox_standin",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, DET_SIZE, DET_SIZE])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, regression.shape[1], 85])],
        constants,
    )
    return _save(graph, path)


def simcc_outputs(keypoints: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SimCC logits with one peak per keypoint at `keypoints * 2` (crop pixels), of height `scores`."""
    simcc_x = np.zeros((1, NUM_WHOLEBODY, POSE_INPUT_W * SIMCC_SPLIT), np.float32)
    simcc_y = np.zeros((1, NUM_WHOLEBODY, POSE_INPUT_H * SIMCC_SPLIT), np.float32)
    k = np.arange(NUM_WHOLEBODY)
    simcc_x[0, k, np.round(keypoints[:, 0] * SIMCC_SPLIT).astype(int)] = scores
    simcc_y[0, k, np.round(keypoints[:, 1] * SIMCC_SPLIT).astype(int)] = scores
    return simcc_x, simcc_y


def build_pose_model(path: str | Path, keypoints: np.ndarray | None = None, scores: np.ndarray | None = None) -> Path:
    """Write a SimCC stand-in that outputs peaks at `keypoints` ([133, 2] crop pixels, default the synthetic
    person) with heights `scores` (default 0.9). Its outputs ignore the input's values."""
    from onnx import TensorProto, helper, numpy_helper

    keypoints = wholebody_keypoints() if keypoints is None else keypoints
    scores = np.full(NUM_WHOLEBODY, 0.9, np.float32) if scores is None else scores
    simcc_x, simcc_y = simcc_outputs(keypoints, scores)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["mean"], keepdims=0),
        helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
        helper.make_node("Add", ["planted_x", "nothing"], ["simcc_x"]),
        helper.make_node("Add", ["planted_y", "nothing"], ["simcc_y"]),
    ]
    constants = [
        numpy_helper.from_array(simcc_x, "planted_x"), numpy_helper.from_array(simcc_y, "planted_y"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
    ]
    graph = helper.make_graph(
        nodes, "simcc_standin",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, POSE_INPUT_H, POSE_INPUT_W])],
        [helper.make_tensor_value_info("simcc_x", TensorProto.FLOAT, list(simcc_x.shape)),
         helper.make_tensor_value_info("simcc_y", TensorProto.FLOAT, list(simcc_y.shape))],
        constants,
    )
    return _save(graph, path)
