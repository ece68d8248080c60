"""A phone photo stored sideways (EXIF orientation 6) reaches the pipeline upright, as the pose tool sees it, through
every entry: the animate CLI, the web UI's job function, the example scripts' path and run_align_pose.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.test_image_file import is_upright, save_sideways, upright_photo
from diffsynth.data.image_file import read_image_rgb
from diffsynth.models.wan_image_encoder import WanImageEncoder


@pytest.fixture
def phone_photo(tmp_path):
    photo = upright_photo()
    photo[20:150, 45:75] = (235, 225, 215)     # a bright figure for the stand-in detector, across the quadrants
    return save_sideways(tmp_path / "phone.jpg", photo)


@pytest.fixture
def references(monkeypatch):
    """Every reference image the pipeline encodes (at the CLIP encoder, the boundary all pipelines share), as RGB."""
    seen = []
    original = WanImageEncoder.encode_image

    def encode_image(self, image, *args, **kwargs):
        seen.append(((image[0].permute(1, 2, 0).float() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy())
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(WanImageEncoder, "encode_image", encode_image)
    return seen


def check(references):
    assert references, "the pipeline never encoded a reference"
    for rgb in references:
        assert rgb.shape[0] > rgb.shape[1], f"the reference reached the pipeline as {rgb.shape[1]}x{rgb.shape[0]}"
        assert is_upright(rgb)


def test_animate_cli(tmp_path, phone_photo, driving, pose_models, references):
    from diffsynth.cli import main

    assert main(["animate", "--ref", str(phone_photo), "--driving", str(driving), "--out", str(tmp_path / "o.mp4"),
                 "--models", "tiny", "--resolution", "3072", "--steps", "1", "--det-model", pose_models[0],
                 "--pose-model", pose_models[1], "--no-audio"]) == 0
    check(references)


def test_web_ui_job(tmp_path, phone_photo, driving, pose_models, references, tiny_pipe):
    from diffsynth.app import TINY_RESOLUTION, AppConfig, Jobs, ModelCache, settings_from_controls

    config = AppConfig(models="tiny", outputs=tmp_path / "app", det_model=pose_models[0], pose_model=pose_models[1],
                       resolution=TINY_RESOLUTION, steps=1)
    settings = settings_from_controls(config, resolution=TINY_RESOLUTION, steps=1, cfg=1.0, cache="none",
                                      threshold=0.2, fast=False, seed=0)
    Jobs(config, ModelCache(lambda s: tiny_pipe)).generate(str(phone_photo), str(driving), settings)
    check(references)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_run_align_pose_then_the_example_scripts_path(tmp_path, phone_photo, driving, pose_models, references,
                                                      tiny_pipe, resize):
    import run_align_pose
    from diffsynth.data.pose_folder import REFERENCE_IMAGE_FILE
    from diffsynth.inference import animate_item

    pose_dir = tmp_path / "poses"
    assert run_align_pose.main(["--ref_name", str(phone_photo), "--source_video_paths", str(driving),
                                "--saved_pose_dir", str(pose_dir), "--det_model", pose_models[0], "--pose_model",
                                pose_models[1], "--canvas", "auto", "--resize", resize, "--quiet"]) == 0
    pose_frame = read_image_rgb(next(pose_dir.glob("0000.jpg")))
    assert pose_frame.shape[0] > pose_frame.shape[1]                 # the canvas follows the upright photo
    if resize == "pad":
        assert is_upright(read_image_rgb(pose_dir / REFERENCE_IMAGE_FILE))
    # the example scripts: the reference photo and run_align_pose's folder, as ANIMATE_ITEMS lists them
    reference = pose_dir / REFERENCE_IMAGE_FILE if resize == "pad" else phone_photo
    animate_item(tiny_pipe, str(reference), str(pose_dir), str(tmp_path / "out.mp4"), height=64, width=48,
                 max_frames=5, num_inference_steps=1, cfg_scale=1.0)
    check(references)
