"""Tiny end-to-end demo on CPU: a small trained model generates a synthetic mannequin clip from a reference + poses.

    python -m diffsynth.demo [--out outputs/demo.mp4] [--example 1] [--frames 9] [--weights demo|random]

Default (`--weights demo`): the shipped demo model (`diffsynth/assets/demo_model/`, trained by this project's own
trainer on synthetic mannequin clips; MODEL_CARD.md there says what it has and has not learned) generates a
held-out clip (a reference frame and poses it never saw in training) at the model's 64x48. `--weights random`: seeded random tiny
models written to disk in the released checkpoint layouts (sharded DiT safetensors, T5/VAE/CLIP .pth, a UniAnimate
.ckpt with a LoRA and the pose guider); their generated panel is noise-like and only shows the mechanics.

Nothing is mocked: the files are read back with `ModelManager` exactly as in the README and run through
`WanUniAnimateVideoPipeline`: prompt -> umT5; reference image -> CLIP tokens and the I2V `y`; reference pose ->
added to `y`; pose video -> pose tokens on the conditional branch; flow-matching Euler (with CFG when
cfg_scale != 1); VAE decode; a side-by-side mp4 [reference | pose | generated].
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from typing import List

import numpy as np
import torch
from PIL import Image

from ..data.pose_folder import comparison_panels
from ..data.video import save_video
from ..loading import ModelManager
from ..pipelines import WanUniAnimateVideoPipeline, load_pose_data
from ..pose.draw import draw_pose
from ..pose.keypoints import Pose
from ..tiny import TINY_CLIP, TINY_T5, TinyCheckpoints, build_tiny_models, save_tiny_checkpoints

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
    """The pose drawn on black, as RGB uint8 (what PIL reads back from the saved pose images)."""
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
def run_readme_flow(checkpoints: TinyCheckpoints, reference: np.ndarray, pose_frames: List[np.ndarray],
                    reference_pose: np.ndarray, prompt: str, steps: int, cfg_scale: float, seed: int,
                    torch_dtype: torch.dtype = torch.float32, tiled: bool = True) -> List[Image.Image]:
    """The README's loading code, verbatim but for the tiny configs and the CPU, then the one generate step every
    front door uses (`animate.generate.generate_frames`; `tiled=False`: one VAE pass, as the demo model was
    evaluated)."""
    from tqdm import tqdm  # noqa: PLC0415

    from ..animate.generate import generate_frames  # noqa: PLC0415
    from ..pipelines import GenerationRequest  # noqa: PLC0415

    model_manager = ModelManager(device="cpu", progress=False)
    model_manager.load_models([checkpoints.image_encoder], torch_dtype=torch.float32, config=TINY_CLIP)
    model_manager.load_models([checkpoints.dit_shards, checkpoints.text_encoder, checkpoints.vae],
                              torch_dtype=torch_dtype, config=TINY_T5)   # VAE width: from its shapes
    model_manager.load_lora_v2(checkpoints.unianimate, lora_alpha=1.0)
    pipe = WanUniAnimateVideoPipeline.from_model_manager(model_manager, torch_dtype=torch_dtype, device="cpu")
    height, width = reference.shape[:2]
    dwpose_data, random_ref_dwpose = load_pose_data([Image.fromarray(p) for p in pose_frames],
                                                    Image.fromarray(reference_pose), height, width)
    request = GenerationRequest(prompt=prompt, cfg_scale=cfg_scale, num_inference_steps=steps, seed=seed,
                                tiled=tiled, tile_size=(4, 4), tile_stride=(2, 2))
    return generate_frames(pipe, reference, dwpose_data, random_ref_dwpose, request, progress_bar_cmd=tqdm)


def _upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    return frame.repeat(scale, 0).repeat(scale, 1) if scale > 1 else frame


def main(argv=None) -> str:
    """Run the demo; returns the path of the written mp4."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="outputs/demo.mp4")
    parser.add_argument("--weights", choices=("demo", "random"), default="demo",
                        help="demo: the shipped model trained on synthetic mannequins (default); random: seeded "
                             "random tiny models (shows the mechanics only)")
    parser.add_argument("--example", type=int, default=1,
                        help="which held-out synthetic clip to animate (demo weights; seed HELD_OUT_SEED + N; "
                             "the default one travels across the frame, so the motion shows)")
    parser.add_argument("--frames", type=int, default=9, help="4k+1 frames (demo weights: at most 21)")
    parser.add_argument("--height", type=int, help="multiple of 16 (default: 64 for demo weights, 96 for random)")
    parser.add_argument("--width", type=int, help="multiple of 16 (default: 48 for demo weights, 64 for random)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 10 for demo weights, 4 for random)")
    parser.add_argument("--cfg_scale", type=float, help="guidance (default: 1.0 for demo weights, 1.5 for random)")
    parser.add_argument("--scale", type=int, help="upscale the panels (nearest) this many times in the mp4 "
                                                  "(default: 4 for demo weights, 1 for random)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompt", default="a person is dancing")
    args = parser.parse_args(argv)
    trained = args.weights == "demo"
    defaults = dict(height=64, width=48, steps=10, cfg_scale=1.0, scale=4) if trained else \
        dict(height=96, width=64, steps=4, cfg_scale=1.5, scale=1)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if (args.frames - 1) % 4 or args.height % 16 or args.width % 16:
        parser.error("--frames must be 4k+1 and --height/--width multiples of 16")
    if trained and not 1 <= args.frames <= 21:
        parser.error("--frames: the synthetic clips have 24 frames, so at most 21 (4k+1) with the demo weights")
    if args.scale < 1:
        parser.error("--scale must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        if trained:
            from .model import HELD_OUT_SEED, demo_checkpoints  # noqa: PLC0415
            from .synthetic import make_example  # noqa: PLC0415

            example = make_example(HELD_OUT_SEED + args.example, num_frames=args.frames, height=args.height,
                                   width=args.width)
            reference, poses, reference_pose = example.reference, example.poses, example.reference_pose
            checkpoints = demo_checkpoints()
        else:
            poses = [draw_rgb(stick_figure(2 * math.pi * i / max(args.frames - 1, 1)), args.height, args.width)
                     for i in range(args.frames)]
            reference, reference_pose = synthetic_reference(args.height, args.width), poses[0]
            models = build_tiny_models(os.path.join(folder, "tokenizer"), seed=args.seed)
            checkpoints = save_tiny_checkpoints(models, os.path.join(folder, "checkpoints"), seed=args.seed)
            del models   # everything below reads the files back through the real loaders
        generated = run_readme_flow(checkpoints, reference, poses, reference_pose, args.prompt, args.steps,
                                    args.cfg_scale, args.seed, tiled=not trained)
    dwpose_data, _ = load_pose_data([Image.fromarray(p) for p in poses], Image.fromarray(reference_pose), args.height,
                                    args.width)
    panels = [_upscale(p, args.scale) for p in comparison_panels(reference, dwpose_data, generated)]
    path = save_video(panels, args.out, fps=8 if trained else 15, progress=False, overwrite=True)
    logger.info("wrote %s (%d frames, %dx%d, [reference | pose | generated], %s weights) in %.1f s",
                path, len(panels), panels[0].shape[1], panels[0].shape[0], args.weights, time.perf_counter() - start)
    return path


if __name__ == "__main__":
    main()
