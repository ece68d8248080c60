"""The web UI without a browser: controls -> settings, progress with an ETA, the preview and generate jobs end to
end on the tiny models, the per-process model cache, the job folders, one-line errors."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from diffsynth.animate.run import error_line
from diffsynth.app import (AppConfig, Jobs, ModelCache, ProgressReporter, build_parser, config_from_args,
                           find_pose_folders, settings_from_controls)
from diffsynth.data import VideoData

CONTROLS = dict(resolution="480p", steps=30, cfg=2.5, cache="none", threshold=0.2, fast=False, seed=7, prompt="")


def controls(**changes):
    return {**CONTROLS, **changes}


def test_controls_map_to_settings(tmp_path):
    lora = tmp_path / "x_lightx2v_distill.safetensors"          # --fast needs one named like a step-distill LoRA
    lora.write_bytes(b"")
    config = AppConfig(models="tiny", vram="16", loras=(f"{lora}:0.5",), det_model="d.onnx")
    s = settings_from_controls(config, **controls())
    assert (s.models, s.vram, s.loras, s.det_model) == ("tiny", "16", (f"{lora}:0.5",), "d.onnx")
    assert (s.resolution, s.steps, s.cfg, s.seed, s.fast) == ("480p", 30, 2.5, 7, False)
    assert s.teacache is None and s.magcache is None and s.prompt == "a person is dancing"
    s = settings_from_controls(config, **controls(resolution=" 720p ", steps=4.0, cache="TeaCache", threshold=0.3,
                                                  fast=True, seed=3.0, prompt="a person waves"))
    assert (s.resolution, s.steps, s.seed, s.fast, s.teacache, s.magcache, s.prompt) == \
        ("720p", 4, 3, True, 0.3, None, "a person waves")
    assert isinstance(s.steps, int) and isinstance(s.seed, int)
    s = settings_from_controls(config, **controls(cache="MagCache", threshold=None))
    assert (s.teacache, s.magcache) == (None, 0.12)


@pytest.mark.parametrize("change, message", [(dict(steps=2.5), "steps must be a whole number"),
                                             (dict(steps=0), "steps must be an integer >= 1"),
                                             (dict(cfg=0.5), "cfg must be a number >= 1"),
                                             (dict(cache="FooCache"), "cache must be one of none, TeaCache"),
                                             (dict(resolution="huge"), "huge"),
                                             (dict(seed=None), "seed must be a whole number")])
def test_bad_controls_are_one_line_errors(change, message):
    with pytest.raises(ValueError) as caught:
        settings_from_controls(AppConfig(models="tiny"), **controls(**change))
    line = error_line(caught.value)
    assert message in line and "\n" not in line


def test_progress_covers_the_stages_with_an_eta():
    from diffsynth.animate.settings import ProgressEvent

    reports = []
    clock = itertools.count(100.0, 2.0)                 # every clock read is 2 s later
    bar = ProgressReporter(lambda fraction, text: reports.append((fraction, text)), clock=lambda: next(clock))
    bar(ProgressEvent("poses", message="extracting"))
    bar(ProgressEvent("load", message="loading the tiny models"))
    for done in range(5):
        bar(ProgressEvent("generate", done, 4))
    bar(ProgressEvent("write", 5, 5, "frame 5/5"))
    bar(ProgressEvent("done", 1, 1, "done in 9.0 s"))
    fractions = [f for f, _ in reports]
    assert fractions == sorted(fractions) and fractions[0] == 0 and fractions[-1] == 1
    texts = [t for _, t in reports]
    assert texts[2] == "denoising: step 0/4"
    assert texts[3] == "denoising: step 1/4, 2.0 s/step, ETA 6s"      # 3 steps left at 2 s each
    assert texts[5] == "denoising: step 3/4, 2.0 s/step, ETA 2s"
    assert texts[6].endswith("ETA 0s") and texts[0] == "poses: extracting"


def test_preview_then_generate_end_to_end_and_the_models_load_once(app_config, app_inputs):
    from diffsynth.animate.models import load_tiny_pipeline

    photo, driving = app_inputs[:2]
    loads = []

    def loader(settings):
        loads.append(settings)
        pipe = load_tiny_pipeline("cpu")
        pipe.show_summary = False
        return pipe
    jobs = Jobs(app_config, ModelCache(loader))
    settings = settings_from_controls(app_config, **controls(resolution=app_config.resolution, steps=3, seed=1))

    preview = jobs.preview(str(photo), str(driving), settings)
    assert preview.folder.parent == app_config.outputs and not loads            # poses only: no model loaded
    assert len(VideoData(video_file=str(preview.preview))) == 7
    assert any("preview:" in line for line in preview.lines)

    events = []
    first = jobs.generate(str(photo), str(driving), settings, events.append)
    assert first.folder != preview.folder and first.folder.parent == app_config.outputs
    assert first.result.poses_reused                                             # the preview's poses, copied
    clip = VideoData(video_file=str(first.video))
    assert len(clip) == 5 and clip[0].size == (64, 32)                           # 7 frames -> 4k+1, 16:9 photo
    assert np.asarray(clip[2]).std() > 0 and first.comparison.is_file()
    assert [(e.done, e.total) for e in events if e.stage == "generate"] == [(0, 3), (1, 3), (2, 3), (3, 3)]

    second = jobs.generate(str(photo), str(driving), settings.with_(seed=2, steps=2))
    assert len(loads) == 1                                                       # the second job reused the models
    assert second.video != first.video and first.video.is_file()                 # a new folder; nothing replaced
    assert not np.array_equal(np.asarray(VideoData(video_file=str(second.video))[2]), np.asarray(clip[2]))


def test_generate_along_an_existing_pose_folder(app_config, app_inputs, tiny_app_pipe):
    photo, driving = app_inputs[:2]
    jobs = Jobs(app_config, ModelCache(lambda settings: tiny_app_pipe))
    settings = settings_from_controls(app_config, **controls(resolution=app_config.resolution, steps=2))
    pose_dir = jobs.preview(str(photo), str(driving), settings).result.pose_dir
    assert find_pose_folders(app_config.outputs.parent) == [str(pose_dir)]
    job = jobs.generate(None, None, settings, pose_folder=str(pose_dir))
    clip = VideoData(video_file=str(job.video))
    assert len(clip) == 5 and clip[0].size == (64, 32) and job.video.name == "photo_dance-poses.mp4"


def test_missing_inputs_and_bad_flags_are_one_line(app_config, tmp_path, capsys):
    from diffsynth.app import main

    jobs = Jobs(app_config, ModelCache(lambda settings: pytest.fail("no model may load")))
    settings = settings_from_controls(app_config, **controls(resolution=app_config.resolution))
    for photo, driving, what in [(None, "d.mp4", "upload a photo"), ("p.png", None, "upload a driving video"),
                                 (str(tmp_path / "gone.png"), str(tmp_path / "d.mp4"), "gone.png not found")]:
        with pytest.raises(Exception) as caught:
            jobs.generate(photo, driving, settings)
        assert what in error_line(caught.value)
    assert main(["--models", str(tmp_path / "nowhere")]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(FileNotFoundError, match=f"LoRA file {tmp_path / 'gone.safetensors'} not found"):
        config_from_args(build_parser().parse_args(["--models", "tiny", "--lora", f"{tmp_path}/gone.safetensors:0.5"]))


def test_flags_and_the_gradio_page(tmp_path):
    pytest.importorskip("gradio")
    from diffsynth.app import build_app

    args = build_parser().parse_args(["--models", "tiny", "--port", "7999", "--outputs", str(tmp_path / "o")])
    config = config_from_args(args)
    assert (config.models, config.resolution, config.steps, args.port, args.share) == ("tiny", "3072", 10, 7999, False)
    app = build_app(config)
    labels = {getattr(block, "label", None) for block in app.blocks.values()}
    for label in ("Photo of the person", "Driving video", "Steps", "Guidance (cfg)", "Step cache", "Seed", "Result"):
        assert label in labels
    assert app._queue is not None and app._queue.default_concurrency_limit == 1


def test_the_page_handlers_feed_the_progress_bar_and_show_one_line_errors(app_config, app_inputs, tiny_app_pipe):
    gr = pytest.importorskip("gradio")
    from diffsynth.app import build_app

    app = build_app(app_config, Jobs(app_config, ModelCache(lambda settings: tiny_app_pipe)))
    handlers = {fn.name: fn.fn for fn in app.fns.values()}
    reports = []

    def progress(fraction, desc=None):
        reports.append((fraction, desc))
    values = [app_config.resolution, 3, 1.5, "none", 0.2, False, 0, ""]
    video, comparison, downloads, info = handlers["on_generate"](str(app_inputs[0]), str(app_inputs[1]), "",
                                                                 *values, progress=progress)
    assert downloads == [video, comparison] and video in info and video.endswith("photo_dance.mp4")
    assert "denoising: step 3/3, " in "\n".join(d for _, d in reports) and reports[-1][0] == 1.0
    with pytest.raises(gr.Error) as caught:
        handlers["on_generate"](None, str(app_inputs[1]), "", *values, progress=progress)
    assert caught.value.message == "upload a photo of the person first"
    with pytest.raises(gr.Error, match="needs a step-distillation LoRA"):         # fast without its LoRA
        handlers["on_generate"](str(app_inputs[0]), str(app_inputs[1]), "", *values[:5], True, *values[6:],
                                progress=progress)
    with pytest.raises(gr.Error, match="cfg must be a number >= 1"):
        handlers["on_preview"](str(app_inputs[0]), str(app_inputs[1]), "", *values[:2], 0.5, *values[3:],
                               progress=progress)


def test_importing_the_app_module_does_not_need_gradio():
    import subprocess
    import sys

    code = "import sys, diffsynth.app; print('gradio' in sys.modules, 'selenium' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["False", "False"]


def test_long_upload_names_are_shortened(app_config, app_inputs, tmp_path):
    photo, driving = tmp_path / ("p" * 240 + ".png"), tmp_path / ("d" * 240 + ".mp4")
    photo.write_bytes(app_inputs[0].read_bytes())
    driving.write_bytes(Path(app_inputs[1]).read_bytes())
    jobs = Jobs(app_config, ModelCache(lambda settings: pytest.fail("a preview loads no model")))
    settings = settings_from_controls(app_config, **controls(resolution=app_config.resolution))
    job = jobs.preview(str(photo), str(driving), settings)
    assert job.preview.is_file() and max(len(p.name.encode()) for p in job.folder.iterdir()) < 255


@pytest.mark.parametrize("damage, message", [
    ("poses.json", "cannot read {dir}/poses.json (UnicodeDecodeError"),
    ("frame", "pose image {dir}/0002.jpg differs from the file run_align_pose wrote"),
    ("reference.png", "cannot read reference photo {dir}/reference.png"),
    ("gone", "pose folder {dir} not found; refresh the list"),
    ("huge upload", "is too large (432 megapixels): over the 100-megapixel limit"),
])
def test_a_damaged_pose_folder_pick_is_named(app_config, app_inputs, damage, message):
    import shutil

    photo, driving = app_inputs[:2]
    jobs = Jobs(app_config, ModelCache(lambda settings: pytest.fail("no model may load")))
    settings = settings_from_controls(app_config, **controls(resolution=app_config.resolution, steps=2))
    pose_dir = jobs.preview(str(photo), str(driving), settings).result.pose_dir
    upload = None
    if damage == "gone":
        shutil.rmtree(pose_dir)
    elif damage == "huge upload":               # no reference.png: the uploaded photo is the reference
        from animate.test_cli import png_header_only

        (pose_dir / "reference.png").unlink()
        upload = str(png_header_only(pose_dir.parent / "huge.png", 21600, 20000))
    elif damage == "frame":
        (pose_dir / "0002.jpg").write_bytes((pose_dir / "0002.jpg").read_bytes()[:200])
    else:
        (pose_dir / damage).write_bytes(b"\x89PNG\r\n\x1a\n{ broken")
    with pytest.raises(Exception) as caught:
        jobs.generate(upload, None, settings, pose_folder=str(pose_dir))
    line = error_line(caught.value)
    assert message.format(dir=pose_dir) in line and "\n" not in line and "Traceback" not in line
