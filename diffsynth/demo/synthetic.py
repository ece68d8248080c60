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

This module assembles clips and examples; the figure and its kinematics are in `mannequin.py`, its seeded random
draws in `random_draws.py`, the drawing in `drawing.py` (every name stays importable from here).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, List, Optional, Sequence

import cv2
import numpy as np
from PIL import Image

from ..pose.keypoints import Pose
from .drawing import draw_mannequin, draw_pose_rgb
from .mannequin import (CLIP_FRAMES, MODEL_HEIGHT, MODEL_WIDTH, NUM_FRAMES, RENDER_HEIGHT, RENDER_WIDTH, Appearance,
                        Body, Bystander, Motion, joints_to_pose, skeleton)
from .random_draws import crossing_motion, random_appearance, random_body, random_bystander, random_motion


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


__all__ = ["Body", "Appearance", "Motion", "Clip", "Bystander", "random_bystander", "crossing_motion", "Example",
           "make_clip", "make_example", "render", "random_body", "random_appearance", "random_motion", "skeleton",
           "joints_to_pose", "draw_mannequin", "draw_pose_rgb", "write_sample_folder", "write_dataset", "resize_rgb",
           "RENDER_HEIGHT", "RENDER_WIDTH", "MODEL_HEIGHT", "MODEL_WIDTH", "NUM_FRAMES", "CLIP_FRAMES"]
