"""`python -m diffsynth animate` under a real `torchrun --nproc_per_node=2` (gloo, tiny models): with
--ulysses-size 2 every video is split over both processes and rank 0 writes the same clip; without it the pairs of a
batch are shared out, each written once."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffsynth.data import VideoData
import standins
from tests.animate.conftest import PERSON_BOX, landscape_photo, write_driving

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    det = standins.build_detector(root / "det.onnx", [PERSON_BOX])
    pose = standins.build_pose_model(root / "pose.onnx")
    (root / "photos").mkdir()
    for name, x in (("a", 11 / 16), ("b", 9 / 16)):
        cv2.imwrite(str(root / "photos" / f"{name}.png"), landscape_photo(disc_x=x))
    driving = write_driving(root / "dance.mp4")
    return root, [str(det), str(pose)], driving


def animate(root, name, nproc, models, refs, driving, *extra):
    out = root / name
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    args = ["-m", "diffsynth", "animate", "--ref", str(refs), "--driving", str(driving), "--out", str(out),
            "--models", "tiny", "--resolution", "3072", "--steps", "2", "--det-model", models[0],
            "--pose-model", models[1], *extra]
    cmd = [sys.executable, *args] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=root)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result.stdout + result.stderr


def frames(path):
    return np.stack(VideoData(video_file=str(path)).raw_data()).astype(int)


def test_animate_under_torchrun(inputs):
    root, models, driving = inputs
    photo = root / "photos" / "a.png"
    single, _ = animate(root, "single.mp4", 1, models, photo, driving)
    split, log = animate(root, "split.mp4", 2, models, photo, driving, "--ulysses-size", "2")
    assert "rank 0 of 2: every video split (ulysses 2" in log and "rank 1 of 2" in log
    assert np.abs(frames(split) - frames(single)).mean() < 1.0                  # the same clip, bit-close
    batch, log = animate(root, "batch", 2, models, root / "photos", driving)
    written = sorted(p.name for p in batch.glob("*.mp4") if "comparison" not in p.name)
    assert written == ["a_dance.mp4", "b_dance.mp4"]
    assert np.array_equal(frames(batch / "a_dance.mp4"), frames(single))        # item parallel: the same bytes
