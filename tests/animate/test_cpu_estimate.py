"""Before a CPU run of the released model, animate says how long a denoising step will take (FLOPs per step over
this CPU's measured bf16 matrix-product rate)."""
from __future__ import annotations

import re

import torch

from diffsynth.animate import AnimateSettings, Animator
from diffsynth.animate import cpu_estimate
from diffsynth.animate.cpu_estimate import cpu_estimate_line, matmul_rate, step_flops
from diffsynth.configs import WanDiTConfig
from diffsynth.models.dit_flops import dit_forward_flops
from diffsynth.pipelines.windows import WindowSettings


def test_step_flops_counts_branches_and_windows():
    one = dit_forward_flops(WanDiTConfig(), 21, 104, 60)
    assert step_flops(81, 832, 480, cfg_scale=1.0) == one
    assert step_flops(81, 832, 480, cfg_scale=1.5) == 2 * one
    # 149 frames: 38 latent frames in two windows of 21 (upstream's long schedule)
    assert step_flops(149, 832, 480, cfg_scale=1.0, windows=WindowSettings(21, 4)) == 2 * one


def test_the_line_states_per_step_and_total_time():
    line = cpu_estimate_line(81, 832, 480, steps=50, cfg_scale=1.5, rate=1e12)
    per_step = 2 * dit_forward_flops(WanDiTConfig(), 21, 104, 60) / 1e12        # 3373 s
    assert f"about {per_step / 60:.0f} min per denoising step" in line and "50 steps: about 46.8 h" in line
    assert "--models tiny" in line


def test_matmul_rate_is_a_plausible_cpu_rate():
    rate = matmul_rate(torch.float32, size=256, seconds=0.05)
    assert 1e8 < rate < 1e14


def test_animate_says_it_before_loading_a_real_model_on_the_cpu(tmp_path, tiny_pipe, pose_models, photo, driving,
                                                               monkeypatch):
    import diffsynth.animate.models as models

    monkeypatch.setattr(cpu_estimate, "matmul_rate", lambda: 2e12)
    monkeypatch.setattr(models, "check_checkpoints", lambda *a, **k: None)    # the tiny models stand in for them
    events = []
    loaded = []
    settings = AnimateSettings(models=str(tmp_path), steps=3, cfg=1.5, device="cpu", size=(64, 48),
                               det_model=pose_models[0], pose_model=pose_models[1], tiled=False)
    Animator(settings, progress=events.append, loader=lambda s: loaded.append(len(events)) or tiny_pipe
             ).animate(photo, driving, tmp_path / "o.mp4")
    lines = [(i, e.message) for i, e in enumerate(events) if "per denoising step" in e.message]
    assert len(lines) == 1
    index, message = lines[0]
    assert index < loaded[0]                                   # before the models load
    frames = int(re.search(r"(\d+) pose frames", " ".join(e.message for e in events)).group(1))
    count = (frames - 1) // 4 * 4 + 1
    assert message == cpu_estimate_line(count, 48, 64, 3, 1.5, rate=2e12)


def test_not_for_the_tiny_models(tmp_path, tiny_pipe, pose_models, photo, driving):
    events = []
    settings = AnimateSettings(models="tiny", steps=2, det_model=pose_models[0], pose_model=pose_models[1])
    Animator(settings, progress=events.append, pipeline=tiny_pipe).animate(photo, driving, tmp_path / "o.mp4")
    assert not [e for e in events if "per denoising step" in e.message]
