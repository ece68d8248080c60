"""Drawing: limbs, dimming, joints, hands, and the on-disk BGR colour convention (spec 5.6)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from diffsynth.pose import Pose, draw_pose, write_image
from diffsynth.pose.draw import COLORS, HAND_EDGE_COLORS, _DIM_LUT


def _pose_with(points: dict[int, tuple[float, float]]) -> Pose:
    pose = Pose.empty()
    for i, xy in points.items():
        pose.body[i] = xy
        pose.body_valid[i] = True
    return pose


def test_canvas_is_512x768_black():
    canvas = draw_pose(Pose.empty())
    assert canvas.shape == (768, 512, 3) and canvas.dtype == np.uint8 and not canvas.any()


def test_limb_is_dimmed_and_joints_are_not():
    # Neck (1) -> right shoulder (2): limb 0, colour (255, 0, 0); horizontal so its middle is far from the joints.
    pose = _pose_with({1: (0.2, 0.5), 2: (0.6, 0.5)})
    canvas = draw_pose(pose)
    mid = canvas[384, int(0.4 * 512)]
    np.testing.assert_array_equal(mid, [153, 0, 0])  # 255 * 0.6
    np.testing.assert_array_equal(canvas[384, int(0.2 * 512)], COLORS[1])  # neck joint, colours[1]
    np.testing.assert_array_equal(canvas[384, int(0.6 * 512)], COLORS[2])
    assert canvas[384 + 6, int(0.4 * 512)].sum() == 0  # the ellipse's half-width is 4 pixels


def test_limb_needs_both_ends():
    pose = _pose_with({1: (0.2, 0.5), 2: (0.6, 0.5)})
    pose.body_valid[2] = False
    canvas = draw_pose(pose)
    assert canvas[384, int(0.4 * 512)].sum() == 0 and canvas[384, int(0.2 * 512)].any()


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_colours_on_disk_follow_the_bgr_convention(tmp_path, suffix):
    pose = _pose_with({0: (0.25, 0.25)})  # nose joint, colours[0] = (255, 0, 0)
    pose.hands[1, 0] = (0.75, 0.75)
    pose.hands_valid[1, 0] = True  # one hand joint, colour (0, 0, 255)
    path = tmp_path / f"pose{suffix}"
    write_image(path, draw_pose(pose))
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    tolerance = 0 if suffix == ".png" else 12
    np.testing.assert_allclose(rgb[192, 128], [0, 0, 255], atol=tolerance)  # colours[0] reads back as blue
    np.testing.assert_allclose(rgb[576, 384], [255, 0, 0], atol=tolerance)  # hand joints read back as red


def test_hand_edges_use_hsv_colours_and_skip_invisible_points():
    pose = Pose.empty()
    pose.hands[0, 0], pose.hands[0, 1] = (0.1, 0.5), (0.5, 0.5)
    pose.hands_valid[0, [0, 1]] = True
    canvas = draw_pose(pose)
    np.testing.assert_array_equal(canvas[384, int(0.3 * 512)], np.round(HAND_EDGE_COLORS[0]))  # edge 0: HSV hue 0
    # The upstream scaled and translated -1 sentinels and drew them; an invisible point draws nothing here even if
    # its coordinates are on the canvas.
    pose.hands[0, 2] = (0.5, 0.9)
    pose.hands_valid[0, 2] = False
    np.testing.assert_array_equal(draw_pose(pose), canvas)


def test_face_is_not_drawn():
    pose = Pose.empty()
    pose.face[:] = 0.5
    pose.face_valid[:] = True
    assert not draw_pose(pose).any()


def test_dimming_table_equals_the_upstream_float_multiply():
    values = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(_DIM_LUT, (values * 0.6).astype(np.uint8))
