"""Pipeline inputs and placement on tiny real models: argument checks before any model runs, video-to-video tiling,
long-video input_video, CPU-offload placement per stage, pose-guider dtype."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from diffsynth.loading import ModelManager
from diffsynth.pipelines import WanUniAnimateLongVideoPipeline, WanUniAnimateVideoPipeline, load_pose_data
from diffsynth.tiny import TINY_CLIP, TINY_T5, TINY_VAE, build_tiny_models, save_tiny_checkpoints

H, W, F = 32, 32, 5
MODEL_NAMES = ("text_encoder", "image_encoder", "vae", "dit", "pose_guider")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_models(str(tmp_path_factory.mktemp("tok")), seed=5)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    pose = torch.from_numpy(rng.integers(0, 255, (3, F, H, W))).float()
    ref_pose = torch.from_numpy(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return image, pose, ref_pose


def make(cls, models):
    return cls.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)


def call_args(inputs, **change):
    image, pose, ref_pose = inputs
    args = dict(prompt="a person is dancing", negative_prompt="", input_image=image, dwpose_data=pose,
                random_ref_dwpose=ref_pose, height=H, width=W, num_frames=F, cfg_scale=1.5, num_inference_steps=2,
                seed=0, tiled=False, progress_bar_cmd=lambda x: x)
    args.update(change)
    return args


def frames_of(output):
    return np.stack([np.asarray(f) for f in output])


# ----------------------------------------------------------------------------------------- argument checks
@pytest.mark.parametrize("change, argument", [
    (dict(prompt=None), "prompt"),
    (dict(negative_prompt=None), "negative_prompt"),
    (dict(input_image=np.zeros((40, 40, 3), np.uint8)), "input_image"),
    (dict(height=0), "height"),
    (dict(width=0), "width"),
    (dict(num_frames=0), "num_frames"),
    (dict(cfg_scale=float("nan")), "cfg_scale"),
    (dict(cfg_scale=float("inf")), "cfg_scale"),
    (dict(num_inference_steps=0), "num_inference_steps"),
    (dict(denoising_strength=0.0), "denoising_strength"),
    (dict(dwpose_data=np.zeros((3, F, H, W))), "dwpose_data"),
])
@pytest.mark.parametrize("cls", [WanUniAnimateVideoPipeline, WanUniAnimateLongVideoPipeline])
def test_bad_arguments_are_named_before_any_model_runs(models, inputs, cls, change, argument):
    pipe = make(cls, models)
    ran = []
    hooks = [getattr(pipe, name).register_forward_pre_hook(lambda *_, n=name: ran.append(n)) for name in MODEL_NAMES]
    try:
        with pytest.raises(ValueError, match=rf"\b{argument}\b"):
            pipe(**call_args(inputs, **change))
    finally:
        for hook in hooks:
            hook.remove()
    assert ran == []


def test_load_pose_data_rejects_no_frames_and_bad_sizes():
    pose = Image.new("RGB", (8, 8))
    with pytest.raises(ValueError, match="pose_images"):
        load_pose_data([], pose, 16, 16)
    with pytest.raises(ValueError, match="height and width"):
        load_pose_data([pose], pose, 0, 16)


# ------------------------------------------------------------------------------------------ video-to-video
def spy_encode(monkeypatch, vae):
    calls = []
    real = vae.encode

    def encode(video, **kwargs):
        calls.append((video.shape[2], kwargs))
        return real(video, **kwargs)
    monkeypatch.setattr(vae, "encode", encode)
    return calls


@pytest.mark.parametrize("cls", [WanUniAnimateVideoPipeline, WanUniAnimateLongVideoPipeline])
def test_input_video_is_encoded_with_the_calls_tiling(models, inputs, monkeypatch, cls):
    pipe = make(cls, models)
    calls = spy_encode(monkeypatch, pipe.vae)
    video = [Image.fromarray(np.full((H, W, 3), 40 * i, np.uint8)) for i in range(F)]
    pipe(**call_args(inputs, input_video=video, denoising_strength=0.6, tiled=True, tile_size=(2, 2),
                     tile_stride=(1, 1)))
    video_calls = [kwargs for frames, kwargs in calls if frames == F and kwargs.get("tile_size") == (2, 2)]
    assert video_calls == [dict(tiled=True, tile_size=(2, 2), tile_stride=(1, 1), progress=False)]


@pytest.mark.parametrize("cls", [WanUniAnimateVideoPipeline, WanUniAnimateLongVideoPipeline])
def test_a_small_denoising_strength_returns_the_input_video(models, inputs, cls):
    """At strength 0.01 the result is the input video through the VAE, computed here without the pipeline (the
    long pipeline's private frames included: they start from the noised input too)."""
    pipe = make(cls, models)
    rng = np.random.default_rng(2)
    video = [Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)) for _ in range(F)]
    out = frames_of(pipe(**call_args(inputs, input_video=video, denoising_strength=0.01, sigma_shift=1.0)))
    pixels = torch.from_numpy(np.stack([np.asarray(f) for f in video])).float().permute(3, 0, 1, 2)[None]
    with torch.no_grad():
        decoded = models.vae.decode(models.vae.encode(pixels / 127.5 - 1, progress=False), progress=False)[0]
    expected = ((decoded.permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).numpy()
    plain = frames_of(pipe(**call_args(inputs)))
    assert np.abs(out - expected).mean() < 0.1 * np.abs(plain - expected).mean()


# -------------------------------------------------------------------------------------------- CPU offload
def test_cpu_offload_places_each_stage_on_the_device_alone(models, inputs):
    """Which models sit on the compute device while each model runs (the real tiny models, a full call)."""
    pipe = make(WanUniAnimateVideoPipeline, models)
    pipe.enable_cpu_offload()
    seen = []
    hooks = [module.register_forward_pre_hook(lambda *_, n=name: seen.append((n, tuple(pipe.models_on_device()))))
             for name in MODEL_NAMES for module in getattr(pipe, name).modules()]   # models may skip their forward
    moves = []
    for name in MODEL_NAMES:
        model = getattr(pipe, name)
        real_to = model.to
        model.to = lambda *a, _real=real_to, _n=name, **k: (moves.append((_n, str(a[0]) if a else k)), _real(*a, **k))[1]
    try:
        pipe(**call_args(inputs, tiled=False))
    finally:
        for hook in hooks:
            hook.remove()
        for name in MODEL_NAMES:
            del getattr(pipe, name).to
    placement = {}
    for name, on_device in seen:
        placement.setdefault(name, set()).add(on_device)
    assert placement["text_encoder"] == {("text_encoder",)}
    assert placement["image_encoder"] == {("image_encoder", "vae")}          # CLIP and VAE encode together
    assert placement["dit"] == {("dit",)}
    assert placement["pose_guider"] == {("pose_guider",)}
    assert ("vae",) in placement["vae"]                                        # the final decode
    assert pipe.models_on_device() == []                                       # everything back after the call
    assert {name for name, _ in moves} == set(MODEL_NAMES)                    # every model was moved ...
    assert all(device == "cpu" for _, device in moves)                         # ... between CPU and the device


def test_without_offload_models_stay_where_they_are(models, inputs):
    pipe = make(WanUniAnimateVideoPipeline, models)
    pipe(**call_args(inputs))
    assert pipe.models_on_device() == list(MODEL_NAMES)


# --------------------------------------------------------------------------------------- pose guider dtype
def test_pose_guider_stays_fp32_in_a_bf16_pipeline(models, tmp_path):
    ckpt = save_tiny_checkpoints(models, str(tmp_path))
    manager = ModelManager(device="cpu", progress=False)
    manager.load_models([ckpt.image_encoder], torch_dtype=torch.float32, config=TINY_CLIP)
    manager.load_models([ckpt.dit_shards, ckpt.text_encoder, ckpt.vae], torch_dtype=torch.bfloat16,
                        config=[TINY_T5, TINY_VAE])
    manager.load_lora_v2(ckpt.unianimate, lora_alpha=1.0)
    pipe = WanUniAnimateVideoPipeline.from_model_manager(manager, torch_dtype=torch.bfloat16, device="cpu")
    assert {p.dtype for p in pipe.pose_guider.parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.dit.parameters()} == {torch.bfloat16}
    tokens = pipe.encode_pose_video(torch.zeros(3, F, H, W))
    assert tokens.dtype == torch.bfloat16                                      # cast at the DiT boundary


# -------------------------------------------------------------------------------------------------- TeaCache


@pytest.mark.parametrize("budget", [float("nan"), "6e9", -1, True])
def test_a_bad_vram_budget_is_refused_naming_it(budget):
    from diffsynth.models.wan_dit import WanModel
    from tiny import TINY_I2V

    pipe = WanUniAnimateVideoPipeline(device="cpu", torch_dtype=torch.float32)
    pipe.dit = WanModel(TINY_I2V)
    with pytest.raises(ValueError, match="num_persistent_param_in_dit must be None"):
        pipe.enable_vram_management(num_persistent_param_in_dit=budget)
    assert not pipe.cpu_offload                          # refused before anything changed


def test_nan_pose_frames_and_fractional_windows_are_refused_naming_them():
    from diffsynth.pipelines import WindowSettings

    pipe = WanUniAnimateVideoPipeline(device="cpu", torch_dtype=torch.float32)
    image = Image.new("RGB", (32, 32))
    pose = torch.zeros(3, 5, 32, 32)
    pose[0, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="dwpose_data holds NaN"):
        pipe(prompt="", input_image=image, dwpose_data=pose, random_ref_dwpose=torch.zeros(32, 32, 3),
             height=32, width=32, num_frames=5)
    for field, value in (("context_size", 21.5), ("context_overlap", 4.0), ("pose_chunk_size", 0)):
        with pytest.raises(ValueError, match=field):
            WindowSettings(**{field: value})
