"""diffsynth.inference: frame selection, pose folders, the example scripts' end-to-end path on tiny models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffsynth.data import VideoData
from diffsynth.inference import animate_item, load_unianimate_pipeline, output_name, run_items
from diffsynth.pipelines import WanUniAnimateLongVideoPipeline, WanUniAnimateVideoPipeline
from diffsynth.tiny import build_tiny_models


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("work")
    models = build_tiny_models(str(root / "tok"), seed=2)
    poses = root / "saved_pose" / "ref"
    poses.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(12):   # numeric order matters: 10.jpg and 11.jpg come after 9.jpg
        Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(poses / f"{i}.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(poses / "pose.jpg")
    Image.fromarray(rng.integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(root / "ref.png")
    return root, models


def pipe_of(cls, models):
    return cls.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)


def test_animate_item_writes_side_by_side_video(workspace, tmp_path):
    root, models = workspace
    out = animate_item(pipe_of(WanUniAnimateVideoPipeline, models), str(root / "ref.png"), str(root / "saved_pose/ref"),
                       str(tmp_path / "a.mp4"), height=32, width=32, max_frames=5, num_inference_steps=1,
                       tile_size=(2, 2), tile_stride=(1, 1))
    video = VideoData(video_file=out)
    assert len(video) == 5 and video[0].size == (96, 32)


def test_long_video_item_uses_every_pose_frame(workspace, tmp_path):
    root, models = workspace
    out = animate_item(pipe_of(WanUniAnimateLongVideoPipeline, models), str(root / "ref.png"),
                       str(root / "saved_pose/ref"), str(tmp_path / "b.mp4"), height=32, width=32, max_frames=None,
                       num_inference_steps=1, cfg_scale=1.0, context_size=3, context_overlap=2)
    assert len(VideoData(video_file=out)) == 9          # 12 pose frames rounded down to 4k+1


def test_run_items_reports_and_continues(workspace, tmp_path, monkeypatch, caplog):
    root, models = workspace
    monkeypatch.chdir(tmp_path)
    done = run_items(pipe_of(WanUniAnimateVideoPipeline, models),
                     [[1, str(root / "missing.png"), str(root / "saved_pose/ref")],
                      [1, str(root / "ref.png"), str(root / "saved_pose/ref")]], "video_480P",
                     height=32, width=32, max_frames=5, num_inference_steps=1, tiled=False)
    assert done == [output_name("video_480P", str(root / "ref.png"), str(root / "saved_pose/ref"))]
    assert done[0] == "outputs/video_480P_ref.png_ref.mp4" and (tmp_path / done[0]).is_file()
    assert "missing.png" in caplog.text


def test_missing_release_files_name_the_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="Wan2.1-I2V-14B-720P"):
        load_unianimate_pipeline(str(tmp_path), str(tmp_path / "lora.ckpt"), device="cpu")


def test_an_existing_output_is_refused_before_generating(workspace, tmp_path, caplog):
    root, _ = workspace
    calls = []

    class Pipeline:   # records the one generate step's call
        def generate(self, request, **inputs):
            calls.append(request)
            return [Image.new("RGB", (request.width, request.height))] * request.num_frames
    pipeline = Pipeline()
    out = tmp_path / "mine.mp4"
    out.write_bytes(b"a video of mine")
    with pytest.raises(FileExistsError, match="OVERWRITE"):
        animate_item(pipeline, str(root / "ref.png"), str(root / "saved_pose/ref"), str(out), height=32, width=32,
                     max_frames=5)
    assert calls == [] and out.read_bytes() == b"a video of mine"
    animate_item(pipeline, str(root / "ref.png"), str(root / "saved_pose/ref"), str(out), height=32, width=32,
                 max_frames=5, overwrite=True)
    assert len(calls) == 1 and len(VideoData(video_file=str(out))) == 5


def test_load_unianimate_pipeline_memory_options(tmp_path, workspace):
    """The scripts' loader on a release-layout folder: VRAM management gives the same frames, fp8 stores fp8."""
    from training.training_helpers import save_structural_checkpoints

    from diffsynth.models.fp8 import Fp8Linear

    root, _ = workspace
    ckpt = save_structural_checkpoints(tmp_path)
    folder = str(tmp_path / "ckpt")
    kwargs = dict(height=32, width=32, max_frames=5, num_inference_steps=1, tiled=False, overwrite=True)

    def frames(pipe, name):
        out = animate_item(pipe, str(root / "ref.png"), str(root / "saved_pose/ref"), str(tmp_path / name), **kwargs)
        return np.stack(VideoData(video_file=out).raw_data())

    plain = load_unianimate_pipeline(folder, ckpt.unianimate, device="cpu", torch_dtype=torch.float32)
    streamed = load_unianimate_pipeline(folder, ckpt.unianimate, device="cpu", torch_dtype=torch.float32,
                                        vram_management=True, num_persistent_param_in_dit=0)
    assert np.array_equal(frames(plain, "a.mp4"), frames(streamed, "b.mp4"))
    report = streamed.dit._vram_streamer.report()
    assert report["streamed_params"] > 0 and report["stats"]["copies"] > 0     # the DiT really streamed
    fp8 = load_unianimate_pipeline(folder, ckpt.unianimate, device="cpu", torch_dtype=torch.bfloat16,
                                   dit_dtype=torch.float8_e4m3fn)
    assert any(isinstance(m, Fp8Linear) for m in fp8.dit.modules())
    assert fp8.torch_dtype == torch.bfloat16
    assert len(frames(fp8, "c.mp4")) == 5


def test_scripts_fast_setting_loads_the_distill_lora_and_runs_four_steps(tmp_path, workspace):
    """FAST + DISTILL_LORA in the scripts: the extra LoRA is merged (at its strength) and preset="fast" runs."""
    import shutil

    from training.training_helpers import save_structural_checkpoints

    root, _ = workspace
    ckpt = save_structural_checkpoints(tmp_path)
    folder = str(tmp_path / "ckpt")
    distill = tmp_path / "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.ckpt"
    shutil.copy(ckpt.unianimate, distill)          # any LoRA named like a distill one (the name is what counts)
    plain = load_unianimate_pipeline(folder, ckpt.unianimate, device="cpu", torch_dtype=torch.float32)
    assert not plain.step_distilled
    with pytest.raises(ValueError, match="step-distillation LoRA"):
        animate_item(plain, str(root / "ref.png"), str(root / "saved_pose/ref"), str(tmp_path / "x.mp4"),
                     height=32, width=32, max_frames=5, tiled=False, preset="fast")
    fast = load_unianimate_pipeline(folder, ckpt.unianimate, device="cpu", torch_dtype=torch.float32,
                                    extra_loras=[(str(distill), 0.5)])
    assert fast.step_distilled
    assert not torch.equal(fast.dit.blocks[0].self_attn.q.weight, plain.dit.blocks[0].self_attn.q.weight)
    steps = []
    handle = fast.dit.head.register_forward_hook(lambda *a: steps.append(1))
    out = animate_item(fast, str(root / "ref.png"), str(root / "saved_pose/ref"), str(tmp_path / "fast.mp4"),
                       height=32, width=32, max_frames=5, tiled=False, preset="fast")
    handle.remove()
    assert len(steps) == 4 and len(VideoData(video_file=out).raw_data()) == 5
