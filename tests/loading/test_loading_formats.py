"""Structural detection and config-from-shapes, on full-size layouts built on the meta device (no memory)."""
from __future__ import annotations

import json

import pytest
import torch

from loading.loading_helpers import TINY_CLIP, prefixed
from tiny import TINY_I2V
from diffsynth.configs import DIT_PRESETS, ClipVisionConfig, UMT5Config, WanVAEConfig
from diffsynth.loading.diffusers_dit import dit_official_to_diffusers
from diffsynth.loading.diffusers_vae import vae_official_to_diffusers
from diffsynth.loading.formats import ConfigError, UnknownFormatError, detect, dit_config_from, read_config_json
from diffsynth.loading.transformers_keys import clip_visual_official_to_transformers, t5_official_to_transformers
from diffsynth.models.wan_dit import WanModel
from diffsynth.models.wan_image_encoder import WanImageEncoder
from diffsynth.models.wan_text_encoder import WanTextEncoder
from diffsynth.models.wan_vae import WanVideoVAE


def _meta(build, config):
    with torch.device("meta"):
        return build(config)


def _meta_state_dict(build, config):
    return _meta(build, config).state_dict()


def _shapes(state_dict):
    return {k: tuple(v.shape) for k, v in state_dict.items()}


@pytest.mark.parametrize("preset", sorted(DIT_PRESETS))
@pytest.mark.parametrize("naming", ["official", "diffusers", "comfyui"])
def test_released_dit_sizes_are_detected_with_their_config(preset, naming):
    sd = _meta_state_dict(WanModel, DIT_PRESETS[preset])
    if naming == "diffusers":
        sd = dit_official_to_diffusers(sd)
    elif naming == "comfyui":
        sd = prefixed(sd, "model.diffusion_model.")
    det = detect(_shapes(sd))
    assert det.model == "wan_video_dit"
    assert det.layout.name == ("diffusers" if naming == "diffusers" else "official")
    assert det.prefix == ("model.diffusion_model." if naming == "comfyui" else "")
    assert dit_config_from(det.official_shapes) == DIT_PRESETS[preset]


def test_i2v_and_t2v_are_told_apart_by_structure():
    i2v = detect(_shapes(_meta_state_dict(WanModel, DIT_PRESETS["wan2.1-i2v-14b"])))
    t2v = detect(_shapes(_meta_state_dict(WanModel, DIT_PRESETS["wan2.1-t2v-14b"])))
    assert dit_config_from(i2v.official_shapes).model_type == "i2v"
    assert dit_config_from(t2v.official_shapes).model_type == "t2v"
    assert "blocks.0.cross_attn.k_img.weight" in i2v.official_shapes


@pytest.mark.parametrize("naming", ["official", "transformers"])
def test_umt5_xxl_is_detected_with_its_config(naming):
    sd = _meta_state_dict(WanTextEncoder, UMT5Config())
    if naming == "transformers":
        sd = t5_official_to_transformers(sd)
    det = detect(_shapes(sd))
    assert (det.model, det.layout.name) == ("wan_video_text_encoder", naming)
    from diffsynth.loading.formats import t5_config_from
    assert t5_config_from(det.official_shapes) == UMT5Config()


@pytest.mark.parametrize("naming", ["official", "transformers"])
def test_clip_vit_h_is_detected_and_the_text_tower_ignored(naming):
    sd = _meta_state_dict(WanImageEncoder, ClipVisionConfig())
    if naming == "official":
        sd["textual.token_embedding.weight"] = torch.empty(514, 1024, device="meta")
        sd["log_scale"] = torch.empty((), device="meta")
    else:
        sd = clip_visual_official_to_transformers(sd)
        sd["text_model.embeddings.token_embedding.weight"] = torch.empty(49408, 1024, device="meta")
        sd["logit_scale"] = torch.empty((), device="meta")
    det = detect(_shapes(sd))
    assert (det.model, det.layout.name) == ("wan_video_image_encoder", naming)
    assert len(det.ignored) == 2 and not any(k.startswith(("textual", "text_model")) for k in det.official_shapes)
    from diffsynth.loading.formats import clip_config_from
    assert clip_config_from(det.official_shapes) == ClipVisionConfig()


@pytest.mark.parametrize("naming", ["official", "diffusers", "model_prefix"])
def test_wan_vae_is_detected_with_its_config(naming):
    sd = _meta_state_dict(WanVideoVAE, WanVAEConfig())
    sd = {"diffusers": vae_official_to_diffusers, "official": dict,
          "model_prefix": lambda s: prefixed(s, "model.")}[naming](sd)
    det = detect(_shapes(sd))
    assert det.model == "wan_video_vae"
    from diffsynth.loading.formats import vae_config_from
    assert vae_config_from(det.official_shapes) == WanVAEConfig()


def test_vae_config_reads_stages_and_temporal_flags():
    cfg = WanVAEConfig(dim=8, z_dim=16, dim_mult=(1, 2, 2, 4), num_res_blocks=1,
                       temporal_downsample=(True, False, True))
    from diffsynth.loading.formats import vae_config_from
    assert vae_config_from(_shapes(_meta_state_dict(WanVideoVAE, cfg))) == cfg


def test_heads_come_from_config_json_or_must_be_given(tmp_path):
    shapes = _shapes(_meta_state_dict(WanModel, TINY_I2V))
    with pytest.raises(ConfigError, match="pass config=WanDiTConfig"):
        dit_config_from(shapes)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "dim": 24, "num_heads": 2,
                                                       "text_len": 512}))
    hints = read_config_json([tmp_path / "diffusion_pytorch_model.safetensors"])
    cfg = dit_config_from(shapes, hints)
    assert cfg == TINY_I2V
    # A diffusers config.json describes the same thing with other names.
    assert dit_config_from(shapes, {"num_attention_heads": 2, "attention_head_dim": 12}) == TINY_I2V
    # A config.json of another width is not trusted.
    with pytest.raises(ConfigError):
        dit_config_from(shapes, {"dim": 5120, "num_heads": 40})
    with pytest.raises(ConfigError, match="ClipVisionConfig"):
        from diffsynth.loading.formats import clip_config_from
        clip_config_from(_shapes(_meta_state_dict(WanImageEncoder, TINY_CLIP)))


def test_unknown_file_lists_first_keys_closest_format_and_supported_formats():
    shapes = {"encoder.conv1.weight": (96, 3, 3, 3, 3), "something.else": (3,)}
    with pytest.raises(UnknownFormatError) as info:
        detect(shapes, "mystery.pth")
    message = str(info.value)
    assert "mystery.pth" in message and "encoder.conv1.weight [96, 3, 3, 3, 3]" in message
    assert "Closest format: wan_video_vae (official)" in message and "decoder.conv1.weight" in message
    assert "wan_video_dit (diffusers)" in message and "float8_e4m3fn" in message


def test_lora_files_point_to_load_lora_v2():
    with pytest.raises(UnknownFormatError, match="load_lora_v2"):
        detect({"pipe.dit.blocks.0.self_attn.q.lora_A.default.weight": (4, 24)})


def test_structural_shape_check_rejects_a_lookalike():
    sd = _shapes(_meta_state_dict(WanModel, DIT_PRESETS["wan2.1-t2v-1.3b"]))
    sd["patch_embedding.weight"] = (1536, 16 * 4)       # a 2D "patch embedding": not a Wan DiT
    with pytest.raises(UnknownFormatError, match="shapes do not fit"):
        detect(sd)


def test_released_width_with_missing_tail_blocks_keeps_the_released_depth():
    """A 1.3B DiT whose last shard (blocks 20-29, head elsewhere) is missing must not load as a 20-block model:
    the config keeps 30 layers, so the key check reports the absent blocks."""
    from diffsynth.loading.checks import compare_state_dict, summarize_keys
    from diffsynth.loading.manager import expected_tensors
    full = _shapes(_meta_state_dict(WanModel, DIT_PRESETS["wan2.1-t2v-1.3b"]))
    partial = {k: v for k, v in full.items() if not (k.startswith("blocks.") and int(k.split(".")[1]) >= 20)}
    cfg = dit_config_from(detect(partial).official_shapes)
    assert cfg == DIT_PRESETS["wan2.1-t2v-1.3b"]
    diff = compare_state_dict(expected_tensors(_meta(WanModel, cfg)), partial)
    assert summarize_keys(diff.missing, diff.expected) == "blocks 20-29" and not diff.unexpected
    # A config.json that describes this DiT decides the depth.
    assert dit_config_from(partial, {"dim": 1536, "num_heads": 12, "num_layers": 20}).num_layers == 20
