"""What a newcomer runs as written, on the shipped demo model on a CPU: README.md's "Using the package" block and
the four inference scripts under examples/unianimate_wan/, each with only its documented demo settings changed.

The settings each run changes are read from the text itself (the README's "the demo model's own: ..." comment, the
scripts' `WAN_DIR = ... # "demo": ...` comment), so a README or script that stops saying how to run it on the demo
model fails here, and so does one whose code no longer runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from diffsynth.data.video import VideoData
from diffsynth.demo.synthetic import make_example

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "examples" / "unianimate_wan"


def write_inputs(cwd: Path, image: str, pose_dir: str, num_frames: int) -> None:
    """A synthetic photo and a pose folder in run_align_pose.py's layout (pose.jpg, 0000.jpg, ...)."""
    example = make_example(7, num_frames=num_frames)
    (cwd / image).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(cwd / image), example.reference[..., ::-1])
    poses = cwd / pose_dir
    poses.mkdir(parents=True)
    cv2.imwrite(str(poses / "pose.jpg"), example.reference_pose[..., ::-1])
    for i, pose in enumerate(example.poses):
        cv2.imwrite(str(poses / f"{i:04d}.jpg"), pose[..., ::-1])


def run_python(code_or_file, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    args = [sys.executable, str(code_or_file)] if isinstance(code_or_file, Path) else [sys.executable, "-c", code_or_file]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def replace_once(text: str, pattern: str, replacement: str) -> str:
    """`pattern` (a regex of one whole line) must stand exactly once: the test follows the text, not a copy of it."""
    found = re.findall(pattern, text, flags=re.M)
    assert len(found) == 1, f"expected one line matching {pattern!r}, found {len(found)}"
    return re.sub(pattern, replacement, text, flags=re.M)


def check_video(path: Path, frames: int, height: int, width: int) -> None:
    video = VideoData(video_file=str(path))
    assert len(video) == frames
    first = np.asarray(video[0])
    assert first.shape[:2] == (height, width)
    assert first.std() > 5                      # a picture, not a flat frame


def readme_block() -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Using the package"):]
    return section[section.index("```python\n") + len("```python\n"):section.index("```\n", 10)]


def test_the_readme_block_runs_on_the_demo_model(tmp_path):
    code = readme_block()
    demo = re.search(r"^HEIGHT, WIDTH, FRAMES, STEPS, CFG = .*# the demo model's own: (.*)$", code, flags=re.M)
    assert demo, "the README block no longer says the demo model's settings"
    height, width, frames, steps, cfg = (float(v) for v in demo.group(1).split(","))
    code = replace_once(code, r'^MODELS = "checkpoints" .*$', 'MODELS = "demo"')
    code = replace_once(code, r"^HEIGHT, WIDTH, FRAMES, STEPS, CFG = .*$",
                        f"HEIGHT, WIDTH, FRAMES, STEPS, CFG = {demo.group(1)}")
    image, poses = re.search(r'^REFERENCE, POSES = "([^"]+)", "([^"]+)"', code, flags=re.M).groups()
    write_inputs(tmp_path, image, poses, int(frames))
    done = run_python(code, tmp_path)
    assert "pose guider from" in done.stdout              # pipe.loaded, printed
    check_video(tmp_path / "outputs" / "result.mp4", int(frames), int(height), int(width))


def script_on_demo(script: Path, num_frames: int) -> str:
    """The script with the demo settings its WAN_DIR comment names, and one item: ref.png + poses/."""
    text = script.read_text()
    hint = re.search(r'^WAN_DIR = .*# "demo": .*\(then\n\s*# (.*)\)$', text, flags=re.M)
    assert hint, f"{script.name} no longer says how to point it at the demo model"
    text = replace_once(text, r"^WAN_DIR = .*$", 'WAN_DIR = "demo"')
    settings = dict(re.findall(r"([A-Z_]+(?:, [A-Z_]+)?) = (None|[\d.]+(?:, [\d.]+)?)", hint.group(1)))
    text = replace_once(text, r"^LORA_PATH = .*$", f"LORA_PATH = {settings['LORA_PATH']}")
    text = replace_once(text, r"^HEIGHT, WIDTH = .*$", f"HEIGHT, WIDTH = {settings['HEIGHT, WIDTH']}")
    text = replace_once(text, r"^CFG_SCALE = .*$", f"CFG_SCALE = {settings['CFG_SCALE']}")
    text = replace_once(text, r"^NUM_INFERENCE_STEPS = .*$", "NUM_INFERENCE_STEPS = 2")   # fewer, for time
    if "MAX_FRAMES = 81" in text:
        text = replace_once(text, r"^MAX_FRAMES = .*$", f"MAX_FRAMES = {num_frames}")
    text = replace_once(text, r"^TEST_LIST = \[.*$", 'TEST_LIST = [[1, "ref.png", "poses"]]\n_UNUSED = [')
    text = text.replace("sys.path.insert(0, str(Path(__file__).resolve().parents[2]))", "")
    return text


@pytest.mark.parametrize("name, num_frames", [
    ("inference_unianimate_wan_480p.py", 9),
    pytest.param("inference_unianimate_wan_720p.py", 9, marks=pytest.mark.slow),
    ("inference_unianimate_wan_long_video_480p.py", 21),
    pytest.param("inference_unianimate_wan_long_video_720p.py", 21, marks=pytest.mark.slow),
])
def test_an_example_script_runs_on_the_demo_model(tmp_path, name, num_frames):
    write_inputs(tmp_path, "ref.png", "poses", num_frames)
    script = tmp_path / name
    script.write_text(script_on_demo(SCRIPTS / name, num_frames))
    run_python(script, tmp_path)
    outputs = list((tmp_path / "outputs").glob("*.mp4"))
    assert len(outputs) == 1 and outputs[0].name.endswith("_ref.png_poses.mp4")
    check_video(outputs[0], num_frames, 64, 3 * 48)
