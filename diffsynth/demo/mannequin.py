"""The synthetic mannequin itself (diffsynth/demo/synthetic.py makes clips of it): its proportions (`Body`), looks
(`Appearance`), joint-angle trajectories (`Motion`), a still second figure (`Bystander`), and the kinematics from
angles to joint positions (`skeleton`) and to OpenPose keypoints (`joints_to_pose`)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..pose.keypoints import Pose

RENDER_HEIGHT, RENDER_WIDTH = 128, 96      # frames and poses are drawn at this size (2x the model's 64x48)
MODEL_HEIGHT, MODEL_WIDTH = 64, 48
CLIP_FRAMES = 24                           # frames per synthetic video
NUM_FRAMES = 9                             # frames the model generates (4k+1)


@dataclass(frozen=True)
class Body:
    """Proportions, in units of the frame height."""

    torso: float          # pelvis -> neck
    neck: float           # neck -> head centre
    head: float           # head radius
    shoulder: float       # half shoulder width
    hip: float            # half hip width
    upper_arm: float
    forearm: float
    thigh: float
    shin: float
    foot: float
    limb: float           # limb thickness (legs; arms are 0.8x)


@dataclass(frozen=True)
class Appearance:
    """Colours (RGB 0..255) and the background."""

    skin: tuple
    hair: tuple
    top: tuple            # torso and upper arms (and forearms when `long_sleeves`)
    bottom: tuple         # legs
    shoes: tuple
    long_sleeves: bool
    background: tuple     # first background colour
    background2: tuple    # second colour (two-tone floor or gradient)
    background_kind: str  # "plain", "floor" or "gradient"
    floor: float          # y of the floor line for "floor" (fraction of the height)


@dataclass(frozen=True)
class Motion:
    """Smooth joint-angle trajectories: each angle is `base + sum_k amp_k * sin(freq_k * t + phase_k)`."""

    params: dict          # name -> (base, amps [K], freqs [K], phases [K]) as tuples
    root_x: float         # pelvis x at t = 0 (fraction of the width)
    root_y: float         # pelvis y (fraction of the height)
    drift: float          # pelvis x velocity per frame (fraction of the width)

    def angles(self, t: float) -> dict:
        return {name: base + sum(a * math.sin(f * t + p) for a, f, p in zip(amps, freqs, phases))
                for name, (base, amps, freqs, phases) in self.params.items()}


@dataclass(frozen=True)
class Bystander:
    """A second figure standing still in the scene, behind the clip's character. The driving poses and the reference
    pose show only the character: in a reference with two people, the reference pose is what says which of them the
    poses animate (the UniAnimate reference-pose path has something to do)."""

    body: Body
    appearance: Appearance   # its clothes and skin; the background is the clip's
    motion: Motion           # its pose is this motion at time `t`, at `motion.root_x` (no drift)
    t: float


# --------------------------------------------------------------------------------------------- kinematics
def _dir(angle: float) -> np.ndarray:
    """Unit vector at `angle` from straight down (image y grows downwards), positive towards image right."""
    return np.array([math.sin(angle), math.cos(angle)])


def skeleton(body: Body, motion: Motion, t: float, width: int, height: int) -> dict:
    """Joint positions in pixels of a (width x height) frame at time t (frames)."""
    a = motion.angles(t)
    h = height
    aspect = width / height
    yaw = a["yaw"]
    cos_yaw, sin_yaw = math.cos(yaw), math.sin(yaw)
    pelvis = np.array([(motion.root_x + motion.drift * t) * width, (motion.root_y + a["bob"]) * h])
    # knees bent in a bob lower the pelvis a little
    up = -_dir(a["lean"])
    neck = pelvis + up * body.torso * h
    side = np.array([1.0, 0.0])
    j = {"pelvis": pelvis, "neck": neck}
    j["r_shoulder"] = neck - side * body.shoulder * h * max(abs(cos_yaw), 0.35)
    j["l_shoulder"] = neck + side * body.shoulder * h * max(abs(cos_yaw), 0.35)
    j["r_hip"] = pelvis - side * body.hip * h * max(abs(cos_yaw), 0.45)
    j["l_hip"] = pelvis + side * body.hip * h * max(abs(cos_yaw), 0.45)
    # arms: the right arm hangs on image left, so "outwards" is negative angle for it
    j["r_elbow"] = j["r_shoulder"] + _dir(-a["r_shoulder"]) * body.upper_arm * h
    j["r_wrist"] = j["r_elbow"] + _dir(-(a["r_shoulder"] + a["r_elbow"])) * body.forearm * h
    j["l_elbow"] = j["l_shoulder"] + _dir(a["l_shoulder"]) * body.upper_arm * h
    j["l_wrist"] = j["l_elbow"] + _dir(a["l_shoulder"] + a["l_elbow"]) * body.forearm * h
    for s in ("r", "l"):
        hip_angle, knee = a[f"{s}_hip"], abs(a[f"{s}_knee"])
        j[f"{s}_knee"] = j[f"{s}_hip"] + _dir(hip_angle) * body.thigh * h
        j[f"{s}_ankle"] = j[f"{s}_knee"] + _dir(hip_angle - knee) * body.shin * h
        toe_dir = np.array([sin_yaw if abs(sin_yaw) > 0.3 else (0.35 if s == "l" else -0.35), 0.25])
        j[f"{s}_toe"] = j[f"{s}_ankle"] + toe_dir / np.linalg.norm(toe_dir) * body.foot * h
    head = neck + up * body.neck * h
    j["head"] = head
    r = body.head * h
    j["nose"] = head + np.array([sin_yaw * r * 0.6, r * 0.15])
    j["r_eye"] = head + np.array([(sin_yaw * 0.6 - 0.35 * cos_yaw) * r, -0.2 * r])
    j["l_eye"] = head + np.array([(sin_yaw * 0.6 + 0.35 * cos_yaw) * r, -0.2 * r])
    j["r_ear"] = head + np.array([(-0.9 * cos_yaw + 0.2 * sin_yaw) * r, 0.0])
    j["l_ear"] = head + np.array([(0.9 * cos_yaw + 0.2 * sin_yaw) * r, 0.0])
    j["_yaw"] = yaw
    j["_aspect"] = aspect
    return j


# OpenPose body index -> joint name (see diffsynth/pose/keypoints.py BODY_NAMES)
_POSE_JOINTS = ("nose", "neck", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist", "r_hip",
                "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle", "r_eye", "l_eye", "r_ear", "l_ear", "l_toe",
                "r_toe")


def joints_to_pose(joints: dict, width: int, height: int) -> Pose:
    """The 20 OpenPose body points (normalised), hiding the ear and eye that turn away from the camera."""
    pose = Pose.empty()
    for i, name in enumerate(_POSE_JOINTS):
        pose.body[i] = joints[name] / np.array([width, height])
        pose.body_valid[i] = True
    yaw = joints["_yaw"]
    if yaw > 0.6:       # facing image right: the right ear/eye are hidden
        pose.body_valid[[14, 16]] = False
    elif yaw < -0.6:
        pose.body_valid[[15, 17]] = False
    return pose
