"""YOLOX detector and SimCC pose model on planted ONNX outputs (spec 5.2, 5.3)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import standins
from diffsynth.pose.detect import PersonDetector, letterbox, nms, postprocess
from diffsynth.pose.estimate import MEAN, STD, WholeBodyEstimator, box_to_center_scale, simcc_decode, warp_matrix


# Detector ----------------------------------------------------------------------------------------------------------

def test_detector_decodes_the_planted_person_and_drops_decoys(det_model, make_frame, person_box):
    boxes, scores = PersonDetector(det_model)(make_frame())
    assert boxes.shape == (1, 4)  # NMS duplicate, the car and the 0.2-score person are gone
    np.testing.assert_allclose(boxes[0], person_box, atol=1e-3)
    np.testing.assert_allclose(scores, [0.9 * 0.95], atol=1e-6)


def test_detector_finds_nobody_in_a_dark_frame(det_model, make_frame):
    boxes, scores = PersonDetector(det_model)(make_frame(person=False))
    assert boxes.shape == (0, 4) and scores.shape == (0,)


def test_letterbox_pastes_top_left_on_114_without_normalising():
    image = np.full((720, 480, 3), (10, 20, 30), np.uint8)
    tensor, ratio = letterbox(image, (640, 640))
    assert tensor.shape == (1, 3, 640, 640) and tensor.dtype == np.float32
    assert ratio == pytest.approx(640 / 720)
    new_w = int(480 * ratio)
    np.testing.assert_array_equal(tensor[0, :, 0, 0], [10, 20, 30])  # BGR order kept, raw values
    np.testing.assert_array_equal(tensor[0, :, 0, new_w], [114, 114, 114])
    assert (tensor[0, :, :, new_w:] == 114).all()


def test_postprocess_keeps_two_separate_people_best_first():
    regression, scores = standins.detector_outputs([
        ((10.0, 10.0, 110.0, 310.0), 0.6, 0, 1.0),
        ((300.0, 10.0, 420.0, 330.0), 0.95, 0, 1.0),
    ])
    boxes, box_scores = postprocess(regression + scores, 0.5, (640, 640))
    np.testing.assert_allclose(box_scores, [0.95, 0.6], atol=1e-6)
    np.testing.assert_allclose(boxes, [[600, 20, 840, 660], [20, 20, 220, 620]], atol=1e-3)


def test_nms_uses_the_plus_one_area_convention():
    boxes = np.array([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 4.0]])  # +1 areas: 100 and 50 -> IoU exactly 0.5
    scores = np.array([0.9, 0.8])
    assert nms(boxes, scores, 0.5) == [0, 1]  # kept when IoU <= threshold
    assert nms(boxes, scores, 0.49) == [0]


# Pose model --------------------------------------------------------------------------------------------------------

def test_pose_model_maps_planted_peaks_back_to_the_frame(pose_model, make_frame, person_box):
    estimator = WholeBodyEstimator(pose_model)
    assert estimator.input_size == (288, 384)  # read from the model
    keypoints, scores = estimator(make_frame(), person_box)
    # Expected, from the spec: box * 1.25, widened/heightened to aspect 0.75, crop pixels mapped linearly back.
    x1, y1, x2, y2 = person_box
    w, h = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    w, h = (w, w / 0.75) if w > 0.75 * h else (0.75 * h, h)
    expected = standins.wholebody_keypoints() / (288, 384) * (w, h) + ((x1 + x2 - w) / 2, (y1 + y2 - h) / 2)
    np.testing.assert_allclose(keypoints, expected, atol=1e-6)
    np.testing.assert_allclose(scores, 0.9, atol=1e-6)


def test_box_is_padded_and_fixed_to_the_model_aspect():
    center, scale = box_to_center_scale(np.array([0, 0, 100, 100]), aspect_ratio=0.75)
    np.testing.assert_allclose(center, [50, 50])
    np.testing.assert_allclose(scale, [125, 125 / 0.75])  # widened box is too wide -> heightened
    _, scale = box_to_center_scale(np.array([0, 0, 30, 200]), aspect_ratio=0.75)
    np.testing.assert_allclose(scale, [250 * 0.75, 250])


def test_warp_maps_the_box_onto_the_model_input():
    center, scale = np.array([200.0, 300.0]), np.array([150.0, 200.0])
    matrix = warp_matrix(center, scale, (288, 384))
    corners = np.array([[125.0, 200.0, 1.0], [275.0, 400.0, 1.0]])  # center -+ scale / 2
    np.testing.assert_allclose(corners @ matrix.T, [[0, 0], [288, 384]], atol=1e-3)


def test_preprocess_normalises_the_bgr_frame_in_bgr_order(pose_model):
    estimator = WholeBodyEstimator(pose_model)
    image = np.full((400, 300, 3), (10, 120, 250), np.uint8)  # B, G, R
    tensor, _, _ = estimator.preprocess(image, np.array([50, 50, 250, 350]))
    assert tensor.shape == (1, 3, 384, 288)
    np.testing.assert_allclose(tensor[0, :, 192, 144], (np.array([10, 120, 250]) - MEAN) / STD, rtol=1e-5)


def test_simcc_decode_takes_argmax_over_split_ratio_and_min_score():
    simcc_x = np.zeros((2, 576), np.float32)
    simcc_y = np.zeros((2, 768), np.float32)
    simcc_x[0, 101], simcc_y[0, 300] = 0.8, 0.6
    simcc_x[1, 10], simcc_y[1] = 0.5, -0.2  # non-positive score -> location -1 (then / 2)
    locs, scores = simcc_decode(simcc_x, simcc_y)
    np.testing.assert_allclose(locs[0], [50.5, 150.0])
    np.testing.assert_allclose(scores, [0.6, -0.2], atol=1e-7)
    np.testing.assert_allclose(locs[1], [-0.5, -0.5])


def test_missing_model_file_says_where_to_download(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        PersonDetector(tmp_path / "yolox_l.onnx")
    message = str(error.value)
    assert "yolox_l.onnx" in message
    assert "xiaolaowx/UniAnimate-DiT" in message and "ZheWang123/UniAnimate-DiT" in message


def test_landscape_frame_uses_the_width_ratio(det_model, make_frame, planted_person):
    frame = cv2.resize(make_frame(), (960, 540))
    boxes, _ = PersonDetector(det_model)(frame)
    np.testing.assert_allclose(boxes[0], np.array(planted_person[0]) / (640 / 960), atol=1e-3)


def test_sessions_prefer_cuda_when_offered_and_log_errors_only(monkeypatch, pose_model):
    import onnxruntime

    from diffsynth.pose.onnx_runtime import create_session

    seen = {}

    def fake_session(path, sess_options, providers):
        seen.update(providers=providers, severity=sess_options.log_severity_level)

    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", fake_session)
    create_session(pose_model)
    assert seen == {"providers": ["CUDAExecutionProvider", "CPUExecutionProvider"], "severity": 3}
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    create_session(pose_model)
    assert seen["providers"] == ["CPUExecutionProvider"]
