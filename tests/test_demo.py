"""The Quickstart demo: tiny real models end to end on CPU, writing a real mp4 (the trained demo model by default,
seeded random weights with --weights random)."""
from __future__ import annotations

import numpy as np
import pytest

from diffsynth.data import VideoData
from diffsynth.demo.synthetic import make_example
from diffsynth.demo.run import main
from diffsynth.demo.model import ASSET_DIR, HELD_OUT_SEED
from tools.demo_model.evaluate import psnr

DEMO_MIN_PSNR = 19.0    # held-out clip 1 through the mp4: measured 21.1 dB (another clip's frames: 12.4 dB)


def test_demo_writes_side_by_side_video(tmp_path):
    path = main(["--out", str(tmp_path / "demo.mp4"), "--weights", "random", "--frames", "5", "--height", "64",
                 "--width", "48", "--steps", "2"])
    video = VideoData(video_file=path)
    assert len(video) == 5
    frame = np.asarray(video[2])
    assert frame.shape == (64, 3 * 48, 3)
    reference, pose, generated = frame[:, :48], frame[:, 48:96], frame[:, 96:]
    assert pose.mean() < reference.mean()          # pose panel: skeleton on black
    assert generated.std() > 5                     # something was decoded, not a constant frame


def test_demo_is_reproducible_for_a_seed(tmp_path):
    frames = []
    for name in ("a.mp4", "b.mp4"):
        path = main(["--out", str(tmp_path / name), "--weights", "random", "--frames", "5", "--height", "32",
                     "--width", "32", "--steps", "1"])
        frames.append(np.asarray(VideoData(video_file=path)[4]))
    assert np.array_equal(frames[0], frames[1])


@pytest.mark.skipif(not (ASSET_DIR / "config.json").is_file(), reason="demo model files not present")
def test_default_demo_animates_the_held_out_clip_with_the_trained_model(tmp_path):
    """The default demo (what the Quickstart runs) uses the shipped demo model: its generated panel is close to the
    held-out clip's ground truth, which random weights (about 8 dB) or another clip's inputs are not."""
    path = main(["--out", str(tmp_path / "demo.mp4"), "--example", "1"])
    video = VideoData(video_file=path)
    assert len(video) == 9
    example = make_example(HELD_OUT_SEED + 1)
    generated = [np.asarray(video[i])[2::4, 2 * 48 * 4 + 2::4] for i in range(9)]   # undo the 4x upscale
    assert generated[0].shape == (64, 48, 3)
    assert psnr(generated, example.frames) > DEMO_MIN_PSNR


def test_readme_flow_in_bf16_tracks_fp32(tmp_path):
    """The released setup: DiT/T5/VAE in bf16, CLIP and the pose guider in fp32."""
    import torch

    from diffsynth.demo.run import draw_rgb, run_readme_flow, stick_figure, synthetic_reference
    from diffsynth.tiny import build_tiny_models, save_tiny_checkpoints

    checkpoints = save_tiny_checkpoints(build_tiny_models(str(tmp_path / "tok")), str(tmp_path / "ckpt"))
    poses = [draw_rgb(stick_figure(i), 32, 32) for i in range(5)]
    reference = synthetic_reference(32, 32)
    outs = [np.stack([np.asarray(f) for f in run_readme_flow(checkpoints, reference, poses, poses[0], "dance", 2, 1.5,
                                                             0, torch_dtype=dtype)]).astype(int)
            for dtype in (torch.bfloat16, torch.float32)]
    assert outs[0].shape == (5, 32, 32, 3)
    assert np.abs(outs[0] - outs[1]).mean() < 8 and outs[1].std() > 5
