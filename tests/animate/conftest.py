"""Inputs for the animate tests: ONNX stand-ins of the pose models, a landscape photo with a bright figure, short
driving videos (one with an audio track), and the tiny pipeline loaded once per module."""
from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest

from diffsynth.data.video import save_video
import standins

# Planted in 640x640 detector-input pixels: inside the letterbox of a 16:9 photo and of a 3:4 driving frame.
PERSON_BOX = ((40.0, 40.0, 200.0, 300.0), 0.9, 0, 0.95)


@pytest.fixture(scope="session")
def pose_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pose_models")
    return (str(standins.build_detector(folder / "det.onnx", [PERSON_BOX])),
            str(standins.build_pose_model(folder / "pose.onnx")))


def landscape_photo(width: int = 320, height: int = 180, disc_x: float = 11 / 16) -> np.ndarray:
    """BGR: a bright figure (what makes the stand-in detector fire) and a green disc of diameter height / 2 centred
    at `disc_x` of the width."""
    image = np.full((height, width, 3), 60, np.uint8)
    image[height // 9: height * 8 // 9, width // 8: width * 5 // 16] = (230, 210, 200)
    cv2.circle(image, (int(width * disc_x), height // 2), height // 4, (40, 200, 40), -1)
    return image


@pytest.fixture
def photo(tmp_path):
    path = tmp_path / "photo.png"
    cv2.imwrite(str(path), landscape_photo())
    return path


def write_driving(path, frames: int = 7, fps: float = 8):
    clip = []
    for i in range(frames):
        frame = np.full((64, 48, 3), 30, np.uint8)
        frame[5 + i:55, 10:30] = (240, 230, 220)
        clip.append(frame)
    return save_video(clip, path, fps=fps, progress=False)


@pytest.fixture
def driving(tmp_path):
    return write_driving(tmp_path / "dance.mp4")


@pytest.fixture
def driving_with_audio(tmp_path, driving):
    from diffsynth.animate.media import ffmpeg_exe

    out = tmp_path / "dance_audio.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-i", str(driving), "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=2", "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac",
                    "-shortest", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def tiny_pipe():
    from diffsynth.animate.models import load_tiny_pipeline

    pipe = load_tiny_pipeline("cpu")
    pipe.show_summary = False
    return pipe
