"""`python -m diffsynth animate` end to end on the tiny models (CPU), and its one-line failures."""
from __future__ import annotations

import json

import numpy as np
import pytest

from diffsynth.animate.media import has_audio
from diffsynth.cli import main
from diffsynth.data import VideoData


def test_photo_and_video_to_clip_comparison_and_audio(tmp_path, photo, driving_with_audio, pose_models, capsys):
    out = tmp_path / "results" / "me.mp4"
    rc = main(["animate", "--ref", str(photo), "--driving", str(driving_with_audio), "--out", str(out),
               "--models", "tiny", "--resolution", "3072", "--steps", "2", "--det-model", pose_models[0],
               "--pose-model", pose_models[1]])
    assert rc == 0
    printed = capsys.readouterr().out
    for path in (out, tmp_path / "results" / "me_comparison.mp4", tmp_path / "results" / "me.poses"):
        assert str(path) in printed and path.exists()
    clip = VideoData(video_file=str(out))
    assert len(clip) == 5 and clip[0].size == (64, 32)       # 7 driving frames -> 4k+1; 16:9 photo at 3072 px
    comparison = np.asarray(VideoData(video_file=str(tmp_path / "results" / "me_comparison.mp4"))[2])
    assert comparison.shape == (32, 3 * 64, 3)
    assert comparison[:, 64:128].mean() < comparison[:, :64].mean()    # the pose panel: a skeleton on black
    assert has_audio(out) and "audio copied" in printed
    manifest = json.loads((tmp_path / "results" / "me.poses" / ".run_align_pose.json").read_text())
    assert manifest["inputs"]["canvas"] == [64, 32] and len(manifest["inputs"]["reference_sha256"]) == 64


def test_a_failure_is_one_line(tmp_path, driving, capsys):
    rc = main(["animate", "--ref", str(tmp_path / "nope.jpg"), "--driving", str(driving), "--models", "tiny"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: ") and "nope.jpg" in err[0]
    with pytest.raises(FileNotFoundError):
        main(["animate", "--ref", str(tmp_path / "nope.jpg"), "--driving", str(driving), "--models", "tiny",
              "--debug"])


@pytest.mark.parametrize("flags, message", [
    (["--size", "100x100"], "multiples of 16"),
    (["--resolution", "1080p"], "480p, 720p"),
    (["--models", "no/such/folder"], "diffsynth download"),
    (["--steps", "0"], "steps must be an integer >= 1"),
])
def test_bad_settings_name_the_fix(tmp_path, photo, driving, flags, message, capsys):
    rc = main(["animate", "--ref", str(photo), "--driving", str(driving), "--out", str(tmp_path / "o.mp4"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and message in err[0]
    assert not (tmp_path / "o.poses").exists()       # refused before any work


def test_an_existing_output_is_refused_before_any_work(tmp_path, photo, driving, capsys):
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"my video")
    assert main(["animate", "--ref", str(photo), "--driving", str(driving), "--out", str(out), "--models",
                 "tiny"]) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"my video"
    assert not (tmp_path / "mine.poses").exists()


def test_help_lists_the_tiers_and_the_console_script_is_declared(capsys):
    from pathlib import Path

    with pytest.raises(SystemExit):
        main(["animate", "--help"])
    text = capsys.readouterr().out
    for words in ("--vram", "24 = 6e9", "--preview", "--resize", "--models tiny|DIR"):
        assert words in text
    assert '"diffsynth=diffsynth.cli:main"' in (Path(__file__).parents[2] / "setup.py").read_text()
