"""The shipped demo model at run time: its configurations, held-out seeds and inference settings, its loader
(`from_pretrained`, the release's path) and `generate` through the front doors' generate step.

    from diffsynth.demo.model import load_demo_pipeline, generate
    pipe = load_demo_pipeline()                         # shipped weights, through the release's loaders
    frames = generate(pipe, example)                    # example = diffsynth.demo.synthetic.make_example(seed)

How it was trained, and its evaluation: tools/demo_model/ (not installed with the package).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..configs import PoseGuiderConfig, WanDiTConfig
from ..loading.release import DEMO_FILES, DEMO_FOLDER, DEMO_HEIGHT, DEMO_INFERENCE, DEMO_WIDTH
from ..tiny import TINY_CLIP, TINY_T5, TINY_VAE


logger = logging.getLogger("diffsynth.demo")


ASSET_DIR = DEMO_FOLDER


DEMO_DIT = WanDiTConfig(model_type="i2v", in_dim=36, dim=192, ffn_dim=384, num_heads=6, num_layers=4,
                        text_dim=TINY_T5.dim, image_dim=TINY_CLIP.dim)


# Half the released guider width (16): the full-resolution Conv3d layers are most of a CPU training step
# (288 ms of about 350 at 16 channels, 91 ms at 8), and 8 channels are plenty for drawn stick figures.
DEMO_POSE = PoseGuiderConfig(hidden_dim=8, out_dim=DEMO_DIT.dim)


DEMO_VAE = TINY_VAE


CONFIGS = [TINY_T5, DEMO_VAE, TINY_CLIP]


HEIGHT, WIDTH, NUM_FRAMES = DEMO_HEIGHT, DEMO_WIDTH, 9


HELD_OUT_SEED = 100_000          # synthetic seeds from here on are never used in training


# Every BYSTANDER_EVERY-th training clip has a second, still figure behind the moving one: only the reference pose
# says which of the reference's two figures the driving poses animate (synthetic.Bystander).
BYSTANDER_EVERY = 2


PROMPT = "a person is dancing"   # the trainer's default caption


FILES = DEMO_FILES   # the release layouts (loading/release.py)


# Default inference settings of the demo (what the tests and the strip use).
INFERENCE = dict(DEMO_INFERENCE, seed=0)


def model_files(folder=ASSET_DIR) -> Dict[str, object]:
    """Paths of the demo model's files in `folder` (the release layouts, all safetensors)."""
    folder = Path(folder)
    return {k: [str(folder / n) for n in v] if isinstance(v, list) else str(folder / v) for k, v in FILES.items()}


def demo_checkpoints(folder=ASSET_DIR):
    """The demo model's files as `diffsynth.tiny.TinyCheckpoints` (what `python -m diffsynth.demo` and
    `python -m diffsynth animate --models tiny` load through the README's ModelManager flow)."""
    from ..loading.release import demo_files  # noqa: PLC0415
    from ..tiny import TinyCheckpoints  # noqa: PLC0415

    files = demo_files(folder)   # names missing files
    return TinyCheckpoints(dit_shards=files.dit, text_encoder=files.text_encoder, vae=files.vae,
                           image_encoder=files.image_encoder, unianimate=files.unianimate)


def load_demo_pipeline(device: str = "cpu", folder=ASSET_DIR, torch_dtype: torch.dtype = torch.float32):
    """The shipped demo model as a `WanUniAnimateVideoPipeline`, read exactly like the released models
    (`from_pretrained`: the release table's loaders, the UniAnimate LoRA + pose guider merged with its stored
    network_alpha; its CLIP's configuration is written beside it)."""
    from ..pipelines import WanUniAnimateVideoPipeline  # noqa: PLC0415

    pipe = WanUniAnimateVideoPipeline.from_pretrained(folder, torch_dtype=torch_dtype, device=device, progress=False)
    pipe.show_summary = False
    return pipe


def generate(pipe, example, reference: Optional[np.ndarray] = None, reference_pose: Optional[np.ndarray] = None,
             poses: Optional[Sequence[np.ndarray]] = None, **overrides) -> List[np.ndarray]:
    """Generate the frames of a `synthetic.Example` (or with another reference / poses) as uint8 RGB arrays, through
    the front doors' generate step (`animate.generate.generate_frames`)."""
    from PIL import Image  # noqa: PLC0415

    from ..animate.generate import generate_frames  # noqa: PLC0415
    from ..pipelines import GenerationRequest, load_pose_data  # noqa: PLC0415

    reference = example.reference if reference is None else reference
    reference_pose = example.reference_pose if reference_pose is None else reference_pose
    poses = example.poses if poses is None else poses
    height, width = reference.shape[:2]
    dwpose_data, random_ref_dwpose = load_pose_data([Image.fromarray(p) for p in poses],
                                                    Image.fromarray(reference_pose), height, width)
    request = GenerationRequest(prompt=PROMPT, tiled=False, **{**INFERENCE, **overrides})
    frames = generate_frames(pipe, reference, dwpose_data, random_ref_dwpose, request)
    return [np.asarray(f) for f in frames]
