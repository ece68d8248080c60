"""The 480p example script under `torchrun --nproc_per_node=2` (gloo, tiny release-layout checkpoints): item parallel
writes exactly the single-process videos, each rank its share; Ulysses sequence parallel writes the same frames."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffsynth.data import VideoData

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "unianimate_wan" / "inference_unianimate_wan_480p.py"
sys.path.insert(0, str(ROOT / "tests"))
from training.training_helpers import save_structural_checkpoints  # noqa: E402


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("script")
    ckpt = save_structural_checkpoints(root)
    rng = np.random.default_rng(0)
    poses = root / "saved_pose" / "dance"
    poses.mkdir(parents=True)
    for i in range(7):
        Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(poses / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(poses / "pose.jpg")
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(root / name)
    return root, ckpt


def settings(script: str, root: Path, ckpt, **values) -> str:
    """The example script with its settings edited, as a user would."""
    values = dict(dict(WAN_DIR=repr(str(root / "ckpt")), LORA_PATH=repr(ckpt.unianimate), MAX_FRAMES="5",
                       NUM_INFERENCE_STEPS="2",
                       TEST_LIST=repr([[1, str(root / n), str(root / "saved_pose" / "dance")] for n in ("a.png", "b.png")])),
                  **values)
    script = re.sub(r"^HEIGHT, WIDTH = .*$", "HEIGHT, WIDTH = 32, 32", script, flags=re.M)
    script = re.sub(r"^TEST_LIST = \[.*?^\]\n", "TEST_LIST = []\n", script, flags=re.M | re.S)
    for key, value in values.items():
        script, n = re.subn(rf"^{key} = .*$", f"{key} = {value}", script, flags=re.M)
        assert n == 1, key
    return script


def run(root, ckpt, name, nproc, **values):
    folder = root / name
    folder.mkdir()
    path = folder / "script.py"
    path.write_text(settings(SCRIPT.read_text(), root, ckpt, **values))
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(path)] if nproc == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", str(path)]
    result = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    videos = sorted((folder / "outputs").glob("*.mp4"))
    return {v.name: np.stack(VideoData(video_file=str(v)).raw_data()).astype(int) for v in videos}, result.stderr


def test_script_under_torchrun(workspace):
    root, ckpt = workspace
    single, _ = run(root, ckpt, "single", 1)
    assert len(single) == 2
    items, log = run(root, ckpt, "items", 2)
    assert items.keys() == single.keys()
    assert all(np.array_equal(items[k], single[k]) for k in single)          # the same videos, bit for bit
    assert log.count("saved ") == 2 and "failed" not in log                   # each item made once, by one rank
    sequence, _ = run(root, ckpt, "ulysses", 2, ULYSSES_SIZE="2")
    assert sequence.keys() == single.keys()
    for k in single:                                                          # bf16 sums in another order
        assert np.abs(sequence[k] - single[k]).mean() < 1.0
