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


def png_header_only(path, width: int, height: int):
    """A PNG that declares width x height but holds almost no data: only a reader that decodes it would notice
    (a real 432-megapixel photo took 8.9 GB and 194 s to decode)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))
    return path


@pytest.fixture
def tiny_flags(pose_models):
    return ["--models", "tiny", "--resolution", "3072", "--steps", "2", "--det-model", pose_models[0],
            "--pose-model", pose_models[1]]


@pytest.mark.parametrize("case, flags, message", [
    ("fast", ["--fast"], "--fast (4 steps, cfg 1) needs a step-distillation LoRA"),
    ("fast plain lora", ["--fast", "--lora", "{tmp}/style.safetensors"], "needs a step-distillation LoRA"),
    ("missing lora", ["--lora", "{tmp}/nope.safetensors:0.8"], "LoRA file {tmp}/nope.safetensors not found"),
    ("ulysses", ["--ulysses-size", "2"], "--ulysses-size split every video over 2 processes, but this is a single "
                                         "process: start it with `torchrun --nproc_per_node=2"),
    ("ring", ["--ring-size", "2"], "--ring-size split every video over 2 processes"),
    ("cfg parallel", ["--cfg-parallel"], "--cfg-parallel split every video over 2 processes"),
    ("432 MP photo", ["--ref", "{tmp}/huge.png"], "huge.png is too large (432 megapixels): over the 100-megapixel"),
    ("120 MP photo", ["--ref", "{tmp}/big.png"], "big.png is 12000x10000 (120 megapixels), over the 100-megapixel"),
    ("damaged photo", ["--ref", "{tmp}/damaged.jpg"], "cannot read reference photo {tmp}/damaged.jpg"),
    ("4-frame video", ["--driving", "{tmp}/short.mp4"], "short.mp4 gives 4 frames: a clip needs at least 5"),
    ("stride", ["--stride", "2"], "gives 7 frames, 4 at --stride 2: a clip needs at least 5"),
    ("damaged video", ["--driving", "{tmp}/damaged.mp4"], "cannot read driving video {tmp}/damaged.mp4"),
    ("release", ["--models", "{tmp}/checkpoints"], "missing release files {tmp}/checkpoints/Wan2.1-I2V-14B-720P/"),
    ("pose models", ["--det-model", "{tmp}/yolox_l.onnx"],
     "missing release file {tmp}/yolox_l.onnx: download with `python -m diffsynth download --only dwpose --dir "
     "checkpoints`"),
])
def test_bad_input_is_refused_before_any_work(tmp_path, photo, driving, tiny_flags, case, flags, message, capsys,
                                              monkeypatch):
    from .conftest import write_driving

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    (tmp_path / "style.safetensors").write_bytes(b"not read")
    (tmp_path / "checkpoints").mkdir()
    png_header_only(tmp_path / "huge.png", 21600, 20000)
    png_header_only(tmp_path / "big.png", 12000, 10000)
    (tmp_path / "damaged.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\0" * 100)
    (tmp_path / "damaged.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\1" * 3000)
    write_driving(tmp_path / "short.mp4", frames=4)
    out = tmp_path / "out" / "o.mp4"
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    rc = main(["animate", "--ref", str(photo), "--driving", str(driving), "--out", str(out), *tiny_flags, *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and message.replace("{tmp}", str(tmp_path)) in err[0], err
    assert not (tmp_path / "out").exists()                     # refused before the poses (and any model)


def test_the_release_check_names_every_missing_file_and_the_tiny_alternative(tmp_path, photo, driving, pose_models,
                                                                            capsys):
    from diffsynth.loading.release import UNIANIMATE_FILE, WAN_I2V_FOLDER as WAN_FOLDER

    models = tmp_path / "checkpoints"
    wan = models / WAN_FOLDER
    (wan / "google" / "umt5-xxl").mkdir(parents=True)
    shards = [f"diffusion_pytorch_model-0000{i}-of-00007.safetensors" for i in (1, 2, 3, 5, 6, 7)]   # no 4
    for name in ("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "models_t5_umt5-xxl-enc-bf16.pth",
                 "Wan2.1_VAE.pth", *shards):
        (wan / name).write_bytes(b"x")
    rc = main(["animate", "--ref", str(photo), "--driving", str(driving), "--out", str(tmp_path / "o.mp4"),
               "--models", str(models), "--det-model", pose_models[0], "--pose-model", pose_models[1]])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err
    assert f"{wan}/diffusion_pytorch_model-00004-of-00007.safetensors, {models / UNIANIMATE_FILE}: download" in err
    assert f"`python -m diffsynth download --dir {models}`" in err and "--models tiny" in err
    assert not (tmp_path / "o.poses").exists()
    (wan / "diffusion_pytorch_model-00004-of-00007.safetensors").write_bytes(b"x")
    (models / UNIANIMATE_FILE).write_bytes(b"x")
    from diffsynth.animate.models import missing_checkpoints
    from diffsynth.cli import build_parser, settings_from_args

    args = build_parser().parse_args(["animate", "--ref", "p", "--driving", "d", "--models", str(models),
                                      "--det-model", pose_models[0], "--pose-model", pose_models[1]])
    assert missing_checkpoints(settings_from_args(args)) == []


@pytest.mark.parametrize("frames", [100, 29, 81, 7])
def test_piped_progress_has_a_line_per_step_with_s_per_step_and_eta(frames):
    """Piped (not a terminal): encode and decode get their own lines, every denoising step one line with s/step
    and ETA, the written frames at most ~20 lines."""
    import io
    import itertools

    from diffsynth.animate.settings import ProgressEvent
    from diffsynth.cli import _Printer

    stream = io.StringIO()
    clock = itertools.count(10.0, 2.0)                  # every clock read is 2 s later
    printer = _Printer(stream, clock=lambda: next(clock))
    printer(ProgressEvent("encode", message="encoding the prompt, the reference and 5 pose frames"))
    for done in range(41):
        printer(ProgressEvent("generate", done, 40))
    printer(ProgressEvent("decode", message="decoding the frames"))
    for done in range(frames + 1):
        printer(ProgressEvent("write", done, frames, f"frame {done}/{frames}"))
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("encode: ") and "decode: decoding the frames" in lines
    steps = [line for line in lines if line.startswith("generate: ")]
    assert len(steps) == 41 and steps[0] == "generate: 0/40"
    assert steps[1] == "generate: 1/40, 2.00 s/step, ETA 78 s" and steps[3] == "generate: 3/40, 2.00 s/step, ETA 74 s"
    assert steps[-1] == "generate: 40/40, 2.00 s/step, ETA 0 s"
    writes = [line for line in lines if line.startswith("write: ")]
    assert min(frames + 1, 5) <= len(writes) <= 22 and writes[-1].startswith(f"write: {frames}/{frames}, ")


@pytest.mark.parametrize("stack", [False, True])
def test_a_trained_unianimate_lora_replaces_the_shipped_one_unless_stacked(tmp_path, photo, stack):
    """`--lora my_unianimate.safetensors` (a LoRA carrying a pose guider) replaces the loaded UniAnimate checkpoint;
    `--stack-loras` merges it on top. The loader says which it did."""
    from safetensors.torch import load_file, save_file

    from diffsynth.animate.models import load_pipeline
    from diffsynth.cli import build_parser, settings_from_args
    from diffsynth.loading.release import demo_files

    shipped = demo_files().unianimate
    mine = tmp_path / "my_unianimate.safetensors"
    save_file({k: (v.float() * 1.1).contiguous() if v.is_floating_point() else v
               for k, v in load_file(shipped).items()}, mine)
    argv = ["animate", "--ref", str(photo), "--driving", str(photo), "--models", "tiny", "--lora", str(mine)]
    settings = settings_from_args(build_parser().parse_args(argv + (["--stack-loras"] if stack else [])))
    assert settings.stack_loras == stack
    pipe = load_pipeline(settings)
    merged = [line for line in pipe.loaded if line.startswith("LoRA merged")]
    if stack:
        assert len(merged) == 2 and any("merged after the UniAnimate checkpoint" in line for line in pipe.loaded)
    else:
        assert len(merged) == 1 and str(mine) in merged[0]
        assert any(f"replaces the UniAnimate checkpoint {shipped}" in line for line in pipe.loaded)
    assert f"pose guider from: {mine}" in pipe.loaded
