"""The offline MediaPipe backend.

The mapping tests are pure numpy and run everywhere. The `mediapipe`-marked tests need mediapipe==0.10.21, which
lives in its own venv (docs/pose.md):
    .venv-mediapipe/bin/python -m pytest tests/pose --confcutdir=tests/pose
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from diffsynth.pose import PoseAlignmentWarning
from diffsynth.pose.mediapipe_backend import holistic_to_pose

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None


def _mediapipe_pose():
    xy = np.zeros((33, 2))
    xy[11], xy[12] = (0.6, 0.3), (0.4, 0.3)  # left shoulder (image right), right shoulder
    xy[15], xy[16] = (0.7, 0.5), (0.3, 0.5)  # left wrist, right wrist
    xy[31], xy[32] = (0.55, 0.95), (0.45, 0.95)  # foot index points
    visibility = np.full(33, 0.9)
    visibility[[0, 2, 5, 7, 8]] = 0.2  # face turned away
    return xy, visibility


def _hand_at(wrist):
    return np.asarray(wrist) + np.linspace(0, 0.05, 21)[:, None]


def test_layout_neck_toes_and_visibility():
    xy, visibility = _mediapipe_pose()
    pose = holistic_to_pose(xy, visibility, [])
    np.testing.assert_allclose(pose.body[1], (0.5, 0.3))  # neck = mean of the shoulders
    np.testing.assert_allclose(pose.body[2], xy[12])  # OpenPose 2 = right shoulder
    np.testing.assert_allclose(pose.body[5], xy[11])
    np.testing.assert_allclose(pose.body[18], xy[31])  # left toe = left foot index
    np.testing.assert_allclose(pose.body[19], xy[32])
    assert not pose.body_valid[[0, 14, 15, 16, 17]].any() and pose.body_valid[[1, 2, 5, 18, 19]].all()
    assert not pose.hands_valid.any()


def test_hands_go_to_the_nearer_wrist_whatever_their_order():
    xy, visibility = _mediapipe_pose()
    near_right, near_left = _hand_at((0.31, 0.52)), _hand_at((0.69, 0.51))
    for hands in ([near_right, near_left], [near_left, near_right]):
        pose = holistic_to_pose(xy, visibility, hands)
        np.testing.assert_allclose(pose.hands[0], near_left)  # slot 0 = left hand
        np.testing.assert_allclose(pose.hands[1], near_right)
        assert pose.hands_valid.all()
    pose = holistic_to_pose(xy, visibility, [near_right])
    assert pose.hands_valid[1].all() and not pose.hands_valid[0].any()


@pytest.mark.skipif(HAS_MEDIAPIPE, reason="mediapipe is installed")
def test_missing_mediapipe_names_the_extra():
    from diffsynth.pose import create_backend

    with pytest.raises(ImportError, match="requirements/pose-offline.txt"):
        create_backend("mediapipe")


@pytest.mark.mediapipe
def test_holistic_on_the_astronaut_photo():
    pytest.importorskip("mediapipe")
    from skimage import data

    from diffsynth.pose import create_backend

    rgb = data.astronaut()  # public-domain NASA portrait, upper body
    height, width = rgb.shape[:2]
    backend = create_backend("mediapipe")
    result = backend.estimate_image(np.ascontiguousarray(rgb[:, :, ::-1]))
    pose = result.pose
    assert pose is not None and pose.body.shape == (20, 2) and pose.hands.shape == (2, 21, 2)
    body, ok = pose.body, pose.body_valid
    assert ok[[0, 1, 2, 5, 14, 15]].all()  # nose, neck, shoulders and eyes are in the picture
    assert body[0, 1] < body[1, 1]  # nose above the neck
    assert body[2, 0] < body[1, 0] < body[5, 0]  # facing the camera: right shoulder on the image left
    assert body[14, 0] < body[0, 0] < body[15, 0]  # right eye, nose, left eye from left to right
    assert abs(body[1, 0] - 0.5) < 0.3 and 0.2 < body[1, 1] < 0.8
    assert not ok[[10, 13, 18, 19]].any()  # ankles and toes are out of the frame
    assert result.box is not None and 0 <= result.box[0] < result.box[2] <= width * 1.5


@pytest.mark.mediapipe
def test_mediapipe_backend_end_to_end(tmp_path):
    pytest.importorskip("mediapipe")
    import cv2
    from skimage import data

    import run_align_pose

    bgr = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    cv2.imwrite(str(tmp_path / "ref.png"), bgr)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, dx in enumerate((0, 8, 16)):
        cv2.imwrite(str(frames / f"{i:03d}.png"), np.roll(bgr, dx, axis=1))
    out = tmp_path / "out"
    with pytest.warns(PoseAlignmentWarning, match="left_knee"):  # the photo ends above the knees
        rc = run_align_pose.main(["--ref_name", str(tmp_path / "ref.png"), "--source_video_paths", str(frames),
                                  "--saved_pose_dir", str(out), "--backend", "mediapipe", "--quiet"])
    assert rc == 0
    assert sorted(p.name for p in out.iterdir()) == [".run_align_pose.json", "0000.jpg", "0001.jpg", "0002.jpg", "pose.jpg",
                                                   "poses.json"]
