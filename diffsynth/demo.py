"""Tiny end-to-end demo on CPU: random-weight models animate a synthetic figure along a synthetic pose clip.

    python -m diffsynth.demo [--out outputs/demo.mp4] [--frames 9] [--height 96] [--width 64] [--steps 4]

Every step is the real UniAnimate data flow (spec section 0), run with tiny untrained models:
prompt -> umT5; reference image -> CLIP tokens and the I2V `y` (mask + VAE latent); reference pose -> added to `y`;
pose video -> pose tokens on the conditional branch; flow-matching Euler with CFG; VAE decode; a side-by-side mp4
[reference | pose | generated]. The generated panel is noise-like: the weights are random.
"""
from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from typing import List

import numpy as np
import torch
from tqdm import tqdm

from .data.video import save_video
from .pose.draw import draw_pose
from .pose.keypoints import Pose
from .schedulers import FlowMatchScheduler
from .tiny import TinyModels, build_tiny_models

logger = logging.getLogger("diffsynth.demo")


# ------------------------------------------------------------------------------------------ synthetic inputs
def stick_figure(phase: float) -> Pose:
    """A standing figure whose arms wave with `phase` (radians); coordinates normalised to the frame."""
    pose = Pose.empty()
    arm = 0.12 * math.sin(phase)
    points = {
        0: (0.50, 0.14), 1: (0.50, 0.26), 2: (0.40, 0.27), 5: (0.60, 0.27),        # nose, neck, shoulders
        3: (0.32, 0.38 - arm), 4: (0.26, 0.48 - 2 * arm),                           # right elbow, wrist
        6: (0.68, 0.38 + arm), 7: (0.74, 0.48 + 2 * arm),                           # left elbow, wrist
        8: (0.44, 0.55), 9: (0.43, 0.72), 10: (0.43, 0.88),                         # right hip, knee, ankle
        11: (0.56, 0.55), 12: (0.57, 0.72), 13: (0.57, 0.88),                       # left hip, knee, ankle
        14: (0.47, 0.12), 15: (0.53, 0.12), 16: (0.44, 0.13), 17: (0.56, 0.13),     # eyes, ears
        18: (0.60, 0.92), 19: (0.40, 0.92),                                         # toes
    }
    for i, (x, y) in points.items():
        pose.body[i] = (x, y)
        pose.body_valid[i] = True
    return pose


def draw_rgb(pose: Pose, height: int, width: int) -> np.ndarray:
    # draw_pose paints in OpenCV's BGR order; flipping gives what PIL reads from the saved pose JPEGs.
    return np.ascontiguousarray(draw_pose(pose, width=width, height=height)[..., ::-1])


def synthetic_reference(height: int, width: int) -> np.ndarray:
    """A smooth background with a figure-like silhouette, uint8 RGB."""
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    image = np.stack([90 + 100 * xx, 120 + 60 * yy, 180 - 80 * xx], axis=-1)
    body = ((xx - 0.5) / 0.13) ** 2 + ((yy - 0.55) / 0.33) ** 2 < 1
    head = ((xx - 0.5) / 0.08) ** 2 + ((yy - 0.15) / 0.07) ** 2 < 1
    image[body | head] = (200, 60, 50)
    return image.astype(np.uint8)


# ------------------------------------------------------------------------------------------------ generation
@torch.no_grad()
def animate(models: TinyModels, reference: np.ndarray, pose_frames: List[np.ndarray], reference_pose: np.ndarray,
            prompt: str, negative_prompt: str = "", steps: int = 4, cfg_scale: float = 1.5, shift: float = 5.0,
            seed: int = 0) -> np.ndarray:
    """Returns the generated frames [F, H, W, 3] uint8. Inputs are uint8 RGB arrays of the same H x W."""
    height, width = reference.shape[:2]
    frames = len(pose_frames)
    to_tensor = lambda a: torch.from_numpy(a).permute(2, 0, 1).float()  # noqa: E731  [3, H, W], 0..255

    # 1. Text context for both CFG branches.
    context = models.prompter.encode_prompt(models.text_encoder, prompt)
    context_neg = models.prompter.encode_prompt(models.text_encoder, negative_prompt)
    # 2. Reference image: CLIP tokens, and y = [mask(4); latent of (image, grey frames...)(16)].
    image = to_tensor(reference)[None] / 127.5 - 1                                   # [1, 3, H, W] in [-1, 1]
    clip_feature = models.image_encoder.encode_image(image)
    video = torch.zeros(1, 3, frames, height, width)
    video[:, :, 0] = image
    latent = models.vae.encode(video, progress=False)                               # [1, 16, T, h, w]
    mask = torch.zeros(1, 4, *latent.shape[2:])
    mask[:, :, 0] = 1
    y = torch.cat([mask, latent], dim=1)
    # 3. Reference pose -> added to y; pose video -> tokens for the conditional branch only.
    y = y + models.pose_guider.embed_reference_pose(to_tensor(reference_pose)[None] / 255)
    pose_video = torch.stack([to_tensor(f) for f in pose_frames], dim=1)[None] / 255   # [1, 3, F, H, W]
    pose_tokens = models.pose_guider.embed_pose_video(pose_video)
    # 4. Flow-matching Euler with classifier-free guidance.
    scheduler = FlowMatchScheduler(shift=shift)
    scheduler.set_timesteps(steps)
    x = torch.randn(latent.shape, generator=torch.Generator("cpu").manual_seed(seed))
    for t in tqdm(scheduler.timesteps, desc="Denoising"):
        timestep = t[None]
        v = models.dit(x, timestep, context, clip_feature=clip_feature, y=y, add_condition=pose_tokens)
        if cfg_scale != 1.0:
            v_neg = models.dit(x, timestep, context_neg, clip_feature=clip_feature, y=y)
            v = v_neg + cfg_scale * (v - v_neg)
        x = scheduler.step(v, t, x)
    # 5. Decode.
    out = models.vae.decode(x, progress=False)[0]                                    # [3, F, H, W] in [-1, 1]
    return ((out.permute(1, 2, 3, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/demo.mp4")
    parser.add_argument("--frames", type=int, default=9, help="4k+1 frames")
    parser.add_argument("--height", type=int, default=96, help="multiple of 16")
    parser.add_argument("--width", type=int, default=64, help="multiple of 16")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--cfg_scale", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a person is dancing")
    args = parser.parse_args(argv)
    if (args.frames - 1) % 4 or args.height % 16 or args.width % 16:
        parser.error("--frames must be 4k+1 and --height/--width multiples of 16")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tokenizer_dir:
        models = build_tiny_models(tokenizer_dir, seed=args.seed)
    poses = [draw_rgb(stick_figure(2 * math.pi * i / max(args.frames - 1, 1)), args.height, args.width)
             for i in range(args.frames)]
    reference = synthetic_reference(args.height, args.width)
    generated = animate(models, reference, poses, poses[0], args.prompt, steps=args.steps,
                        cfg_scale=args.cfg_scale, seed=args.seed)
    panels = [np.concatenate([reference, pose, frame], axis=1) for pose, frame in zip(poses, generated)]
    path = save_video(panels, args.out, fps=15, progress=False)
    logger.info("wrote %s (%d frames, %dx%d, [reference | pose | generated]) in %.1f s",
                path, len(panels), panels[0].shape[1], panels[0].shape[0], time.perf_counter() - start)
    return path


if __name__ == "__main__":
    main()
