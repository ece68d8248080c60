"""WanModel: checkpoint layout, parity with diffusers, bad input (RoPE: test_rope.py)."""
from __future__ import annotations

import pytest
import torch

from diffsynth.configs import DIT_PRESETS, WanDiTConfig
from diffsynth.loading.diffusers_dit import dit_diffusers_to_official, dit_official_to_diffusers
from diffsynth.models.layers import sinusoidal_embedding
from diffsynth.models.wan_dit import WanModel
from tiny import TINY_I2V, TINY_T2V, randomize_


# ---------------------------------------------------------------------------------------- checkpoint layout
def official_dit_template(d, ffn, in_dim, layers, i2v, text_dim=4096, freq=256, img=1280):
    """Key -> shape of the official Wan2.1 DiT files, written from the spec's tables (wan-architecture 1.5)."""
    t = {
        "patch_embedding.weight": (d, in_dim, 1, 2, 2), "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, text_dim), "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d), "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, freq), "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d), "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d), "time_projection.1.bias": (6 * d,),
        "head.modulation": (1, 2, d), "head.head.weight": (64, d), "head.head.bias": (64,),
    }
    if i2v:
        t.update({"img_emb.proj.0.weight": (img,), "img_emb.proj.0.bias": (img,),
                  "img_emb.proj.1.weight": (img, img), "img_emb.proj.1.bias": (img,),
                  "img_emb.proj.3.weight": (d, img), "img_emb.proj.3.bias": (d,),
                  "img_emb.proj.4.weight": (d,), "img_emb.proj.4.bias": (d,)})
    for i in range(layers):
        p = f"blocks.{i}."
        t[p + "modulation"] = (1, 6, d)
        for attn in ("self_attn", "cross_attn"):
            for lin in "qkvo":
                t[f"{p}{attn}.{lin}.weight"], t[f"{p}{attn}.{lin}.bias"] = (d, d), (d,)
            t[f"{p}{attn}.norm_q.weight"] = t[f"{p}{attn}.norm_k.weight"] = (d,)
        t[p + "norm3.weight"] = t[p + "norm3.bias"] = (d,)
        if i2v:
            for lin in ("k_img", "v_img"):
                t[f"{p}cross_attn.{lin}.weight"], t[f"{p}cross_attn.{lin}.bias"] = (d, d), (d,)
            t[p + "cross_attn.norm_k_img.weight"] = (d,)
        t[p + "ffn.0.weight"], t[p + "ffn.0.bias"] = (ffn, d), (ffn,)
        t[p + "ffn.2.weight"], t[p + "ffn.2.bias"] = (d, ffn), (d,)
    return t


@pytest.mark.parametrize("name, template_args, n_params, n_tensors", [
    ("wan2.1-t2v-1.3b", (1536, 8960, 16, 30, False), 1_418_996_800, 825),
    ("wan2.1-t2v-14b", (5120, 13824, 16, 40, False), 14_288_491_584, 1095),
    ("wan2.1-i2v-14b", (5120, 13824, 36, 40, True), 16_394_878_784, 1303),
])
def test_preset_matches_official_checkpoint_layout(name, template_args, n_params, n_tensors):
    with torch.device("meta"):
        model = WanModel(WanDiTConfig.from_preset(name))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes == official_dit_template(*template_args)
    assert len(shapes) == n_tensors
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="wan2.1-i2v-14b"):
        WanDiTConfig.from_preset("wan2.1-i2v-13b")
    assert set(DIT_PRESETS) == {"wan2.1-t2v-1.3b", "wan2.1-t2v-14b", "wan2.1-i2v-14b"}


# ------------------------------------------------------------------------------------------ diffusers parity
def diffusers_peer(cfg: WanDiTConfig):
    from diffusers import WanTransformer3DModel

    return WanTransformer3DModel(
        patch_size=cfg.patch_size, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
        in_channels=cfg.in_dim, out_channels=cfg.out_dim, text_dim=cfg.text_dim, freq_dim=cfg.freq_dim,
        ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
        eps=cfg.eps, image_dim=cfg.image_dim if cfg.has_image_input else None,
        added_kv_proj_dim=cfg.dim if cfg.has_image_input else None, rope_max_seq_len=1024).eval()


def _run_pair(cfg, dtype, exact_sinusoid=False):
    peer = randomize_(diffusers_peer(cfg), seed=1, std=0.2).to(dtype)
    ours = WanModel(cfg).eval()
    ours.load_state_dict(dit_diffusers_to_official(peer.state_dict()), strict=True)
    ours.to(dtype)
    if exact_sinusoid:   # give diffusers the same float64 sinusoid, isolating everything else
        peer.condition_embedder.timesteps_proj.forward = lambda t: sinusoidal_embedding(256, t.double()).to(dtype)

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 3, 4, 6, generator=gen).to(dtype)
    t = torch.tensor([537.0], dtype=dtype)
    context = torch.randn(1, 512, cfg.text_dim, generator=gen).to(dtype)
    kwargs, peer_kwargs = {}, {}
    hidden = x
    if cfg.has_image_input:
        y = torch.randn(1, 20, 3, 4, 6, generator=gen).to(dtype)
        clip = torch.randn(1, 257, cfg.image_dim, generator=gen).to(dtype)
        kwargs = dict(y=y, clip_feature=clip)
        peer_kwargs = dict(encoder_hidden_states_image=clip)
        hidden = torch.cat([x, y], dim=1)
    with torch.no_grad():
        expected = peer(hidden, t, context, return_dict=False, **peer_kwargs)[0]
        got = ours(x, t, context, **kwargs)
    return got, expected


@pytest.mark.parametrize("cfg", [TINY_T2V, TINY_I2V], ids=["t2v", "i2v"])
def test_forward_matches_diffusers(cfg):
    got, expected = _run_pair(cfg, torch.float32)
    assert got.shape == expected.shape == (1, 16, 3, 4, 6)
    assert 0.5 < expected.abs().mean() < 5   # outputs of order 1, so the tolerance below is meaningful
    # diffusers builds the sinusoid in fp32 (ours in fp64), which sets the floor near 1e-5.
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("cfg", [TINY_T2V, TINY_I2V], ids=["t2v", "i2v"])
def test_forward_matches_diffusers_exactly_in_float64(cfg):
    got, expected = _run_pair(cfg, torch.float64, exact_sinusoid=True)
    # Remaining floor: diffusers keeps its RoPE cos/sin tables in fp32 buffers (~1e-7 relative).
    torch.testing.assert_close(got, expected, atol=2e-6, rtol=0)


def test_diffusers_key_mapping_round_trips():
    sd = WanModel(TINY_I2V).state_dict()
    mapped = dit_official_to_diffusers(sd)
    assert set(mapped) == set(diffusers_peer(TINY_I2V).state_dict())
    back = dit_diffusers_to_official(mapped)
    assert back.keys() == sd.keys() and all(back[k] is sd[k] for k in sd)
    assert mapped["blocks.0.attn2.add_k_proj.weight"] is sd["blocks.0.cross_attn.k_img.weight"]
    assert mapped["blocks.1.norm2.bias"] is sd["blocks.1.norm3.bias"]


# ------------------------------------------------------------------------------------------------- pieces
def test_sinusoid_layout_and_bf16_timestep_rounding():
    t = torch.tensor([0.0, 537.0])
    emb = sinusoidal_embedding(256, t)
    i = torch.arange(128, dtype=torch.float64)
    angle = 537.0 * 10000.0 ** (-i / 128)
    torch.testing.assert_close(emb[1].double(), torch.cat([angle.cos(), angle.sin()]), atol=1e-7, rtol=0)
    assert torch.equal(emb[0], torch.cat([torch.ones(128), torch.zeros(128)]))
    # the DiffSynth path feeds a bf16 timestep: 995.935 is rounded to 996 before the sinusoid
    bf = sinusoidal_embedding(256, torch.tensor([995.935], dtype=torch.bfloat16))
    assert bf.dtype == torch.bfloat16
    torch.testing.assert_close(bf.float(), sinusoidal_embedding(256, torch.tensor([996.0])).bfloat16().float())


def test_pose_condition_is_added_after_patch_embedding():
    model = randomize_(WanModel(TINY_T2V), std=0.3).eval()
    x, t, ctx = torch.randn(1, 16, 1, 4, 4), torch.tensor([500.0]), torch.randn(1, 7, 32)
    cond = torch.randn(1, 24, 1, 2, 2)
    with torch.no_grad():
        got = model(x, t, ctx, add_condition=cond)
        # independent composition: patch embedding, then + condition tokens, then the rest
        e, e0 = model.embed_timestep(t)
        tokens, grid = model.patchify(x)
        tokens = tokens + cond.flatten(2).transpose(1, 2)
        expected = model.unpatchify_head(model.forward_blocks(tokens, model.text_embedding(ctx), None, e0, grid), e, grid)
        plain = model(x, t, ctx)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain)


def test_gradient_checkpointing_gives_the_same_gradients():
    cfg = TINY_T2V
    model = randomize_(WanModel(cfg), std=0.3).train()
    x, t, ctx = torch.randn(1, 16, 2, 4, 4), torch.tensor([300.0]), torch.randn(1, 5, 32)
    grads = []
    for flags in [(False, False), (True, False), (True, True)]:
        model.zero_grad()
        model(x, t, ctx, use_gradient_checkpointing=flags[0], use_gradient_checkpointing_offload=flags[1]).square().mean().backward()
        grads.append(model.blocks[0].ffn[0].weight.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])
    torch.testing.assert_close(grads[2], grads[0])


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("change, message", [
    (dict(x=torch.randn(1, 17, 1, 4, 4)), "36 input channels"),
    (dict(y=None), "pass y"),
    (dict(x=torch.randn(1, 16, 1, 5, 4), y=torch.randn(1, 20, 1, 5, 4)), "multiples of 16"),
    (dict(context=torch.randn(1, 512, 31)), r"\[B, L, 32\]"),
    (dict(clip_feature=None), "clip_feature"),
    (dict(clip_feature=torch.randn(1, 257, 15)), "clip_feature"),
    (dict(add_condition=torch.randn(1, 24, 2, 2, 2)), "4k\\+1"),
    (dict(x=torch.randn(1, 16, 1, 4)), r"\[B, C, T, h, w\]"),
])
def test_bad_input_names_the_problem(change, message):
    model = WanModel(TINY_I2V)
    args = dict(x=torch.randn(1, 16, 1, 4, 4), timestep=torch.tensor([1.0]), context=torch.randn(1, 512, 32),
                clip_feature=torch.randn(1, 257, 16), y=torch.randn(1, 20, 1, 4, 4))
    args.update(change)
    with pytest.raises(ValueError, match=message):
        model(**args)
