"""Pose extraction (DWPose ONNX or offline MediaPipe), alignment to a reference person, and drawing (spec 5).

Light to import: no torch; onnxruntime and mediapipe are imported only when a backend is created.
"""
from .backends import BACKENDS, DWPoseBackend, FramePose, create_backend, select_person
from .draw import CANVAS_HEIGHT, CANVAS_WIDTH, draw_pose, write_image
from .extract import AlignSummary, SmoothingOptions, redraw_from_json, run_align_pose
from .keypoints import BODY_NAMES, Pose, wholebody_to_pose
from .retarget import BONES, PoseAlignmentWarning, Retargeting, align_poses, apply_retargeting, fit_retargeting
from .smoothing import OneEuroFilter, smooth_poses

__all__ = [
    "BACKENDS", "BODY_NAMES", "BONES", "CANVAS_HEIGHT", "CANVAS_WIDTH", "AlignSummary", "DWPoseBackend", "FramePose",
    "OneEuroFilter", "Pose", "PoseAlignmentWarning", "Retargeting", "SmoothingOptions", "align_poses",
    "apply_retargeting", "create_backend", "draw_pose", "fit_retargeting", "redraw_from_json", "run_align_pose",
    "select_person", "smooth_poses", "wholebody_to_pose", "write_image",
]
