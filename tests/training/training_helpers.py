"""Shared by the training tests: sample folders whose frames encode their index, tiny checkpoints, and a
command line for tiny runs."""
from __future__ import annotations

import io
import json
import pickle
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from diffsynth.configs import ClipVisionConfig
from diffsynth.tiny import TINY_CLIP, TINY_DIT, TINY_T5, TINY_VAE, build_tiny_models, save_tiny_checkpoints

H, W, F = 32, 32, 5
CONFIGS = [TINY_T5, TINY_VAE, TINY_CLIP]
# A CLIP tower whose config the loader reads from the file alone: width 80 is one ViT-H/14 head (the standard tiny
# CLIP is 32 wide, so its head count is not in the weights and needs a config).
STRUCTURAL_CLIP = ClipVisionConfig(image_size=28, patch_size=14, dim=80, mlp_dim=64, num_heads=1, num_layers=2,
                                   out_dim=16, use_layers=1)


# ------------------------------------------------------------------------------------------------ sample data
def frame_value(i: int) -> int:
    return 20 + 10 * i


def pose_value(i: int) -> int:
    return 235 - 10 * i


def _jpeg(value: int, size=(36, 52)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (value, value, value)).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def write_sample(folder: Path, count: int, size=(36, 52), text=None, shade: int = 0) -> Path:
    """A sample folder in the prepare_training_data.py format (docs/training_data.md); frame i is a flat grey
    `frame_value(i)`, its pose `pose_value(i)`, so selections can be read back from pixel values. `shade` (< 5)
    lightens the frames and darkens the poses, to tell folders apart."""
    names = [f"{i:06d}.jpg" for i in range(count)]
    for sub, value in (("frames", lambda i: frame_value(i) + shade), ("poses", lambda i: pose_value(i) - shade)):
        (folder / sub).mkdir(parents=True)
        for i, name in enumerate(names):
            (folder / sub / name).write_bytes(_jpeg(value(i), size))
    meta = {"format": "diffsynth.training_sample/1", "width": size[0], "height": size[1], "num_frames": count,
            "files": names}
    if text:
        meta["text"] = text
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


def write_legacy_sample(folder: Path, count: int) -> Path:
    folder.mkdir(parents=True)
    frames = {f"{i:06d}.jpg": _jpeg(frame_value(i)) for i in range(count)}
    poses = {f"{i:06d}.jpg": _jpeg(pose_value(i)) for i in range(count)}
    (folder / "frame_data.pkl").write_bytes(pickle.dumps(frames))
    (folder / "dw_pose_with_foot_wo_face.pkl").write_bytes(pickle.dumps(poses))
    return folder


def decode(values: torch.Tensor, base) -> int:
    """Frame index from a flat grey image's mean value."""
    return int(round((float(values.float().mean()) - base(0)) / (base(1) - base(0))))


def save_structural_checkpoints(folder: Path):
    """Tiny checkpoints in the release layout (`save_tiny_checkpoints`) that load with no config at all: the DiT
    has its config.json, the T5 and VAE shapes say everything, and the CLIP is `STRUCTURAL_CLIP`."""
    models = build_tiny_models(str(folder / "tok"), seed=1)
    torch.manual_seed(2)
    from diffsynth.models.wan_dit import WanModel
    from diffsynth.models.wan_image_encoder import WanImageEncoder

    models.dit = WanModel(replace(TINY_DIT, image_dim=STRUCTURAL_CLIP.dim)).eval().requires_grad_(False)
    models.image_encoder = WanImageEncoder(STRUCTURAL_CLIP).eval().requires_grad_(False)
    return save_tiny_checkpoints(models, str(folder / "ckpt"))


def tiny_argv(dataset, output, ckpt, *extra, frames=F, size=H, steps=None):
    """Command line of a tiny CPU run: shards only (the encoders are found beside them), no tiling, 0 workers."""
    argv = ["--dataset_path", str(dataset), "--output_path", str(output), "--dit_path", ",".join(ckpt.dit_shards),
            "--num_frames", str(frames), "--height", str(size), "--width", str(size), "--no-tiled",
            "--dataloader_num_workers", "0", "--precision", "32-true", "--seed", "0"]
    if steps is not None:
        argv += ["--max_steps", str(steps), "--max_epochs", "100"]
    return argv + [str(a) for a in extra]
