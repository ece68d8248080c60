"""Alignment: global scale, bone-by-bone retargeting and neck translation (spec 5.5)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from diffsynth.pose import BONES, PoseAlignmentWarning, align_poses, apply_retargeting, fit_retargeting
from standins import synthetic_pose


def _reference():
    pose = synthetic_pose(box=(60.0, 80.0, 330.0, 700.0))
    # Give the reference its own proportions: longer arms and legs, a bigger head.
    pose.body[[3, 4]] += (-0.02, 0.03)
    pose.body[[6, 7]] += (0.02, 0.03)
    pose.body[[10, 13]] += (0.0, 0.04)
    pose.body[[14, 15, 16, 17]] *= (1.0, 0.98)
    return pose


def _driving(n=4, seed=0):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        pose = synthetic_pose(box=(150.0, 40.0, 360.0, 620.0), width=640, height=720)
        pose.body += rng.normal(0, 0.01, pose.body.shape)
        pose.hands += rng.normal(0, 0.003, pose.hands.shape)
        frames.append(pose)
    return frames


def _length(pose, bone):
    return np.linalg.norm(pose.body[bone.child] - pose.body[bone.parent])


def _quiet_fit(reference, frame):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a fully visible pair needs no fallback
        return fit_retargeting(reference, frame)


def test_frame0_takes_the_reference_bone_lengths_and_neck():
    reference, frames = _reference(), _driving()
    retargeting = _quiet_fit(reference, frames[0])
    aligned = apply_retargeting(frames[0], retargeting)
    for bone in BONES:
        assert _length(aligned, bone) == pytest.approx(_length(reference, bone), rel=1e-9), bone.name
    np.testing.assert_allclose(aligned.body[1], reference.body[1], atol=1e-12)


def test_other_frames_keep_frame0_ratios_on_their_own_bones():
    reference, frames = _reference(), _driving()
    aligned, retargeting = align_poses(reference, frames)
    for raw, out in zip(frames[1:], aligned[1:]):
        scaled = raw.copy()
        scaled.body *= retargeting.scale
        for bone, ratio in zip(BONES, retargeting.bone_ratios):
            assert _length(out, bone) == pytest.approx(ratio * _length(scaled, bone), rel=1e-9), bone.name
        # Hips are not retargeted: they are only scaled and translated.
        np.testing.assert_allclose(out.body[[8, 11]], scaled.body[[8, 11]] + retargeting.offset, atol=1e-12)


def test_matches_a_literal_transcription_of_the_upstream_steps():
    """Spec 5.5 applied in place, step by step, on a fully visible pose."""
    reference, frames = _reference(), _driving()
    aligned, _ = align_poses(reference, frames)
    R = reference.body
    P = frames[0].body.copy()
    hands = frames[0].hands.copy()
    sx = (R[5, 0] - R[2, 0]) / (P[5, 0] - P[2, 0])
    sy = ((R[8, 1] + R[11, 1]) / 2 - (R[2, 1] + R[5, 1]) / 2) / ((P[8, 1] + P[11, 1]) / 2 - (P[2, 1] + P[5, 1]) / 2)
    P *= (sx, sy)
    hands *= (sx, sy)
    table = [(1, 0, [0, 14, 15, 16, 17], None), (1, 2, [2, 3, 4], 1), (1, 5, [5, 6, 7], 0), (2, 3, [3, 4], 1),
             (3, 4, [4], 1), (5, 6, [6, 7], 0), (6, 7, [7], 0), (0, 14, [14, 16], None), (0, 15, [15, 17], None),
             (14, 16, [16], None), (15, 17, [17], None), (8, 9, [9, 10, 19], None), (9, 10, [10, 19], None),
             (11, 12, [12, 13, 18], None), (12, 13, [13, 18], None)]
    for p, c, moved, hand in table:
        k = np.linalg.norm(R[c] - R[p]) / np.linalg.norm(P[c] - P[p])
        d = (P[p] - P[c]) * (1 - k)
        P[moved] += d
        if hand is not None:
            hands[hand] += d
    offset = R[1] - P[1]
    np.testing.assert_allclose(aligned[0].body, P + offset, atol=1e-12)
    np.testing.assert_allclose(aligned[0].hands, hands + offset, atol=1e-12)


def test_hands_follow_their_wrists():
    reference, frames = _reference(), _driving()
    aligned, retargeting = align_poses(reference, frames)
    for raw, out in zip(frames, aligned):
        for hand, wrist in ((0, 7), (1, 4)):
            raw_offset = raw.hands[hand] * retargeting.scale - raw.body[wrist] * retargeting.scale
            np.testing.assert_allclose(out.hands[hand] - out.body[wrist], raw_offset, atol=1e-12)


def test_missing_reference_limb_falls_back_to_ratio_one_with_a_warning():
    reference, frames = _reference(), _driving()
    reference.body_valid[[6, 7]] = False  # the reference's left forearm is not visible
    with pytest.warns(PoseAlignmentWarning, match="left_elbow"):
        aligned, retargeting = align_poses(reference, frames)
    ratios = dict(zip([b.name for b in BONES], retargeting.bone_ratios))
    assert ratios["left_upper_arm"] == 1.0 and ratios["left_forearm"] == 1.0
    assert ratios["right_forearm"] != 1.0
    assert all(np.isfinite(p.body).all() and np.isfinite(p.hands).all() for p in aligned)


def test_zero_shoulder_width_uses_the_other_axis():
    reference, frames = _reference(), _driving()
    frames[0].body[5, 0] = frames[0].body[2, 0]  # shoulders on top of each other: width 0
    with pytest.warns(PoseAlignmentWarning, match="shoulder width"):
        retargeting = fit_retargeting(reference, frames[0])
    assert retargeting.scale[0] == retargeting.scale[1] and np.isfinite(retargeting.scale).all()


def test_missing_shoulders_and_hips_give_unit_scale_and_no_nan():
    reference, frames = _reference(), _driving()
    frames[0].body_valid[[1, 2, 5, 8, 11]] = False
    with pytest.warns(PoseAlignmentWarning) as record:
        aligned, retargeting = align_poses(reference, frames)
    np.testing.assert_array_equal(retargeting.scale, [1.0, 1.0])
    assert any("neck missing" in str(w.message) for w in record)  # offset from the common points instead
    assert np.isfinite(retargeting.offset).all() and np.isfinite(aligned[1].body).all()


def test_zero_length_bone_keeps_ratio_one():
    reference, frames = _reference(), _driving()
    frames[0].body[16] = frames[0].body[14]  # right eye and ear coincide in frame 0
    with pytest.warns(PoseAlignmentWarning, match="right_eye_ear has zero length"):
        retargeting = fit_retargeting(reference, frames[0])
    assert retargeting.bone_ratios[[b.name for b in BONES].index("right_eye_ear")] == 1.0


def test_shoulder_ratio_is_unsigned():
    reference, frames = _reference(), _driving()
    mirrored = frames[0].copy()
    mirrored.body[[2, 5]] = mirrored.body[[5, 2]]  # driving person seen from the back: shoulders swapped
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        retargeting = fit_retargeting(reference, mirrored)
    assert retargeting.scale[0] > 0


def test_bone_with_an_invisible_end_in_a_later_frame_is_skipped():
    reference, frames = _reference(), _driving()
    frames[2].body_valid[3] = False  # right elbow lost in frame 2
    aligned, retargeting = align_poses(reference, frames)
    assert np.isfinite(aligned[2].body).all()
    # The forearm bone (3 -> 4) cannot be measured, so the wrist only gets the scale and the shoulder bone.
    wrist_bone = [b.name for b in BONES].index("right_shoulder")
    scaled = frames[2].body * retargeting.scale
    expected = scaled[4] + (scaled[2] - scaled[1]) * (retargeting.bone_ratios[wrist_bone] - 1) + retargeting.offset
    np.testing.assert_allclose(aligned[2].body[4], expected, atol=1e-12)
