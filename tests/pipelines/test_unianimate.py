"""WanUniAnimateVideoPipeline on tiny real models: equals a reference written from the spec, TeaCache, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from diffsynth.acceleration import TEACACHE_COEFFICIENTS, TeaCache
from diffsynth.loading import ModelManager
from diffsynth.pipelines import WanUniAnimateVideoPipeline
from diffsynth.tiny import TINY_CLIP, TINY_T5, TINY_VAE, build_tiny_models, save_tiny_checkpoints

H, W, F = 32, 48, 5


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return build_tiny_models(str(tmp_path_factory.mktemp("tok")), seed=3)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))      # resized by the pipeline
    pose = torch.from_numpy(rng.integers(0, 255, (3, F, H, W))).float()
    ref_pose = torch.from_numpy(rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
    return image, pose, ref_pose


def make_pipe(models):
    return WanUniAnimateVideoPipeline.from_models(**vars(models), device="cpu", torch_dtype=torch.float32)


@torch.no_grad()
def reference_generation(m, image, pose, ref_pose, prompt, negative, steps, cfg, seed, shift=5.0):
    """Written from upstream spec 3.3 with the plain `WanModel.forward`, independently of the pipeline code."""
    ctx = m.prompter.encode_prompt(m.text_encoder, prompt)
    ctx_neg = m.prompter.encode_prompt(m.text_encoder, negative)
    img = torch.from_numpy(np.array(image.resize((W, H), Image.BICUBIC))).float().permute(2, 0, 1)[None] / 127.5 - 1
    clip = m.image_encoder.encode_image(img)
    latent = m.vae.encode(torch.cat([img[:, :, None], torch.zeros(1, 3, F - 1, H, W)], dim=2), progress=False)
    T = latent.shape[2]
    flags = torch.zeros(F)
    flags[0] = 1
    flags = torch.cat([flags[:1].repeat(3), flags]).view(T, 4).t()                   # [4, T]
    mask = flags[None, :, :, None, None].expand(1, 4, T, H // 8, W // 8)
    y = torch.cat([mask, latent], dim=1)
    y = y + m.pose_guider.randomref_embedding_pose(ref_pose.permute(2, 0, 1)[None].float() / 255).unsqueeze(2)
    video = pose[None] / 255
    pose_emb = m.pose_guider.dwpose_embedding(torch.cat([video[:, :, :1]] * 3 + [video], dim=2))
    x = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    sigmas = torch.linspace(1, 0, steps + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    for i, sigma in enumerate(sigmas):
        t = (sigma * 1000)[None]
        v = m.dit(x, t, ctx, clip_feature=clip, y=y, add_condition=pose_emb)
        v_neg = m.dit(x, t, ctx_neg, clip_feature=clip, y=y)
        v = v_neg + cfg * (v - v_neg)
        x = x + v * ((sigmas[i + 1] if i + 1 < steps else 0.0) - sigma)
    out = m.vae.decode(x, progress=False)[0]
    return ((out.permute(1, 2, 3, 0) + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()


def run(pipe, inputs, **kwargs):
    image, pose, ref_pose = inputs
    args = dict(prompt="a person is dancing", negative_prompt="blurry", input_image=image, dwpose_data=pose,
                random_ref_dwpose=ref_pose, height=H, width=W, num_frames=F, cfg_scale=1.5, num_inference_steps=3,
                seed=7, tiled=False, progress_bar_cmd=lambda x: x)
    args.update(kwargs)
    return np.stack([np.asarray(f) for f in pipe(**args)])


def test_pipeline_equals_reference_written_from_the_spec(models, inputs):
    got = run(make_pipe(models), inputs)
    expected = reference_generation(models, *inputs, "a person is dancing", "blurry", steps=3, cfg=1.5, seed=7)
    assert got.shape == (F, H, W, 3)
    assert expected.std() > 5                       # a real picture, not a constant
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1 and diff.mean() < 0.01   # uint8 truncation may flip a level on float noise


def test_pose_tokens_matter_and_seed_is_reproducible(models, inputs):
    pipe = make_pipe(models)
    a, b = run(pipe, inputs), run(pipe, inputs)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, run(pipe, inputs, seed=8))
    image, pose, ref_pose = inputs
    assert not np.array_equal(a, run(pipe, (image, torch.flip(pose, dims=[1]), ref_pose)))


def test_teacache_with_zero_threshold_changes_nothing(models, inputs):
    pipe = make_pipe(models)
    plain = run(pipe, inputs, num_inference_steps=4)
    cached = run(pipe, inputs, num_inference_steps=4, tea_cache_l1_thresh=0.0, tea_cache_model_id="Wan2.1-I2V-14B-720P")
    assert np.array_equal(plain, cached)


def test_teacache_rule_matches_an_independent_computation():
    gen = torch.Generator().manual_seed(0)
    mods = [torch.randn(1, 6, 8, generator=gen) * (1 + 0.05 * i) for i in range(8)]
    thresh, model_id = 0.05, "Wan2.1-I2V-14B-480P"
    cache = TeaCache(8, thresh, model_id)
    decisions = []
    for m in mods:
        decisions.append(cache.should_compute(m))
        if decisions[-1]:
            cache.store(torch.zeros(1), torch.ones(1))
    # reference: the upstream rule written out
    poly = np.poly1d(TEACACHE_COEFFICIENTS[model_id])
    acc, expected = 0.0, []
    for i, m in enumerate(mods):
        if i in (0, 7):
            expected.append(True)
            acc = 0.0
            continue
        prev = mods[i - 1]
        acc += poly(((m - prev).abs().mean() / prev.abs().mean()).item())
        expected.append(bool(acc >= thresh))
        if acc >= thresh:
            acc = 0.0
    assert decisions == expected
    assert cache.step == 0                          # wrapped for the next generation
    assert cache.skipped_steps == [i for i, d in enumerate(expected) if not d]


def test_teacache_skips_reuse_the_residual(models, inputs):
    pipe = make_pipe(models)
    plain = run(pipe, inputs, num_inference_steps=5)
    cached = run(pipe, inputs, num_inference_steps=5, tea_cache_l1_thresh=1e9, tea_cache_model_id="Wan2.1-I2V-14B-720P")
    assert not np.array_equal(plain, cached)        # steps 1..3 were skipped
    with pytest.raises(ValueError, match="Wan2.1-I2V-14B-720P"):
        run(pipe, inputs, tea_cache_l1_thresh=0.3, tea_cache_model_id="wan-21")


@pytest.mark.parametrize("change, message", [
    (dict(input_image=None), "input_image is required"),
    (dict(dwpose_data=None), "run_align_pose"),
    (dict(num_frames=6), "4k\\+1"),
    (dict(height=40), "multiples of 16"),
    (dict(num_frames=9), r"expected \[3, num_frames, height, width\]"),
    (dict(random_ref_dwpose=torch.zeros(H, W + 16, 3, dtype=torch.uint8)), r"\[height, width, 3\]"),
])
def test_bad_input_names_the_fix(models, inputs, change, message):
    with pytest.raises(ValueError, match=message):
        run(make_pipe(models), inputs, **change)


def test_from_models_needs_a_tokenizer(models):
    parts = {k: v for k, v in vars(models).items() if k != "prompter"}
    with pytest.raises(ValueError, match="tokenizer_path"):
        WanUniAnimateVideoPipeline.from_models(**parts, device="cpu")


def test_from_model_manager_needs_the_unianimate_checkpoint(models, tmp_path):
    ckpt = save_tiny_checkpoints(models, str(tmp_path))
    manager = ModelManager(device="cpu", progress=False)
    manager.load_models([ckpt.image_encoder], torch_dtype=torch.float32, config=TINY_CLIP)
    manager.load_models([ckpt.dit_shards, ckpt.text_encoder, ckpt.vae], torch_dtype=torch.float32,
                        config=[TINY_T5, TINY_VAE])
    with pytest.raises(Exception, match="load_lora_v2"):
        WanUniAnimateVideoPipeline.from_model_manager(manager, torch_dtype=torch.float32, device="cpu")
    manager.load_lora_v2(ckpt.unianimate, lora_alpha=1.0)
    pipe = WanUniAnimateVideoPipeline.from_model_manager(manager, torch_dtype=torch.float32, device="cpu")
    assert pipe.pose_guider.dwpose_embedding[12].out_channels == models.dit.config.dim
    # the LoRA was merged into the loaded DiT, not into the in-memory original
    q_loaded, q_orig = pipe.dit.blocks[0].self_attn.q.weight, models.dit.blocks[0].self_attn.q.weight
    assert not torch.equal(q_loaded, q_orig)


def test_cpu_offload_keeps_models_that_run_together_on_the_device():
    """CLIP and the VAE both run in encode_reference_image: onloading one must not send the other back."""
    pipe = WanUniAnimateVideoPipeline(device="meta", torch_dtype=torch.float32)
    for name in ("text_encoder", "image_encoder", "vae", "dit", "pose_guider"):
        setattr(pipe, name, torch.nn.Linear(2, 2))
    pipe.enable_cpu_offload()
    assert pipe._onload("image_encoder", "vae") is pipe.image_encoder
    assert pipe.image_encoder.weight.is_meta and pipe.vae.weight.is_meta
    assert not pipe.dit.weight.is_meta and not pipe.text_encoder.weight.is_meta
