"""COCO-WholeBody -> OpenPose layout with visibility masks (spec 5.4)."""
from __future__ import annotations

import json

import numpy as np

from diffsynth.pose import Pose, wholebody_to_pose


def _distinct_keypoints() -> np.ndarray:
    """133 points whose coordinates encode their COCO index: point i is at (i, 1000 + i) pixels."""
    i = np.arange(133, dtype=np.float64)
    return np.stack([i, 1000 + i], 1)


def test_body_is_reordered_to_openpose_with_a_neck_and_toes():
    pose = wholebody_to_pose(_distinct_keypoints(), np.ones(133), width=1, height=1)
    coco_of_openpose = [0, None, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
    for dst, src in enumerate(coco_of_openpose):
        expected = (5.5, 1005.5) if src is None else (src, 1000 + src)  # neck = mean of COCO 5 and 6
        np.testing.assert_allclose(pose.body[dst], expected)
    np.testing.assert_allclose(pose.body[18], (17.5, 1017.5))  # left toe: mean of left big and small toe
    np.testing.assert_allclose(pose.body[19], (20.5, 1020.5))  # right toe: mean of right big and small toe
    np.testing.assert_allclose(pose.hands[0, :, 0], np.arange(91, 112))  # left hand first
    np.testing.assert_allclose(pose.hands[1, :, 0], np.arange(112, 133))
    np.testing.assert_allclose(pose.face[:, 0], np.arange(23, 91))
    assert pose.body_valid.all() and pose.hands_valid.all() and pose.face_valid.all()


def test_coordinates_are_normalised_by_image_size():
    keypoints = np.full((133, 2), (320.0, 120.0))
    pose = wholebody_to_pose(keypoints, np.ones(133), width=640, height=480)
    np.testing.assert_allclose(pose.body[0], (0.5, 0.25))
    np.testing.assert_allclose(pose.hands[1, 3], (0.5, 0.25))


def test_visibility_is_a_mask_from_scores():
    scores = np.ones(133)
    scores[6] = 0.3  # right shoulder: not above the threshold -> invisible, and so is the neck
    scores[18] = 0.1  # left small toe -> left toe invisible
    scores[95] = 0.0  # one left-hand point
    pose = wholebody_to_pose(_distinct_keypoints(), scores, 1, 1)
    assert not pose.body_valid[2] and not pose.body_valid[1]
    assert not pose.body_valid[18] and pose.body_valid[19]
    assert pose.body_valid.sum() == 17
    assert not pose.hands_valid[0, 4] and pose.hands_valid.sum() == 41
    # Coordinates are left alone (no -1 sentinels): the mask alone says what is missing.
    np.testing.assert_allclose(pose.body[2], (6, 1006))


def test_json_round_trip_writes_null_for_invisible_points():
    scores = np.ones(133)
    scores[0] = 0.0
    pose = wholebody_to_pose(_distinct_keypoints() / 2000, scores, 1, 1)
    data = json.loads(json.dumps(pose.to_dict()))
    assert data["body"][0] is None and len(data["body"]) == 20 and len(data["hands"]) == 2
    back = Pose.from_dict(data)
    np.testing.assert_array_equal(back.body_valid, pose.body_valid)
    np.testing.assert_allclose(back.body[pose.body_valid], pose.body[pose.body_valid])
    np.testing.assert_allclose(back.hands, pose.hands)
