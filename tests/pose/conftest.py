"""Fixtures for the pose tests: ONNX stand-ins of the DWPose models (built once per session) and synthetic frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import standins

# The planted person, in 640x640 detector-input pixels, plus decoys the post-processing must drop.
PERSON = ((160.0, 40.0, 400.0, 600.0), 0.9, 0, 0.95)  # score 0.855
DECOYS = [
    ((170.0, 50.0, 410.0, 610.0), 0.8, 0, 0.9),  # same person, lower score: removed by NMS
    ((500.0, 300.0, 600.0, 500.0), 0.9, 2, 0.9),  # a car: not a person
    ((20.0, 300.0, 100.0, 500.0), 0.5, 0, 0.4),  # person scoring 0.2: above the NMS threshold, below 0.3
]
FRAME_W, FRAME_H = 480, 720  # letterbox ratio 640 / 720


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pose_models")


@pytest.fixture(scope="session")
def det_model(model_dir) -> Path:
    return standins.build_detector(model_dir / "yolox_standin.onnx", [PERSON, *DECOYS])


@pytest.fixture(scope="session")
def pose_model(model_dir) -> Path:
    return standins.build_pose_model(model_dir / "simcc_standin.onnx")


@pytest.fixture(scope="session")
def planted_person() -> tuple:
    """(box in 640x640 detector-input pixels, objectness, class, class probability) of the planted person."""
    return PERSON


@pytest.fixture(scope="session")
def person_box() -> np.ndarray:
    """The planted person box in source-frame pixels of a FRAME_W x FRAME_H frame."""
    ratio = min(640 / FRAME_H, 640 / FRAME_W)
    return np.array(PERSON[0]) / ratio


@pytest.fixture(scope="session")
def make_frame(person_box):
    """make_frame(person=True): a dark FRAME_W x FRAME_H BGR frame; with a person, a bright figure inside the
    planted box (which is what makes the stand-in detector fire)."""

    def make(person: bool = True) -> np.ndarray:
        frame = np.full((FRAME_H, FRAME_W, 3), 40, np.uint8)
        if person:
            x1, y1, x2, y2 = person_box.astype(int)
            frame[y1 + 20:y2 - 20, x1 + 40:x2 - 40] = (230, 200, 210)
        return frame

    return make
