"""run_align_pose's canvas and reference framing: poses stay on the person, pixel for pixel, whatever the photo's
shape. A marker-finding backend stands in for DWPose: it reports each coloured marker's centre as a body point, so
where the skeleton is drawn can be compared with where the marker is in the prepared reference image."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import run_align_pose
from diffsynth.pose import extract
from diffsynth.pose.draw import COLORS
from diffsynth.pose.keypoints import FramePose, Pose

# body index -> marker colour (BGR), placed like a person in a 300x150 landscape photo
MARKERS = {0: ((0, 0, 255), (150, 22)), 1: ((0, 255, 0), (150, 50)), 2: ((255, 0, 0), (108, 56)),
           5: ((0, 255, 255), (192, 56)), 8: ((255, 0, 255), (126, 122)), 11: ((255, 255, 0), (174, 122))}
CANVAS = (192, 320)       # portrait: the landscape photo must be padded (or cropped), not squeezed
pytestmark = pytest.mark.filterwarnings("ignore::diffsynth.pose.PoseAlignmentWarning")   # no knees: ratio-1 bones


class MarkerBackend:
    name = "markers"

    def estimate_image(self, image_bgr):
        pose = Pose.empty()
        height, width = image_bgr.shape[:2]
        for index, (colour, _) in MARKERS.items():
            ys, xs = np.nonzero((np.abs(image_bgr.astype(int) - colour) < 60).all(axis=2))
            if len(xs):
                pose.body[index] = ((xs.mean() + 0.5) / width, (ys.mean() + 0.5) / height)
                pose.body_valid[index] = True
        return FramePose(pose if pose.has_person else None)

    def new_sequence(self):
        backend = self

        class Tracker:
            def __call__(self, frame):
                return backend.estimate_image(frame)

            def close(self):
                pass
        return Tracker()


def photo(shift=(0, 0)) -> np.ndarray:
    image = np.full((150, 300, 3), 90, np.uint8)
    for colour, (x, y) in MARKERS.values():
        cv2.circle(image, (x + shift[0], y + shift[1]), 5, colour, -1)
    return image


def centres(image_bgr: np.ndarray, colours, tolerance: int = 60) -> np.ndarray:
    """The centre (pixel-edge coordinates) of the pixels close to each colour."""
    out = []
    for colour in colours:
        ys, xs = np.nonzero((np.abs(image_bgr.astype(int) - colour) < tolerance).all(axis=2))
        assert len(xs), f"colour {colour} not found"
        out.append((xs.mean() + 0.5, ys.mean() + 0.5))
    return np.array(out)


@pytest.fixture
def inputs(tmp_path, monkeypatch):
    monkeypatch.setattr(extract, "create_backend", lambda *args, **kwargs: MarkerBackend())
    cv2.imwrite(str(tmp_path / "photo.png"), photo())
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in range(2):
        cv2.imwrite(str(frames / f"{i}.png"), cv2.resize(photo(shift=(4 * i, 0)), (200, 100)))
    return tmp_path / "photo.png", frames


@pytest.mark.parametrize("mode", ["pad", "crop", "stretch"])
def test_the_reference_pose_lands_on_the_person(tmp_path, inputs, mode):
    reference, frames = inputs
    out = tmp_path / "poses"
    assert run_align_pose.main(["--ref_name", str(reference), "--source_video_paths", str(frames), "--saved_pose_dir",
                                str(out), "--canvas", "x".join(map(str, CANVAS)), "--resize", mode, "--quiet"]) == 0
    pose_image = cv2.imread(str(out / "pose.jpg"))
    assert pose_image.shape[1::-1] == CANVAS
    prepared_file = out / "reference.png"
    assert prepared_file.exists() == (mode != "stretch")
    prepared = cv2.imread(str(prepared_file if mode != "stretch" else reference))
    if mode != "stretch":   # the same shape as the canvas: nothing is squeezed on the way to the pipeline
        assert prepared.shape[1] / prepared.shape[0] == pytest.approx(CANVAS[0] / CANVAS[1], abs=0.01)
    # What the pipeline sees: the prepared reference and the pose images, both resized to one size.
    seen = cv2.resize(prepared, CANVAS, interpolation=cv2.INTER_AREA)
    markers = centres(seen, [colour for colour, _ in MARKERS.values()])
    joints = centres(pose_image, [COLORS[index] for index in MARKERS], tolerance=40)
    np.testing.assert_allclose(joints, markers, atol=1.5)
    document = json.loads((out / "poses.json").read_text())
    assert document["canvas"] == list(CANVAS) and document["reference"]["framing"]["mode"] == mode


def test_pad_keeps_the_persons_proportions(tmp_path, inputs):
    """Shoulder width over torso height on the canvas equals the photo's (stretch changes it)."""
    reference, frames = inputs
    ratios = {}
    for mode in ("pad", "stretch"):
        out = tmp_path / mode
        extract.run_align_pose(reference, frames, out, canvas=CANVAS, resize=mode, progress=False)
        joints = centres(cv2.imread(str(out / "pose.jpg")), [COLORS[i] for i in (2, 5, 8)], tolerance=40)
        ratios[mode] = (joints[1, 0] - joints[0, 0]) / (joints[2, 1] - joints[0, 1])
    photo_ratio = (MARKERS[5][1][0] - MARKERS[2][1][0]) / (MARKERS[8][1][1] - MARKERS[2][1][1])
    assert ratios["pad"] == pytest.approx(photo_ratio, rel=0.05)
    assert ratios["stretch"] < 0.5 * photo_ratio


def test_canvas_auto_follows_the_photo_and_the_default_stays_upstream(tmp_path, inputs):
    reference, frames = inputs
    extract.run_align_pose(reference, frames, tmp_path / "auto", canvas="auto", resize="pad", progress=False)
    height, width = cv2.imread(str(tmp_path / "auto" / "0000.jpg")).shape[:2]
    assert width > height and width % 16 == 0 and height % 16 == 0
    assert width / height == pytest.approx(2.0, rel=0.05)
    extract.run_align_pose(reference, frames, tmp_path / "default", progress=False)
    assert cv2.imread(str(tmp_path / "default" / "0000.jpg")).shape[:2] == (768, 512)
    assert not (tmp_path / "default" / "reference.png").exists()


def test_bad_canvas_is_one_line(tmp_path, inputs, capsys):
    reference, frames = inputs
    assert run_align_pose.main(["--ref_name", str(reference), "--source_video_paths", str(frames),
                                "--saved_pose_dir", str(tmp_path / "p"), "--canvas", "wide", "--quiet"]) == 1
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
