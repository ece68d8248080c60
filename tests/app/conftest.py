"""Inputs for the web UI tests: the ONNX pose stand-ins, a photo with a bright figure and a short driving video
(the same synthetic inputs as tests/animate), and an app configuration on the tiny models."""
from __future__ import annotations

import cv2
import pytest

import standins

# Planted in 640x640 detector-input pixels: inside the letterbox of a 16:9 photo and of a 3:4 driving frame.
PERSON_BOX = ((40.0, 40.0, 200.0, 300.0), 0.9, 0, 0.95)


def make_inputs(folder):
    """(photo.png, dance.mp4, det.onnx, pose.onnx) in `folder`, made like tests/animate's."""
    from animate.conftest import landscape_photo, write_driving

    photo = folder / "photo.png"
    cv2.imwrite(str(photo), landscape_photo())
    driving = write_driving(folder / "dance.mp4")
    det = standins.build_detector(folder / "det.onnx", [PERSON_BOX])
    pose = standins.build_pose_model(folder / "pose.onnx")
    return photo, driving, str(det), str(pose)


@pytest.fixture(scope="session")
def app_inputs(tmp_path_factory):
    return make_inputs(tmp_path_factory.mktemp("app_inputs"))


@pytest.fixture
def app_config(tmp_path, app_inputs):
    from diffsynth.app import TINY_RESOLUTION, AppConfig

    return AppConfig(models="tiny", outputs=tmp_path / "outputs" / "app", det_model=app_inputs[2],
                     pose_model=app_inputs[3], resolution=TINY_RESOLUTION, steps=2)


@pytest.fixture(scope="module")
def tiny_app_pipe():
    from diffsynth.animate.models import load_tiny_pipeline

    pipe = load_tiny_pipeline("cpu")
    pipe.show_summary = False
    return pipe
