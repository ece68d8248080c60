"""Every LoRA read as written: diffusers' own files (alpha in `lora_adapter_metadata`, `alpha_pattern`, `lora_B.bias`)
against diffusers/peft's own merge; tensors a layout defines but nobody merges are named; the pose guider survives
every conversion; alphas and strengths that cannot be meant are refused naming the value; files mixing layouts
are refused naming both; a new layout is one table entry; the trainer reads every layout."""
from __future__ import annotations

import json
import logging
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from loading.test_lora_formats import (RANK, assert_weights, base_sd, hand_merge, linear_names,  # noqa: F401
                                       manager_with, random_factors, write_layout)
from tiny import TINY_I2V, TINY_POSE, randomize_
from diffsynth.convert_lora import convert_lora, main
from diffsynth.loading import LoraError, ModelManager, NonFiniteTensorError, lora_formats
from diffsynth.loading.diffusers_dit import dit_diffusers_to_official
from diffsynth.loading.lora import read_lora, read_training_lora
from diffsynth.loading.lora_formats import LoraLayout, register_layout, unregister_layout
from diffsynth.models.pose_guider import PoseGuider

TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj", "ffn.net.0.proj", "ffn.net.2"]


# ------------------------------------------------------------------------------------------------ diffusers files
@pytest.fixture(scope="module")
def diffusers_lora(tmp_path_factory):
    """A tiny diffusers WanTransformer3DModel (the TINY_I2V shapes) with a PEFT LoRA (r 4, lora_alpha 8, lora_bias,
    alpha_pattern {"ffn.net.2": 2}) saved by diffusers' own `save_lora_adapter`; the reference is PEFT's own merge.
    Returns (base official state dict, LoRA file, merged official state dict)."""
    from diffusers import WanTransformer3DModel
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                                  in_channels=36, out_channels=16, text_dim=32, freq_dim=256, ffn_dim=32,
                                  num_layers=2, image_dim=16, added_kv_proj_dim=24, cross_attn_norm=True,
                                  qk_norm="rms_norm_across_heads", eps=1e-6).float()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    base = dit_diffusers_to_official({k: v.detach().clone() for k, v in model.state_dict().items()})
    model.add_adapter(LoraConfig(r=RANK, lora_alpha=8, lora_bias=True, target_modules=TARGETS,
                                 alpha_pattern={"ffn.net.2": 2}))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    folder = tmp_path_factory.mktemp("diffusers_lora")
    with pytest.warns(UserWarning):                    # peft warns that lora_B.bias is 1-D
        model.save_lora_adapter(str(folder))
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    merged = {k.replace(".base_layer", ""): v.detach().clone() for k, v in model.state_dict().items()
              if "lora_" not in k}
    return base, folder / "pytorch_lora_weights.safetensors", dit_diffusers_to_official(merged)


def test_diffusers_file_merges_like_peft(tmp_path, diffusers_lora):
    """lora_alpha (8: scale 2) and alpha_pattern (ffn.2: alpha 2, scale 0.5) from the metadata, lora_B.bias added to
    the bias with the same scale: the merged DiT equals PEFT's merge of the same adapter."""
    base, path, want = diffusers_lora
    with safe_open(str(path), "pt") as f:
        config = json.loads(f.metadata()["lora_adapter_metadata"])
        assert config["lora_alpha"] == 8 and any(k.endswith("lora_B.bias") for k in f.keys())
    manager = manager_with(tmp_path, base)
    manager.load_lora_v2(path)
    got = manager.fetch_model("wan_video_dit").state_dict()
    changed = [k for k in want if not torch.equal(want[k], base[k])]
    assert any(k.endswith(".bias") for k in changed) and any("ffn.2" in k for k in changed)
    for key, value in want.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=2e-6, msg=key)


def test_pipeline_level_metadata_and_refused_variants(tmp_path, base_sd):
    """save_lora_weights prefixes the config entries (`transformer.lora_alpha`); DoRA / rsLoRA files are refused."""
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q"])
    tensors = {k: v for k, v in write_layout("diffusers", factors, alpha=RANK).items() if k != "network_alpha"}
    save_file(tensors, str(tmp_path / "p.safetensors"),
              metadata={"lora_adapter_metadata": json.dumps({"transformer.r": RANK, "transformer.lora_alpha": 8})})
    manager = manager_with(tmp_path, base_sd)
    manager.load_lora_v2(tmp_path / "p.safetensors")
    assert_weights(manager, base_sd, hand_merge(base_sd, factors, 8 / RANK))
    for flag in ("use_dora", "use_rslora"):
        save_file(tensors, str(tmp_path / "v.safetensors"),
                  metadata={"lora_adapter_metadata": json.dumps({"lora_alpha": 8, flag: True})})
        with pytest.raises(LoraError, match=f"{flag}=true"):
            manager.load_lora_v2(tmp_path / "v.safetensors")


def test_tensors_a_layout_does_not_merge_are_named(tmp_path, base_sd, caplog):
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q"])
    tensors = write_layout("comfy", factors, alpha=RANK)
    tensors["diffusion_model.blocks.0.self_attn.q.lora_up.bias"] = torch.ones(24)        # ComfyUI defines no bias
    tensors["diffusion_model.blocks.1.self_attn.k.alpha"] = torch.tensor(4.0)            # alpha without factors
    save_file(tensors, str(tmp_path / "c.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    with caplog.at_level(logging.WARNING):
        manager.load_lora_v2(tmp_path / "c.safetensors")
    for name in ("blocks.0.self_attn.q.lora_up.bias", "blocks.1.self_attn.k.alpha"):
        assert name in caplog.text, name
    assert_weights(manager, base_sd, hand_merge(base_sd, factors, 1.0))


# ------------------------------------------------------------------------------------------------ convert_lora
def test_pose_guider_survives_every_conversion(tmp_path, base_sd):
    pose = {k: v.clone() for k, v in randomize_(PoseGuider(TINY_POSE), seed=4, std=0.2).state_dict().items()}
    src = tmp_path / "src.safetensors"
    save_file({**write_layout("diffsynth", random_factors(base_sd, seed=2), alpha=8),
               **{f"pipe.{k}": v for k, v in pose.items()}}, str(src))
    want = manager_with(tmp_path, base_sd)
    want.load_lora_v2(src)
    hops = [src]
    for i, layout in enumerate(["comfy", "diffusers", "diffsynth", "comfy"]):
        out, sidecar = convert_lora(hops[-1], tmp_path / f"hop{i}.safetensors", layout)
        assert sidecar is not None and sidecar.is_file(), f"hop {i} lost the pose guider"
        hops.append(out)
    got = manager_with(tmp_path, base_sd)
    got.load_lora_v2(hops[-1])
    assert set(got.pose_state_dict) == set(pose)
    assert all(torch.equal(got.pose_state_dict[k], v) for k, v in pose.items())
    assert all(torch.equal(v, want.fetch_model("wan_video_dit").state_dict()[k])
               for k, v in got.fetch_model("wan_video_dit").state_dict().items())


def test_convert_keeps_lora_b_bias(tmp_path, diffusers_lora):
    base, path, want = diffusers_lora
    for layout in ("diffsynth", "comfy", "diffusers"):
        out, _ = convert_lora(path, tmp_path / f"{layout}.safetensors", layout)
        manager = manager_with(tmp_path, base)
        manager.load_lora_v2(out)
        got = manager.fetch_model("wan_video_dit").state_dict()
        for key, value in want.items():
            torch.testing.assert_close(got[key], value, rtol=0, atol=4e-6, msg=f"{layout}: {key}")


# ------------------------------------------------------------------------------------------------ values refused
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 0.0, -4.0])
def test_bad_network_alpha_is_refused_naming_it(tmp_path, base_sd, value, capsys):
    save_file(write_layout("diffsynth", random_factors(base_sd), alpha=RANK), str(tmp_path / "a.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    with pytest.raises(ValueError, match=f"network_alpha is {value!r}"):
        manager.load_lora_v2(tmp_path / "a.safetensors", network_alpha=value)
    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path / "a.safetensors"), str(tmp_path / "o.safetensors"), "--to", "comfy",
              f"--network-alpha={value}"])
    assert exit_.value.code == 2 and f"--network-alpha is '{value}'" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
    assert_weights(manager, base_sd, {})


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_strength_is_refused_naming_it(tmp_path, base_sd, value):
    save_file(write_layout("diffsynth", random_factors(base_sd), alpha=RANK), str(tmp_path / "a.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    with pytest.raises(ValueError, match=f"must be a finite number, got {value}"):
        manager.load_lora_v2(tmp_path / "a.safetensors", lora_alpha=value)
    with pytest.raises(ValueError, match=f"got {value}"):
        manager.load_lora_v2([(tmp_path / "a.safetensors", 1.0), (tmp_path / "a.safetensors", value)])
    assert_weights(manager, base_sd, {})


@pytest.mark.parametrize("strength,message", [(0.0, "strength 0 merges nothing"), (-0.5, "negative strength -0.5")])
def test_zero_or_negative_strength_merges_with_a_warning(tmp_path, base_sd, caplog, strength, message):
    factors = random_factors(base_sd)
    save_file(write_layout("diffsynth", factors, alpha=RANK), str(tmp_path / "a.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    with caplog.at_level(logging.WARNING):
        manager.load_lora_v2(tmp_path / "a.safetensors", lora_alpha=strength)
    assert message in caplog.text
    assert_weights(manager, base_sd, hand_merge(base_sd, factors, strength))


@pytest.mark.parametrize("where", ["tensor", "module", "metadata", "diffusers"])
@pytest.mark.parametrize("value", [0.0, -2.0, math.inf])
def test_bad_stored_alpha_is_refused_naming_it(tmp_path, base_sd, where, value):
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q"])
    metadata = None
    if where == "module":
        tensors = {k: v for k, v in write_layout("comfy", factors, alpha=value).items()}
    else:
        tensors = {k: v for k, v in write_layout("diffsynth", factors, alpha=RANK).items() if k != "network_alpha"}
        if where == "tensor":
            tensors["network_alpha"] = torch.tensor(value)
        elif where == "metadata":
            metadata = {"ss_network_alpha": str(value)}
        else:
            metadata = {"lora_adapter_metadata": json.dumps({"lora_alpha": value})}
    save_file(tensors, str(tmp_path / "a.safetensors"), metadata=metadata)
    manager = manager_with(tmp_path, base_sd)
    if value == math.inf and where in ("tensor", "module"):
        with pytest.raises(NonFiniteTensorError):
            manager.load_lora_v2(tmp_path / "a.safetensors")
    else:
        with pytest.raises(LoraError, match=f"is {value!r}: an alpha must be a positive finite number"):
            manager.load_lora_v2(tmp_path / "a.safetensors")
        manager.load_lora_v2(tmp_path / "a.safetensors", network_alpha=RANK)          # the argument chooses
        assert_weights(manager, base_sd, hand_merge(base_sd, factors, 1.0))
        return
    assert_weights(manager, base_sd, {})


def test_file_mixing_layouts_is_refused_naming_both(tmp_path, base_sd):
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q", "blocks.1.ffn.0"])
    comfy = write_layout("comfy", {"blocks.0.self_attn.q": factors["blocks.0.self_attn.q"]}, alpha=RANK)
    peft = write_layout("diffsynth", {"blocks.1.ffn.0": factors["blocks.1.ffn.0"]}, alpha=RANK)
    save_file({**comfy, **peft}, str(tmp_path / "mixed.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    with pytest.raises(LoraError, match=r"mixes LoRA layouts: .*(ComfyUI.*diffsynth|diffsynth.*ComfyUI)"):
        manager.load_lora_v2(tmp_path / "mixed.safetensors")
    assert_weights(manager, base_sd, {})


# ------------------------------------------------------------------------------------------------ the table
@pytest.fixture
def new_layout():
    """A made-up layout, added as ONE table entry."""
    register_layout(LoraLayout(
        name="mytool", title="MyTool", example="net.blocks.0.self_attn.q.down", prefixes=("net.",),
        suffixes={"A": (r"down",), "B": (r"up",), "alpha": (r"scale_alpha",)},
        write_prefix="net.", write_suffixes={"A": ".down", "B": ".up"}))
    yield
    unregister_layout("mytool")


def test_a_new_layout_is_one_table_entry(tmp_path, base_sd, new_layout):
    """Read, merge, convert (both ways) and the trainer's reader know the new layout from its entry alone."""
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q", "blocks.1.cross_attn.k_img"])
    tensors = {}
    for name, (a, b) in factors.items():
        tensors[f"net.{name}.down"], tensors[f"net.{name}.up"] = a, b
        tensors[f"net.{name}.scale_alpha"] = torch.tensor(8.0)
    save_file(tensors, str(tmp_path / "mine.safetensors"))
    assert read_lora(tmp_path / "mine.safetensors").layout == "mytool"
    manager = manager_with(tmp_path, base_sd)
    manager.load_lora_v2(tmp_path / "mine.safetensors")
    assert_weights(manager, base_sd, hand_merge(base_sd, factors, 8 / RANK))
    out, _ = convert_lora(tmp_path / "mine.safetensors", tmp_path / "comfy.safetensors", "comfy")
    back, _ = convert_lora(out, tmp_path / "back.safetensors", "mytool")
    with safe_open(str(back), "pt") as f:
        assert "net.blocks.0.self_attn.q.down" in f.keys()
    again = manager_with(tmp_path, base_sd)
    again.load_lora_v2(back)
    assert_weights(again, base_sd, hand_merge(base_sd, factors, 8 / RANK))
    read = read_training_lora(tmp_path / "mine.safetensors", linear_names(base_sd), "mine")
    assert set(read.state) == {f"{n}.lora_{r}.default.weight" for n in factors for r in "AB"}
    assert read.alphas == {8.0: "blocks.0.self_attn.q.alpha"} or set(read.alphas) == {8.0}
    assert "MyTool" in lora_formats.LAYOUT_HELP


# ------------------------------------------------------------------------------------------------ trainer reader
@pytest.mark.parametrize("layout", ["comfy", "diffusers", "kohya"])
def test_trainer_reads_every_layout_like_its_own(tmp_path, base_sd, layout):
    """read_training_lora gives PEFT's parameter names (loadable strictly into a PEFT-wrapped DiT) and the same
    tensors and alpha for a ComfyUI, diffusers or kohya file as for the trainer's own layout."""
    from peft import LoraConfig, inject_adapter_in_model
    from loading.loading_helpers import tiny_dit

    factors = random_factors(base_sd)
    pose = {k: v.clone() for k, v in PoseGuider(TINY_POSE).state_dict().items()}
    save_file(write_layout("diffsynth", factors, alpha=8) | {f"pipe.{k}": v for k, v in pose.items()},
              str(tmp_path / "own.safetensors"))
    save_file(write_layout(layout, factors, alpha=8), str(tmp_path / "other.safetensors"))
    save_file(pose, str(tmp_path / "other.pose_guider.safetensors"))          # converted files keep it beside
    dit = inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=8, target_modules=["q", "k", "v", "o", "k_img",
                                                                                     "v_img", "ffn.0", "ffn.2"]),
                                  tiny_dit(TINY_I2V))
    names = [n for n, _ in dit.named_modules()]
    own = read_training_lora(tmp_path / "own.safetensors", names, "own")
    other = read_training_lora(tmp_path / "other.safetensors", names, "other")
    assert set(other.alphas) == set(own.alphas) == {8.0}
    assert other.state.keys() == own.state.keys()
    assert all(torch.equal(other.state[k], own.state[k]) for k in own.state)
    assert other.pose.keys() == own.pose.keys() == pose.keys()
    lora_params = {n for n, _ in dit.named_parameters() if ".lora_" in n}
    assert set(own.state) == lora_params
    missing, unexpected = dit.load_state_dict(own.state, strict=False)
    assert not unexpected and not [m for m in missing if ".lora_" in m]


def test_trainer_refuses_what_a_lora_cannot_train(tmp_path, base_sd):
    tensors = write_layout("comfy", random_factors(base_sd, names=["blocks.0.self_attn.q"]), alpha=RANK)
    tensors["diffusion_model.blocks.0.norm3.diff"] = torch.ones(24)
    save_file(tensors, str(tmp_path / "d.safetensors"))
    with pytest.raises(LoraError, match=r"cannot be trained from .*blocks\.0\.norm3\.diff"):
        read_training_lora(tmp_path / "d.safetensors", linear_names(base_sd), "d")
