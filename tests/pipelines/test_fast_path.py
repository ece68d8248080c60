"""The fast path on tiny real models: batched CFG, the step-distill preset, explicit schedules, the timing summary,
and the plain `WanVideoPipeline` (T2V and I2V) against loops written from the Wan data flow."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffsynth.loading import ModelManager
from diffsynth.models.wan_dit import WanModel
from diffsynth.pipelines import WanUniAnimateVideoPipeline, WanVideoPipeline
from diffsynth.pipelines.wan_video import size_for_reference
from diffsynth.tiny import TINY_CLIP, TINY_T5, TINY_VAE, build_tiny_models, save_tiny_checkpoints
from tests.tiny import TINY_T2V, randomize_

H, W, F = 32, 48, 5
quiet = dict(progress_bar_cmd=lambda x: x)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_models(str(tmp_path_factory.mktemp("tok")), seed=3)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    pose = torch.from_numpy(rng.integers(0, 255, (3, F, H, W))).float()
    ref_pose = torch.from_numpy(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return dict(prompt="a person is dancing", negative_prompt="blurry", input_image=image, dwpose_data=pose,
                random_ref_dwpose=ref_pose, height=H, width=W, num_frames=F, cfg_scale=1.5, num_inference_steps=3,
                seed=7, tiled=False, **quiet)


def uni(models):
    pipe = WanUniAnimateVideoPipeline.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)
    pipe.show_summary = False
    return pipe


def final_latents(pipe, monkeypatch, **kwargs):
    """Run a call and return its latents before decoding."""
    monkeypatch.setattr(pipe, "finish", lambda latents, *a, **k: latents)
    return pipe(**kwargs)


def batch_sizes(dit):
    sizes = []
    handle = dit.blocks[0].register_forward_pre_hook(lambda _m, args: sizes.append(args[0].shape[0]))
    return sizes, handle


# --------------------------------------------------------------------------------------------- batched CFG
def test_batched_cfg_equals_the_serial_branches(models, inputs, monkeypatch):
    pipe = uni(models)
    sizes, handle = batch_sizes(models.dit)
    serial = final_latents(pipe, monkeypatch, **inputs, cfg_batch=False)
    assert sizes == [1, 1] * 3                         # two forwards per step
    sizes.clear()
    batched = final_latents(pipe, monkeypatch, **inputs, cfg_batch=True)
    assert sizes == [2] * 3                            # one forward of batch 2 per step
    sizes.clear()
    auto = final_latents(pipe, monkeypatch, **inputs)  # on the CPU, "when memory allows" is always
    handle.remove()
    assert sizes == [2] * 3 and torch.equal(auto, batched)
    torch.testing.assert_close(batched, serial, rtol=1e-5, atol=1e-5)
    # pose tokens reach the conditional item only: with cfg_scale 0 the result is the unconditional branch, which
    # must not depend on the pose video
    other_pose = dict(inputs, dwpose_data=torch.flip(inputs["dwpose_data"], dims=[1]), cfg_scale=0.0)
    a = final_latents(pipe, monkeypatch, **dict(inputs, cfg_scale=0.0), cfg_batch=True)
    b = final_latents(pipe, monkeypatch, **other_pose, cfg_batch=True)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- fast preset
def test_fast_preset_refuses_without_a_step_distill_lora(models, inputs):
    pipe = uni(models)
    with pytest.raises(ValueError, match="step-distillation LoRA.*step_distilled = True"):
        pipe(**inputs, preset="fast")
    with pytest.raises(ValueError, match="preset must be one of"):
        pipe(**inputs, preset="turbo")


@torch.no_grad()
def test_fast_preset_runs_the_distill_schedule_with_renoising(models, inputs, monkeypatch):
    pipe = uni(models)
    pipe.step_distilled = True
    prompts = []
    hook = models.text_encoder.register_forward_hook(lambda *a: prompts.append(1))
    sizes, handle = batch_sizes(models.dit)
    got = final_latents(pipe, monkeypatch, **inputs, preset="fast")
    hook.remove(), handle.remove()
    assert len(prompts) == 1                           # cfg 1: the negative prompt is never encoded
    assert sizes == [1] * 4
    # Reference: the LightX2V loop written out (x0 = x - sigma v, re-noised with the next draw of the seeded
    # generator), on the pipeline's own encodings.
    u = torch.tensor([1.0, 0.75, 0.5, 0.25])
    sigmas = 5 * u / (1 + 4 * u)
    ctx, _ = pipe.encode_prompts(inputs["prompt"], "", 1.0)
    clip, y = pipe.encode_reference(inputs["input_image"], H, W, F, inputs["random_ref_dwpose"])
    pose = pipe.encode_pose_video(inputs["dwpose_data"])
    gen = torch.Generator().manual_seed(inputs["seed"])
    x = torch.randn(1, 16, 2, H // 8, W // 8, generator=gen)
    for i, sigma in enumerate(sigmas):
        v = models.dit(x, (sigma * 1000)[None], ctx, clip_feature=clip, y=y, add_condition=pose)
        x0 = x - sigma * v
        if i + 1 < len(sigmas):
            x = (1 - sigmas[i + 1]) * x0 + sigmas[i + 1] * torch.randn(x.shape, generator=gen)
        else:
            x = x0
    torch.testing.assert_close(got, x, rtol=1e-5, atol=1e-5)


def test_step_distill_lora_is_recognised_by_its_file_name(models, tmp_path):
    ckpt = save_tiny_checkpoints(models, str(tmp_path))

    def pipe_with(lora_path):
        manager = ModelManager(device="cpu", progress=False)
        manager.load_models([ckpt.image_encoder], torch_dtype=torch.float32, config=TINY_CLIP)
        manager.load_models([ckpt.dit_shards, ckpt.text_encoder, ckpt.vae], torch_dtype=torch.float32,
                            config=[TINY_T5, TINY_VAE])
        manager.load_lora_v2(lora_path)
        return WanUniAnimateVideoPipeline.from_model_manager(manager, torch_dtype=torch.float32, device="cpu")

    assert not pipe_with(ckpt.unianimate).step_distilled
    renamed = tmp_path / "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.ckpt"
    shutil.copy(ckpt.unianimate, renamed)
    assert pipe_with(str(renamed)).step_distilled


def test_explicit_step_list_without_preset(models, inputs, monkeypatch):
    pipe = uni(models)
    sizes, handle = batch_sizes(models.dit)
    final_latents(pipe, monkeypatch, **inputs, denoising_step_list=[1000, 500], cfg_batch=False)
    handle.remove()
    assert len(sizes) == 4                             # 2 steps x 2 branches; num_inference_steps=3 ignored
    torch.testing.assert_close(pipe.scheduler.timesteps, torch.tensor([1000.0, 5 * 0.5 / 3 * 1000]))


# -------------------------------------------------------------------------------------------------- summary
def test_summary_line_and_timings(models, inputs, capsys):
    pipe = uni(models)
    pipe.show_summary = True
    pipe(**inputs)
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("generated 5 frames in") and "denoise" in line and "s/step over 3 steps" in line
    timings = pipe.last_timings
    assert set(timings["stages_s"]) == {"encode", "pose", "denoise", "decode"} and timings["steps"] == 3
    # each figure is rounded to 1 ms: the rounded stages may exceed the rounded total by half a ms each, plus its own
    assert timings["total_s"] >= sum(timings["stages_s"].values()) - 0.5e-3 * (len(timings["stages_s"]) + 1)
    pipe.show_summary = False
    pipe(**inputs)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------------------------- WanVideoPipeline
def test_top_level_snippet_of_the_seed_imports():
    from diffsynth import ModelManager, VideoData, WanUniAnimateVideoPipeline, WanVideoPipeline, save_video  # noqa
    assert WanVideoPipeline.__name__ == "WanVideoPipeline"


def test_i2v_size_follows_the_reference_aspect_by_area():
    assert size_for_reference(1280, 720) == (464, 832)           # sqrt(399360 * 9/16) = 474 -> 464
    assert size_for_reference(720, 1280) == (832, 464)
    assert size_for_reference(1000, 1000) == (624, 624)          # sqrt(399360) = 631.9 -> 624
    h, w = size_for_reference(1280, 720, max_area=720 * 1280)
    assert (h, w) == (720, 1280)


def plain_reference(dit, m, prompt, negative, steps, cfg, seed, image=None, shift=5.0):
    """Wan2.1 T2V/I2V sampling written out with the plain forward (no pipeline code)."""
    ctx = m.prompter.encode_prompt(m.text_encoder, prompt)
    ctx_neg = m.prompter.encode_prompt(m.text_encoder, negative)
    clip = y = None
    if image is not None:
        img = torch.from_numpy(np.array(image.resize((W, H), Image.BICUBIC))).float().permute(2, 0, 1)[None]
        img = img / 127.5 - 1
        clip = m.image_encoder.encode_image(img)
        latent = m.vae.encode(torch.cat([img[:, :, None], torch.zeros(1, 3, F - 1, H, W)], dim=2), progress=False)
        mask = torch.zeros(1, 4, *latent.shape[2:])
        mask[:, :, 0] = 1
        y = torch.cat([mask, latent], dim=1)
    x = torch.randn(1, 16, 2, H // 8, W // 8, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.linspace(1, 0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    for i, sigma in enumerate(sigmas):
        t = (sigma * 1000)[None]
        v = dit(x, t, ctx, clip_feature=clip, y=y)
        v_neg = dit(x, t, ctx_neg, clip_feature=clip, y=y)
        x = x + (v_neg + cfg * (v - v_neg)) * ((sigmas[i + 1] if i + 1 < steps else 0.0) - sigma)
    return x


@torch.no_grad()
@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_wan_video_pipeline_equals_the_written_out_loop(models, inputs, task, monkeypatch):
    dit = models.dit if task == "i2v" else randomize_(WanModel(TINY_T2V), seed=5, std=0.2).eval()
    pipe = WanVideoPipeline.from_models(dit=dit, vae=models.vae, text_encoder=models.text_encoder,
                                        image_encoder=models.image_encoder if task == "i2v" else None,
                                        prompter=models.prompter, device="cpu", torch_dtype=torch.float32)
    pipe.show_summary = False
    image = inputs["input_image"] if task == "i2v" else None
    args = dict(prompt="a cat", negative_prompt="blurry", input_image=image, height=H, width=W, num_frames=F,
                cfg_scale=2.0, num_inference_steps=3, seed=11, tiled=False, **quiet)
    frames = pipe(**args)
    assert len(frames) == F and frames[0].size == (W, H)
    got = final_latents(pipe, monkeypatch, **args, cfg_batch=False)
    expected = plain_reference(dit, models, "a cat", "blurry", 3, 2.0, 11, image)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_wan_video_pipeline_checks_the_task(models, inputs):
    pipe = WanVideoPipeline.from_models(dit=models.dit, vae=models.vae, text_encoder=models.text_encoder,
                                        image_encoder=models.image_encoder, prompter=models.prompter, device="cpu",
                                        torch_dtype=torch.float32)
    with pytest.raises(ValueError, match="I2V DiT: pass input_image"):
        pipe(prompt="a cat", height=H, width=W, num_frames=F, **quiet)
    with pytest.raises(ValueError, match="needs the CLIP"):
        WanVideoPipeline.from_models(dit=models.dit, vae=models.vae, text_encoder=models.text_encoder,
                                     prompter=models.prompter, device="cpu")


# ------------------------------------------------------------------------------------------------ step caches
@pytest.mark.parametrize("config", ["tea", "mag"])
def test_cache_plan_predicts_the_steps_a_call_computes(models, inputs, config, monkeypatch):
    from diffsynth.acceleration import MagCacheConfig, TeaCacheConfig
    step_cache = TeaCacheConfig(1000.0, "Wan2.1-I2V-14B-720P") if config == "tea" else \
        MagCacheConfig(threshold=0.3, K=3, retention_ratio=0.2)
    pipe = uni(models)
    plan = pipe.cache_plan(10, step_cache=step_cache, cfg_scale=1.5)
    made = []
    real_new = pipe.step_caches
    monkeypatch.setattr(pipe, "step_caches", lambda *a: made.extend(real_new(*a)) or made[-2:])
    calls = []
    handle = models.dit.blocks[0].register_forward_pre_hook(lambda _m, args: calls.append(args[0].shape[0]))
    pipe(**dict(inputs, num_inference_steps=10), step_cache=step_cache)
    handle.remove()
    positive, negative = made
    assert plan["positive"] == [i not in positive.skipped_steps for i in range(10)]
    assert plan["negative"] == [i not in negative.skipped_steps for i in range(10)]
    assert 0 < plan["computed"]["positive"] < 10      # the settings skip some steps (random tiny DiT: big thresholds)
    assert sum(calls) == plan["computed"]["positive"] + plan["computed"]["negative"]   # items the blocks ran on


def test_magcache_with_zero_threshold_changes_nothing(models, inputs, monkeypatch):
    from diffsynth.acceleration import MagCacheConfig
    pipe = uni(models)
    plain = final_latents(pipe, monkeypatch, **dict(inputs, num_inference_steps=6))
    cached = final_latents(pipe, monkeypatch, **dict(inputs, num_inference_steps=6),
                           step_cache=MagCacheConfig(threshold=0.0))
    assert torch.equal(plain, cached)
    skipping = final_latents(pipe, monkeypatch, **dict(inputs, num_inference_steps=6),
                             step_cache=MagCacheConfig(threshold=10.0, K=4))
    assert not torch.equal(plain, skipping)


@pytest.mark.slow
def test_compiled_blocks_give_the_same_video(models, inputs, monkeypatch):
    """torch.compile of the DiT blocks (inductor on the CPU: ~30 s of compiling for the tiny DiT)."""
    import copy
    pipe = uni(models)
    plain = final_latents(pipe, monkeypatch, **inputs)
    compiled = uni(copy.deepcopy(models))
    compiled.compile()
    with pytest.raises(RuntimeError, match="before pipe.compile"):
        compiled.enable_vram_management(0)
    torch.testing.assert_close(final_latents(compiled, monkeypatch, **inputs), plain, rtol=1e-4, atol=1e-4)
    streamed = uni(copy.deepcopy(models))
    streamed.enable_vram_management(0)
    with pytest.raises(RuntimeError, match="cannot follow enable_vram_management"):
        streamed.compile()


def test_wan_video_pipeline_from_the_model_manager(models, inputs, tmp_path):
    ckpt = save_tiny_checkpoints(models, str(tmp_path))
    manager = ModelManager(device="cpu", progress=False)
    manager.load_models([ckpt.image_encoder], torch_dtype=torch.float32, config=TINY_CLIP)
    manager.load_models([ckpt.dit_shards, ckpt.text_encoder, ckpt.vae], torch_dtype=torch.float32,
                        config=[TINY_T5, TINY_VAE])
    pipe = WanVideoPipeline.from_model_manager(manager, torch_dtype=torch.float32, device="cpu")
    pipe.show_summary = False
    assert pipe.is_i2v and pipe.prompter.tokenizer is not None and not pipe.step_distilled
    frames = pipe(prompt="a cat", input_image=inputs["input_image"], height=H, width=W, num_frames=F,
                  num_inference_steps=1, seed=0, tiled=False, **quiet)
    assert len(frames) == F


@torch.no_grad()
def test_video_to_video_starts_from_the_input_noised_to_the_first_sigma(models, inputs):
    """initial_latents with input_video at strength 0.5: (1 - sigma0) * encoded + sigma0 * seeded noise."""
    from diffsynth.pipelines import GenerationRequest
    from diffsynth.pipelines.denoise import NoiseSource
    from diffsynth.pipelines.schedule import make_scheduler

    pipe = uni(models)
    request = GenerationRequest(num_inference_steps=10, denoising_strength=0.5, height=H, width=W, num_frames=5,
                                tiled=False)
    scheduler = make_scheduler(request)
    sigma0 = float(scheduler.sigmas[0])
    assert len(scheduler.timesteps) == 10 and 0.1 < sigma0 < 0.9
    video = [inputs["input_image"].resize((W, H))] * F
    shape = (1, 16, 2, H // 8, W // 8)
    got = pipe.initial_latents(request, NoiseSource(3, "cpu", pipe.device, torch.float32), scheduler, video)
    encoded = pipe.encode_input_video(video, request)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, (1 - sigma0) * encoded + sigma0 * noise, rtol=1e-6, atol=1e-6)
    plain = pipe.initial_latents(request, NoiseSource(3, "cpu", pipe.device, torch.float32), scheduler, None)
    torch.testing.assert_close(plain, noise, rtol=0, atol=0)
