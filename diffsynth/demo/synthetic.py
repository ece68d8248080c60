"""Seeded synthetic "mannequin" clips: the training and test data of the demo model (diffsynth/demo/model.py, trained by tools/demo_model).

A clip is one character (body proportions + appearance) moving along a smooth random joint-angle trajectory
(a walk, arm waves, turns, a squat bob, mixed with random amplitudes), mostly travelling across the frame, drawn as
filled limbs over a plain, two-tone or gradient background. For every frame the generator gives the ground-truth image, the OpenPose keypoints
(`diffsynth.pose.keypoints.Pose`) and the pose image drawn by this project's own `draw_pose`, so the poses look like
the ones `run_align_pose.py` / `prepare_training_data.py` make. A clip can have a bystander: a second figure standing
still behind the moving one and absent from the poses, so in its reference image only the reference pose says which
of the two people the driving poses animate.

    clip = make_clip(seed=3)                        # 24 frames at 128x96 (render size), RGB uint8
    clip.frames[i], clip.pose_images[i]             # [H, W, 3] uint8, RGB (pose images as PIL reads them back)
    example = make_example(seed=3)                  # clip frames 0..8 + a reference frame (another pose) at 64x48
    swapped = render(clip.body, clip.motion, other_appearance)   # the same motion worn by another character
    pair = make_clip(seed=3, bystander=True)       # the character crosses the frame past a second, still figure

Everything is a pure function of the seed (numpy `default_rng`), and fast: a 24-frame clip takes about 30 ms.
`write_sample_folder` writes a clip in the `prepare_training_data.py` sample-folder format (docs/training_data.md).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Collection, List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from ..pose.draw import draw_pose
from ..pose.keypoints import Pose

RENDER_HEIGHT, RENDER_WIDTH = 128, 96      # frames and poses are drawn at this size (2x the model's 64x48)
MODEL_HEIGHT, MODEL_WIDTH = 64, 48
CLIP_FRAMES = 24                           # frames per synthetic video
NUM_FRAMES = 9                             # frames the model generates (4k+1)
_SUPERSAMPLE = 2                           # the mannequin is drawn at 2x the render size, then area-downscaled


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


@dataclass
class Clip:
    """One synthetic video at the render size: frames and pose images are RGB uint8 [H, W, 3]."""

    seed: int
    body: Body
    appearance: Appearance
    motion: Motion
    frames: List[np.ndarray]
    poses: List[Pose]
    pose_images: List[np.ndarray]   # draw_pose output as PIL reads the saved JPEG back (channel-reversed)
    masks: List[np.ndarray]         # [H, W] bool: the figure's pixels
    bystander: Optional["Bystander"] = None


@dataclass(frozen=True)
class Bystander:
    """A second figure standing still in the scene, behind the clip's character. The driving poses and the reference
    pose show only the character: in a reference with two people, the reference pose is what says which of them the
    poses animate (the UniAnimate reference-pose path has something to do)."""

    body: Body
    appearance: Appearance   # its clothes and skin; the background is the clip's
    motion: Motion           # its pose is this motion at time `t`, at `motion.root_x` (no drift)
    t: float


# --------------------------------------------------------------------------------------------- random draws
def _color(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple:
    return tuple(int(v) for v in rng.integers(low, high, size=3))


def _far_color(rng: np.random.Generator, avoid: Sequence[tuple], min_dist: float = 90.0) -> tuple:
    """A colour at least `min_dist` (RGB distance) from every colour in `avoid` (best of 20 tries)."""
    best, best_d = None, -1.0
    for _ in range(20):
        c = _color(rng)
        d = min((float(np.linalg.norm(np.subtract(c, a))) for a in avoid), default=1e9)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def random_body(rng: np.random.Generator) -> Body:
    s = rng.uniform(0.85, 1.1)    # overall size
    return Body(torso=0.25 * s * rng.uniform(0.9, 1.1), neck=0.07 * s, head=0.06 * s * rng.uniform(0.9, 1.15),
                shoulder=0.085 * s * rng.uniform(0.85, 1.2), hip=0.055 * s * rng.uniform(0.85, 1.2),
                upper_arm=0.13 * s * rng.uniform(0.9, 1.1), forearm=0.12 * s * rng.uniform(0.9, 1.1),
                thigh=0.17 * s * rng.uniform(0.9, 1.1), shin=0.16 * s * rng.uniform(0.9, 1.1), foot=0.045 * s,
                limb=0.05 * s * rng.uniform(0.8, 1.25))


def random_appearance(rng: np.random.Generator) -> Appearance:
    skins = ((255, 219, 172), (241, 194, 125), (224, 172, 105), (198, 134, 66), (141, 85, 36), (92, 58, 32))
    skin = tuple(int(np.clip(v + rng.integers(-15, 16), 0, 255)) for v in skins[rng.integers(len(skins))])
    hair = _color(rng, 0, 140) if rng.random() < 0.7 else _color(rng)
    background = _color(rng)
    top = _far_color(rng, [background, skin])
    bottom = _far_color(rng, [background, top], 70.0)
    kind = ("plain", "floor", "gradient")[rng.integers(3)]
    background2 = tuple(int(np.clip(c + rng.integers(-70, 71), 0, 255)) for c in background)
    return Appearance(skin=skin, hair=hair, top=top, bottom=bottom, shoes=_color(rng, 0, 90),
                      long_sleeves=bool(rng.random() < 0.5), background=background, background2=background2,
                      background_kind=kind, floor=float(rng.uniform(0.7, 0.85)))


def random_motion(rng: np.random.Generator, body: Body) -> Motion:
    """A mix of a walk, arm waves, a turn and a bob, with random amplitudes, speeds and phases."""
    walk = rng.uniform(0, 1) ** 0.7
    wave_r, wave_l = (rng.uniform(0, 1) if rng.random() < 0.6 else 0.0 for _ in range(2))
    turn = rng.uniform(0, 0.9) if rng.random() < 0.5 else 0.0
    bob = rng.uniform(0, 0.06) if rng.random() < 0.4 else 0.0
    w = rng.uniform(0.25, 0.55)           # walking angular speed (rad / frame)
    wv = rng.uniform(0.3, 0.7)            # waving speed
    ph = rng.uniform(0, 2 * math.pi)

    def p(base, *terms):
        terms = [t for t in terms if t[0] != 0.0]
        return (float(base), tuple(float(t[0]) for t in terms), tuple(float(t[1]) for t in terms),
                tuple(float(t[2]) for t in terms))

    def jitter(scale):
        return rng.uniform(-scale, scale), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * math.pi)
    raise_r = rng.uniform(0.2, 2.4) * wave_r
    raise_l = rng.uniform(0.2, 2.4) * wave_l
    params = {
        # arms: angle from hanging straight down, positive = outwards/upwards; elbow bend positive = forearm up
        "r_shoulder": p(0.15 + raise_r, (0.35 * walk, w, ph + math.pi), (0.6 * wave_r, wv, ph), jitter(0.15)),
        "r_elbow": p(0.2 + 0.4 * wave_r, (0.2 * walk, w, ph), (0.7 * wave_r, wv * 2, ph + 1), jitter(0.2)),
        "l_shoulder": p(0.15 + raise_l, (0.35 * walk, w, ph), (0.6 * wave_l, wv, ph + 2), jitter(0.15)),
        "l_elbow": p(0.2 + 0.4 * wave_l, (0.2 * walk, w, ph + math.pi), (0.7 * wave_l, wv * 2, ph + 3), jitter(0.2)),
        # legs: thigh angle from straight down (positive = towards image right), knee bend (>= 0)
        "r_hip": p(-0.05, (0.45 * walk, w, ph), jitter(0.08)),
        "r_knee": p(0.1 + 2 * bob, (0.35 * walk, w, ph - 1.2), jitter(0.05)),
        "l_hip": p(0.05, (0.45 * walk, w, ph + math.pi), jitter(0.08)),
        "l_knee": p(0.1 + 2 * bob, (0.35 * walk, w, ph + math.pi - 1.2), jitter(0.05)),
        "lean": p(0.0, (0.05 * walk, 2 * w, ph), jitter(0.1)),
        "yaw": p(rng.uniform(-0.3, 0.3), (turn, rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi))),
        "bob": p(0.0, (bob, 2 * wv, ph)),
    }
    # Most characters travel across the frame (a walk or a slide), so a frame's figure is often far from where it
    # is in the reference frame: only the driving poses say where to draw it (the demo model must follow them).
    start = float(rng.uniform(0.25, 0.75))
    travel = 0.0
    if rng.random() < 0.8:
        distance = float(rng.uniform(0.15, 0.45))
        room_right, room_left = 0.8 - start, start - 0.2
        direction = 1.0 if rng.random() < 0.5 else -1.0
        if (room_right if direction > 0 else room_left) < distance:   # turn round if it would leave the frame
            direction = -direction
        travel = direction * min(distance, room_right if direction > 0 else room_left)
    return Motion(params=params, root_x=start, root_y=float(rng.uniform(0.48, 0.58)),
                  drift=travel / (CLIP_FRAMES - 1))


def random_bystander(rng: np.random.Generator, character: Appearance, mover: Motion) -> Bystander:
    """A figure with its own body and clothes, coloured far from the character's clothes (so wearing the wrong
    figure's colours is a clear error), standing still where the mover passes at a random moment: its place has the
    distribution of the mover's place in a reference frame (any frame), so where a figure stands in the reference
    does not say which one moves (see `crossing_motion`)."""
    body = random_body(rng)
    own = random_appearance(rng)
    top = _far_color(rng, [character.background, character.top, character.bottom, own.skin])
    bottom = _far_color(rng, [character.background, top, character.top, character.bottom], 70.0)
    x = mover.root_x + mover.drift * float(rng.uniform(0, CLIP_FRAMES - 1))
    motion = replace(random_motion(rng, body), root_x=x, drift=0.0)
    return Bystander(body=body, appearance=replace(own, top=top, bottom=bottom), motion=motion,
                     t=float(rng.uniform(0, 50)))


def crossing_motion(rng: np.random.Generator, motion: Motion) -> Motion:
    """`motion` walking across the whole frame (0.6-0.7 of the width, either way), past the bystander.

    Why: the model sees 16-pixel tokens (3 across at 48 pixels), and a reference frame is any frame of the clip.
    Crossing the frame, the mover is often at one side in the reference while the driving poses are at the other,
    and the bystander, standing somewhere on that path, is nearer to them, in a token of its own: there nearness
    points at the wrong figure and only the reference pose points at the right one (about a fifth of the draws,
    against 4% on the shorter paths of one-figure clips)."""
    span = float(rng.uniform(0.6, 0.7))
    direction = 1.0 if rng.random() < 0.5 else -1.0
    start = 0.5 - direction * span / 2 + float(rng.uniform(-0.03, 0.03))
    return replace(motion, root_x=start, drift=direction * span / (CLIP_FRAMES - 1))


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


# --------------------------------------------------------------------------------------------- drawing
def _background(app: Appearance, width: int, height: int) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = app.background
    if app.background_kind == "floor":
        image[int(app.floor * height):] = app.background2
        return image
    if app.background_kind == "gradient":
        ramp = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
        image = np.asarray(app.background, np.float32) * (1 - ramp) + np.asarray(app.background2, np.float32) * ramp
        image = np.broadcast_to(np.round(image), (height, width, 3)).astype(np.uint8)
    return image


def _limb(canvas: np.ndarray, a, b, thickness: float, color, scale: float) -> None:
    pa = tuple(int(round(v * scale)) for v in a)
    pb = tuple(int(round(v * scale)) for v in b)
    t = max(int(round(thickness * scale)), 1)
    cv2.line(canvas, pa, pb, color, thickness=t, lineType=cv2.LINE_8)
    cv2.circle(canvas, pa, t // 2, color, -1)
    cv2.circle(canvas, pb, t // 2, color, -1)


def draw_mannequin(joints: dict, body: Body, app: Appearance, width: int, height: int, behind: Sequence = ()
                   ) -> tuple:
    """(RGB uint8 frame, bool mask) of the figure over its background, antialiased by 2x supersampling.
    `behind`: (joints, body, appearance) of other figures drawn first (not in the mask)."""
    s = _SUPERSAMPLE
    W, H = width * s, height * s
    fg = cv2.resize(_background(app, width, height), (W, H), interpolation=cv2.INTER_NEAREST)
    alpha = np.zeros((H, W), np.uint8)
    for other in behind:
        _paint(fg, None, *other, height)
    _paint(fg, alpha, joints, body, app, height)
    frame = cv2.resize(fg, (width, height), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(alpha, (width, height), interpolation=cv2.INTER_AREA) > 64
    return frame, mask


def _paint(fg: np.ndarray, alpha: Optional[np.ndarray], joints: dict, body: Body, app: Appearance, height: int
           ) -> None:
    """Draw one figure onto the supersampled canvas `fg` (and 255 into `alpha` where it covers, unless None)."""
    s = _SUPERSAMPLE
    limb = body.limb * height
    arm = 0.8 * limb
    yaw = joints["_yaw"]
    # the arm on the side turned away from the camera is drawn first (behind the torso)
    arm_order = ("l", "r") if yaw < 0 else ("r", "l")
    parts = []

    def arm_parts(side):
        sleeve = app.top if app.long_sleeves else app.skin
        return [("limb", joints[f"{side}_shoulder"], joints[f"{side}_elbow"], arm, app.top),
                ("limb", joints[f"{side}_elbow"], joints[f"{side}_wrist"], arm * 0.9, sleeve),
                ("disc", joints[f"{side}_wrist"], arm * 0.6, app.skin)]

    parts += arm_parts(arm_order[0])
    for side in ("r", "l"):
        parts += [("limb", joints[f"{side}_hip"], joints[f"{side}_knee"], limb, app.bottom),
                  ("limb", joints[f"{side}_knee"], joints[f"{side}_ankle"], limb * 0.9, app.bottom),
                  ("limb", joints[f"{side}_ankle"], joints[f"{side}_toe"], limb * 0.7, app.shoes)]
    parts.append(("poly", [joints["r_shoulder"], joints["l_shoulder"], joints["l_hip"] + [limb * 0.3, 0],
                           joints["r_hip"] - [limb * 0.3, 0]], app.top))
    parts.append(("limb", joints["r_shoulder"], joints["l_shoulder"], arm, app.top))
    parts.append(("limb", joints["r_hip"], joints["l_hip"], limb, app.bottom))
    parts.append(("limb", joints["neck"], joints["head"], limb * 0.6, app.skin))
    parts.append(("disc", joints["head"], body.head * height, app.skin))
    parts.append(("hair", joints["head"], body.head * height, app.hair))
    parts += arm_parts(arm_order[1])

    for part in parts:
        for target, color in ((fg, part[-1]), (alpha, 255))[:1 if alpha is None else 2]:
            color = tuple(int(c) for c in color) if isinstance(color, tuple) else color
            kind = part[0]
            if kind == "limb":
                _limb(target, part[1], part[2], part[3], color, s)
            elif kind == "disc":
                cv2.circle(target, tuple(int(round(v * s)) for v in part[1]), max(int(round(part[2] * s)), 1),
                           color, -1)
            elif kind == "poly":
                pts = np.round(np.array(part[1]) * s).astype(np.int32)
                cv2.fillConvexPoly(target, pts, color)
            elif kind == "hair":     # the upper part of the head, shifted away from the face
                c = joints["head"] + np.array([-math.sin(yaw) * part[2] * 0.25, -part[2] * 0.25])
                cv2.ellipse(target, tuple(int(round(v * s)) for v in c),
                            (max(int(part[2] * s * 1.05), 1), max(int(part[2] * s * 0.8), 1)), 0, 180, 360, color, -1)


def draw_pose_rgb(pose: Pose, width: int, height: int) -> np.ndarray:
    """The pose image as PIL reads it back from a JPEG written by `draw.write_image` (draw_pose paints in OpenCV's
    BGR order, so the channels are reversed), which is what training and inference consume."""
    return np.ascontiguousarray(draw_pose(pose, width=width, height=height)[..., ::-1])


# --------------------------------------------------------------------------------------------- clips
def render(body: Body, motion: Motion, appearance: Appearance, times: Sequence[float], width: int = RENDER_WIDTH,
           height: int = RENDER_HEIGHT, seed: int = -1, bystander: Optional[Bystander] = None) -> Clip:
    """Draw `body` moving along `motion` at `times` (frame numbers) with `appearance` (and `bystander` standing
    behind it; the poses are the moving figure's alone)."""
    frames, poses, pose_images, masks = [], [], [], []
    behind = [] if bystander is None else [
        (skeleton(bystander.body, bystander.motion, bystander.t, width, height), bystander.body,
         bystander.appearance)]
    for t in times:
        joints = skeleton(body, motion, float(t), width, height)
        frame, mask = draw_mannequin(joints, body, appearance, width, height, behind)
        pose = joints_to_pose(joints, width, height)
        frames.append(frame)
        masks.append(mask)
        poses.append(pose)
        pose_images.append(draw_pose_rgb(pose, width, height))
    return Clip(seed, body, appearance, motion, frames, poses, pose_images, masks, bystander)


def make_clip(seed: int, num_frames: int = CLIP_FRAMES, width: int = RENDER_WIDTH, height: int = RENDER_HEIGHT,
              bystander: bool = False) -> Clip:
    """Clip `seed`: a random character and motion, frames 0 .. num_frames-1. With `bystander`, the same character
    walks across the whole frame (`crossing_motion`) past a second figure standing still on its path, behind it
    (both drawn from a stream of their own: body, clothes and the rest of the motion are the clip's without it)."""
    rng = np.random.default_rng([seed, 20250613])
    body = random_body(rng)
    appearance = random_appearance(rng)
    motion = random_motion(rng, body)
    other = None
    if bystander:
        extra = np.random.default_rng([seed, 20250613, 1])
        motion = crossing_motion(extra, motion)
        other = random_bystander(extra, appearance, motion)
    return render(body, motion, appearance, range(num_frames), width, height, seed, other)


def resize_rgb(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL bilinear resize (what the training dataset applies to the stored frames and poses)."""
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR), dtype=np.uint8).copy()


@dataclass
class Example:
    """One evaluation example at the model size: the reference (image + pose), the driving poses and the truth."""

    reference: np.ndarray          # [h, w, 3] uint8
    reference_pose: np.ndarray     # [h, w, 3] uint8
    poses: List[np.ndarray]        # F x [h, w, 3] uint8
    frames: List[np.ndarray]       # F x [h, w, 3] uint8, the ground truth
    masks: List[np.ndarray]        # F x [h, w] bool, the figure in the ground truth
    clip: Clip                     # the source clip (render size)
    reference_index: int


def make_example(seed: int, num_frames: int = NUM_FRAMES, height: int = MODEL_HEIGHT, width: int = MODEL_WIDTH,
                 appearance_seed: Optional[int] = None, bystander: bool = False) -> Example:
    """Frames 0..num_frames-1 of clip `seed` as the target; the reference is a later frame of the same clip
    (another pose). With `appearance_seed`, the character of clip `appearance_seed` (colours and background) wears
    this clip's body and motion: the truth for a generation from that clip's reference. `bystander`: the clip with
    a second, still figure (`make_clip`); `masks` are the moving figure's."""
    clip = make_clip(seed, bystander=bystander)
    if appearance_seed is not None:
        other = make_clip(appearance_seed, num_frames=1)
        clip = render(clip.body, clip.motion, other.appearance, range(CLIP_FRAMES), seed=seed,
                      bystander=clip.bystander)
    ref_index = CLIP_FRAMES - 1 - (seed % 6)
    size = lambda img: resize_rgb(img, height, width)  # noqa: E731
    masks = [cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_AREA) > 0
             for m in clip.masks[:num_frames]]
    return Example(reference=size(clip.frames[ref_index]), reference_pose=size(clip.pose_images[ref_index]),
                   poses=[size(p) for p in clip.pose_images[:num_frames]],
                   frames=[size(f) for f in clip.frames[:num_frames]], masks=masks, clip=clip,
                   reference_index=ref_index)


def write_sample_folder(clip: Clip, folder, text: Optional[str] = None) -> Path:
    """Write `clip` as a training sample folder (frames/, poses/, meta.json; the prepare_training_data.py format,
    docs/training_data.md), both kinds of image written with OpenCV as JPEG quality 95."""
    from ..pose.draw import write_image  # noqa: PLC0415

    folder = Path(folder)
    (folder / "frames").mkdir(parents=True, exist_ok=True)
    (folder / "poses").mkdir(parents=True, exist_ok=True)
    names = [f"{i:06d}.jpg" for i in range(len(clip.frames))]
    for name, frame, pose in zip(names, clip.frames, clip.pose_images):
        write_image(folder / "frames" / name, frame[..., ::-1])   # RGB -> BGR for OpenCV
        write_image(folder / "poses" / name, pose[..., ::-1])     # back to draw_pose's own channel order
    height, width = clip.frames[0].shape[:2]
    source = f"diffsynth.demo.synthetic seed {clip.seed}" + (" with a bystander" if clip.bystander else "")
    meta = {"format": "diffsynth.training_sample/1", "source": source,
            "source_size": [width, height], "width": width, "height": height, "fps": 15.0,
            "num_frames": len(names), "files": names, "backend": "synthetic",
            "pose_drawing": "body+feet, no hands, no face, at frame size, no alignment; written with OpenCV (BGR)",
            "frames_without_person": [], "pose_held_from": {}}
    if text:
        meta["text"] = text
    (folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    return folder


def write_dataset(folder, seeds: Sequence[int], bystander_seeds: Collection[int] = ()) -> Path:
    """One sample folder per seed under `folder` (named clip_<seed>); the clips of `bystander_seeds` have a second,
    still figure (`make_clip(seed, bystander=True)`)."""
    folder = Path(folder)
    for seed in seeds:
        write_sample_folder(make_clip(seed, bystander=seed in bystander_seeds), folder / f"clip_{seed:05d}")
    return folder


__all__ = ["Body", "Appearance", "Motion", "Clip", "Bystander", "random_bystander", "crossing_motion", "Example", "make_clip", "make_example", "render",
           "random_body", "random_appearance", "random_motion", "skeleton", "joints_to_pose", "draw_mannequin",
           "draw_pose_rgb", "write_sample_folder", "write_dataset", "resize_rgb", "RENDER_HEIGHT", "RENDER_WIDTH",
           "MODEL_HEIGHT", "MODEL_WIDTH", "NUM_FRAMES", "CLIP_FRAMES"]
