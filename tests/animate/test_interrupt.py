"""Ctrl-C during `python -m diffsynth animate`: the process stops within the denoising step it is in, exits 130
with one line, and leaves no clip, comparison or temporary file behind (the pose cache is kept for the next run)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from .conftest import write_driving

ROOT = Path(__file__).resolve().parents[2]


def test_ctrl_c_stops_within_a_step_and_leaves_nothing_half_written(tmp_path, pose_models, photo):
    driving = write_driving(tmp_path / "dance.mp4", frames=17)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "diffsynth", "animate", "--models", "tiny", "--ref", str(photo),
               "--driving", str(driving), "--out", str(out / "clip.mp4"), "--size", "320x240", "--steps", "50",
               "--pose-backend", "dwpose", "--det-model", pose_models[0], "--pose-model", pose_models[1]]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    # A shell that started this suite in the background may have SIGINT ignored; the child must see Ctrl-C.
    child = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines, step_seconds = [], None
    try:
        for line in child.stdout:            # piped: one line per step, with s/step
            lines.append(line)
            found = re.search(r"generate: 2/50, ([\d.]+) s/step", line)
            if found:
                step_seconds = float(found.group(1))
                break
        assert step_seconds is not None, "".join(lines[-20:])
        time.sleep(step_seconds * 0.1)        # early in step 3
        sent = time.perf_counter()
        child.send_signal(signal.SIGINT)
        rest = child.communicate(timeout=120)[0]
        stopped_after = time.perf_counter() - sent
    finally:
        child.kill()
    assert child.returncode == 130, rest
    assert rest.strip().splitlines()[-1] == "interrupted"
    assert "generate: 3/50" not in rest, "the step in progress ran to its end"
    # Python's own exit takes about a second here; a run that waited for the step or the video would take longer.
    assert stopped_after < step_seconds + 2, f"stopped {stopped_after:.1f} s after Ctrl-C; a step takes {step_seconds} s"
    left = sorted(p.name for p in out.iterdir())
    assert left == ["clip.poses"], left      # no clip, no comparison, no hidden temporary file
