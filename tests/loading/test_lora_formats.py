"""LoRA layouts read by structure (diffsynth/PEFT, ComfyUI/Kijai/LightX2V with .diff/.diff_b/.diff_m, diffusers,
kohya), several LoRAs with their own strengths, unload_loras (bit-exact), fp8 layers and pose-guider files."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from loading.loading_helpers import tiny_dit
from tiny import TINY_I2V, TINY_POSE, randomize_
from diffsynth.loading import LoraError, ModelManager
from diffsynth.loading.lora import LoraCheckpoint, LoraModule, resolve
from diffsynth.loading.lora_formats import official_to_diffusers
from diffsynth.models.fp8 import Fp8Linear, quantize_fp8
from diffsynth.models.pose_guider import PoseGuider

RANK = 4
E4M3 = torch.float8_e4m3fn


@pytest.fixture(scope="module")
def base_sd():
    return {k: v.clone() for k, v in tiny_dit(TINY_I2V).state_dict().items()}


def linear_names(sd):
    """Every Linear of the blocks (k_img/v_img included), official names."""
    return sorted(k[: -len(".weight")] for k, v in sd.items() if k.startswith("blocks.") and v.ndim == 2)


def random_factors(sd, seed=0, names=None):
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in names or linear_names(sd):
        o, i = sd[f"{name}.weight"].shape
        out[name] = (torch.randn(RANK, i, generator=gen) * 0.3, torch.randn(o, RANK, generator=gen) * 0.3)
    return out


def manager_with(tmp_path, base_sd, dtype=torch.float32):
    path = tmp_path / "dit.safetensors"
    save_file(base_sd, str(path))
    manager = ModelManager(progress=False)
    manager.load_models([path], torch_dtype=dtype, config=TINY_I2V)
    return manager


def hand_merge(base_sd, factors, scale):
    """W + scale * B @ A in fp32, per adapted weight."""
    return {f"{n}.weight": base_sd[f"{n}.weight"] + scale * (b @ a) for n, (a, b) in factors.items()}


def assert_weights(manager, base_sd, changed, atol=1e-6):
    got = manager.fetch_model("wan_video_dit").state_dict()
    for key, value in base_sd.items():
        if key in changed:
            torch.testing.assert_close(got[key], changed[key], rtol=0, atol=atol, msg=key)
        else:
            assert torch.equal(got[key], value), key


def kohya(name):
    return "lora_unet_" + name.replace(".", "_")


def write_layout(layout, factors, alpha):
    """Name factors like each tool writes them."""
    out = {}
    for name, (a, b) in factors.items():
        if layout == "diffsynth":
            out[f"pipe.dit.{name}.lora_A.default.weight"], out[f"pipe.dit.{name}.lora_B.default.weight"] = a, b
        elif layout in ("comfy", "comfy_model_prefix"):
            prefix = "diffusion_model." if layout == "comfy" else "model.diffusion_model."
            out[f"{prefix}{name}.lora_down.weight"], out[f"{prefix}{name}.lora_up.weight"] = a, b
            out[f"{prefix}{name}.alpha"] = torch.tensor(float(alpha))
        elif layout in ("diffusers", "diffusers_bare"):
            prefix = "transformer." if layout == "diffusers" else ""
            d = official_to_diffusers(name)
            out[f"{prefix}{d}.lora_A.weight"], out[f"{prefix}{d}.lora_B.weight"] = a, b
        elif layout == "kohya":
            out[f"{kohya(name)}.lora_down.weight"], out[f"{kohya(name)}.lora_up.weight"] = a, b
            out[f"{kohya(name)}.alpha"] = torch.tensor(float(alpha))
    if layout in ("diffsynth", "diffusers", "diffusers_bare"):
        out["network_alpha"] = torch.tensor(float(alpha))
    return out


# ------------------------------------------------------------------------------------------------ layouts
@pytest.mark.parametrize("layout", ["diffsynth", "comfy", "comfy_model_prefix", "diffusers", "diffusers_bare",
                                    "kohya"])
def test_every_layout_merges_the_hand_computed_update(tmp_path, base_sd, layout):
    """alpha 8 with rank 4 (scale 2) and strength 0.5: each layout must give W + 0.5 * 2 * B @ A on exactly the
    adapted weights (k_img/v_img included: `cross_attn.k` must not swallow `cross_attn.k_img`)."""
    factors = random_factors(base_sd)
    path = tmp_path / "lora.safetensors"
    save_file(write_layout(layout, factors, alpha=8), str(path))
    manager = manager_with(tmp_path, base_sd)
    assert manager.load_lora_v2(path, lora_alpha=0.5) == len(factors)
    assert_weights(manager, base_sd, hand_merge(base_sd, factors, 0.5 * 8 / RANK))


def test_layout_is_reported(tmp_path, base_sd, caplog):
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q"])
    for layout, label in [("comfy", "comfy"), ("diffusers", "diffusers"), ("kohya", "kohya"),
                          ("diffsynth", "diffsynth")]:
        path = tmp_path / f"{layout}.safetensors"
        save_file(write_layout(layout, factors, alpha=4), str(path))
        manager = manager_with(tmp_path, base_sd)
        with caplog.at_level(logging.INFO, logger="diffsynth.loading.manager"):
            manager.load_lora_v2(path)
        assert f"({label} layout)" in caplog.text


def test_lightx2v_diff_and_diff_b_are_applied(tmp_path, base_sd):
    """LightX2V distill LoRAs: lora_down/up plus full deltas of norms (`norm3.diff`, `norm_q.diff`), biases
    (`.diff_b`) and modulations (`blocks.N.diff_m`, `head.modulation.diff`): W += strength * diff."""
    gen = torch.Generator().manual_seed(5)
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q", "blocks.1.ffn.0"])
    lora = write_layout("comfy", factors, alpha=RANK)
    deltas = {   # official parameter -> (key, delta)
        "blocks.0.norm3.weight": "diffusion_model.blocks.0.norm3.diff",
        "blocks.0.norm3.bias": "diffusion_model.blocks.0.norm3.diff_b",
        "blocks.1.self_attn.norm_q.weight": "diffusion_model.blocks.1.self_attn.norm_q.diff",
        "blocks.0.self_attn.q.bias": "diffusion_model.blocks.0.self_attn.q.diff_b",
        "blocks.1.cross_attn.k_img.bias": "diffusion_model.blocks.1.cross_attn.k_img.diff_b",
        "blocks.1.modulation": "diffusion_model.blocks.1.diff_m",
        "head.modulation": "diffusion_model.head.modulation.diff",
        "head.head.weight": "diffusion_model.head.head.diff",
    }
    values = {p: torch.randn(base_sd[p].shape, generator=gen) for p in deltas}
    lora.update({key: values[p] for p, key in deltas.items()})
    path = tmp_path / "lightx2v.safetensors"
    save_file(lora, str(path))
    manager = manager_with(tmp_path, base_sd)
    assert manager.load_lora_v2(path, lora_alpha=0.5) == 2 + len(deltas)
    want = {k: base_sd[k] + 0.5 * v for k, v in values.items()}
    for name, (a, b) in factors.items():       # q also gets diff_b: weight and bias change independently
        want[f"{name}.weight"] = base_sd[f"{name}.weight"] + 0.5 * (b @ a)
    assert_weights(manager, base_sd, want)


def test_delta_that_fits_no_parameter_is_refused(tmp_path, base_sd):
    path = tmp_path / "bad.safetensors"
    save_file({"diffusion_model.blocks.0.norm1.diff": torch.ones(24)}, str(path))   # norm1 has no weight
    manager = manager_with(tmp_path, base_sd)
    with pytest.raises(LoraError, match=r"change no parameter.*blocks\.0\.norm1\.diff"):
        manager.load_lora_v2(path)
    assert_weights(manager, base_sd, {})


# ------------------------------------------------------------------------------------------------ kohya names
def test_kohya_names_resolve_against_underscored_module_names():
    names = ["blocks.0.cross_attn.k", "blocks.0.cross_attn.k_img", "blocks.0.self_attn.norm_q",
             "blocks.0.cross_attn.norm_k_img", "blocks.10.ffn.0", "blocks.1.ffn.0", "blocks.1"]
    lora = LoraCheckpoint(modules={n.replace(".", "_"): LoraModule(diff=torch.zeros(1)) for n in names})
    lora.underscored = set(lora.modules)
    assert sorted(resolve(lora, names, "x")) == sorted(names)
    lora = LoraCheckpoint(modules={"blocks_0_cross_attn_q_img": LoraModule(diff=torch.zeros(1))},
                          underscored={"blocks_0_cross_attn_q_img"})
    with pytest.raises(LoraError, match="lora_unet_blocks_0_cross_attn_q_img"):
        resolve(lora, names, "x")
    lora = LoraCheckpoint(modules={"a_b_c": LoraModule(diff=torch.zeros(1))}, underscored={"a_b_c"})
    with pytest.raises(LoraError, match=r"several modules: lora_unet_a_b_c \(a\.b_c or a_b\.c\)"):
        resolve(lora, ["a.b_c", "a_b.c"], "x")


def test_kohya_file_with_underscored_names_merges(tmp_path, base_sd):
    names = ["blocks.0.cross_attn.k_img", "blocks.0.cross_attn.k", "blocks.1.self_attn.o"]
    factors = random_factors(base_sd, names=names)
    tensors = write_layout("kohya", factors, alpha=RANK)
    norm = torch.randn(24, generator=torch.Generator().manual_seed(1))
    tensors["lora_unet_blocks_1_cross_attn_norm_k_img.diff"] = norm
    save_file(tensors, str(tmp_path / "kohya.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    manager.load_lora_v2(tmp_path / "kohya.safetensors")
    want = hand_merge(base_sd, factors, 1.0)
    want["blocks.1.cross_attn.norm_k_img.weight"] = base_sd["blocks.1.cross_attn.norm_k_img.weight"] + norm
    assert_weights(manager, base_sd, want)


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_layout_names_first_keys_and_supported_layouts(tmp_path, base_sd):
    save_file({"encoder.layer.0.weight": torch.ones(2), "encoder.layer.1.weight": torch.ones(2)},
              str(tmp_path / "other.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    with pytest.raises(LoraError) as error:
        manager.load_lora_v2(tmp_path / "other.safetensors")
    message = str(error.value)
    assert "encoder.layer.0.weight" in message and "not a LoRA layout" in message
    for layout in ("diffsynth", "ComfyUI", "diffusers", "kohya", "dwpose_embedding"):
        assert layout in message


def test_diffusers_names_without_wan_counterpart_are_refused(tmp_path, base_sd):
    save_file({"transformer.blocks.0.attn1.to_qkv.lora_A.weight": torch.ones(2, 24),
               "transformer.blocks.0.attn1.to_qkv.lora_B.weight": torch.ones(72, 2)}, str(tmp_path / "d.safetensors"))
    with pytest.raises(LoraError, match=r"no Wan DiT counterpart: transformer\.blocks\.0\.attn1\.to_qkv"):
        manager_with(tmp_path, base_sd).load_lora_v2(tmp_path / "d.safetensors")


def test_same_module_under_two_names_is_refused(tmp_path, base_sd):
    a, b = torch.ones(RANK, 24), torch.ones(24, RANK)
    save_file({"diffusion_model.blocks.0.self_attn.q.lora_down.weight": a,
               "diffusion_model.blocks.0.self_attn.q.lora_up.weight": b,
               "diffusion_model.blocks.0.self_attn.q.lora_A.weight": a.clone()}, str(tmp_path / "dup.safetensors"))
    with pytest.raises(LoraError, match="holds the A of module blocks.0.self_attn.q twice"):
        manager_with(tmp_path, base_sd).load_lora_v2(tmp_path / "dup.safetensors")


def test_loha_is_refused_rather_than_merged_wrongly(tmp_path, base_sd):
    save_file({"lora_unet_blocks_0_self_attn_q.hada_w1_a": torch.ones(2, 2),
               "lora_unet_blocks_0_self_attn_q.lora_down.weight": torch.ones(2, 24)}, str(tmp_path / "h.safetensors"))
    with pytest.raises(LoraError, match="LoHa"):
        manager_with(tmp_path, base_sd).load_lora_v2(tmp_path / "h.safetensors")


# ------------------------------------------------------------------------------------------------ several LoRAs
def test_two_loras_with_their_strengths_equal_the_hand_sum(tmp_path, base_sd):
    names = linear_names(base_sd)
    fa = random_factors(base_sd, seed=1)
    fb = random_factors(base_sd, seed=2, names=names[:5])
    save_file(write_layout("diffsynth", fa, alpha=RANK), str(tmp_path / "a.safetensors"))
    save_file(write_layout("comfy", fb, alpha=2 * RANK), str(tmp_path / "b.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    assert manager.load_lora_v2([(tmp_path / "a.safetensors", 1.0), (str(tmp_path / "b.safetensors"), 0.5)]) \
        == len(fa)
    want = hand_merge(base_sd, fa, 1.0)
    for name, (a, b) in fb.items():
        want[f"{name}.weight"] = want[f"{name}.weight"] + 0.5 * 2.0 * (b @ a)
    assert_weights(manager, base_sd, want, atol=2e-6)
    assert [m.strength for m in manager.loras] == [1.0, 0.5]


def test_a_plain_list_is_still_the_shards_of_one_lora(tmp_path, base_sd):
    factors = random_factors(base_sd)
    tensors = write_layout("diffsynth", factors, alpha=RANK)
    a_keys = [k for k in tensors if ".lora_A." in k]
    save_file({k: tensors[k] for k in a_keys}, str(tmp_path / "shard1.safetensors"))
    save_file({k: v for k, v in tensors.items() if k not in a_keys}, str(tmp_path / "shard2.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    manager.load_lora_v2([tmp_path / "shard1.safetensors", tmp_path / "shard2.safetensors"], lora_alpha=0.5)
    assert_weights(manager, base_sd, hand_merge(base_sd, factors, 0.5))
    assert len(manager.loras) == 1


def test_pairs_refuse_lora_alpha_and_mixtures(tmp_path, base_sd):
    manager = manager_with(tmp_path, base_sd)
    with pytest.raises(ValueError, match="leave lora_alpha at 1.0"):
        manager.load_lora_v2([("a.safetensors", 1.0)], lora_alpha=0.5)
    with pytest.raises(ValueError, match="mixture"):
        manager.load_lora_v2(["a.safetensors", ("b.safetensors", 0.5)])
    with pytest.raises(ValueError, match="finite"):
        manager.load_lora_v2([("a.safetensors", float("nan"))])


# ------------------------------------------------------------------------------------------------ unload
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unload_restores_the_base_weights_bit_exactly(tmp_path, base_sd, dtype):
    factors = random_factors(base_sd)
    tensors = write_layout("comfy", factors, alpha=RANK)
    tensors["diffusion_model.blocks.0.norm3.diff"] = torch.full((24,), 0.1)
    save_file(tensors, str(tmp_path / "a.safetensors"))
    pose = {k: v.clone() for k, v in PoseGuider(TINY_POSE).state_dict().items()}
    save_file(write_layout("diffsynth", random_factors(base_sd, seed=3), RANK) | pose, str(tmp_path / "b.safetensors"))
    manager = manager_with(tmp_path, base_sd, dtype)
    dit = manager.fetch_model("wan_video_dit")
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    manager.load_lora_v2(tmp_path / "a.safetensors", keep_base_weights=True)
    manager.load_lora_v2(tmp_path / "b.safetensors", lora_alpha=0.7, keep_base_weights=True)      # touches the same weights again
    assert not torch.equal(dit.state_dict()["blocks.0.ffn.0.weight"], before["blocks.0.ffn.0.weight"])
    assert manager.base_weights.nbytes > 0 and manager.pose_state_dict
    assert manager.unload_loras() == len(factors) + 1
    for key, value in dit.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
    assert manager.loras == [] and manager.pose_state_dict == {} and len(manager.base_weights) == 0
    manager.load_lora_v2(tmp_path / "a.safetensors", keep_base_weights=True)                       # merging again works after unload
    assert manager.unload_loras() == len(factors) + 1
    assert all(torch.equal(v, before[k]) for k, v in dit.state_dict().items())


def test_unload_refuses_after_a_merge_without_base_weights(tmp_path, base_sd):
    save_file(write_layout("diffsynth", random_factors(base_sd), RANK), str(tmp_path / "a.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    manager.load_lora_v2(tmp_path / "a.safetensors")                       # the default keeps nothing
    assert len(manager.base_weights) == 0
    with pytest.raises(LoraError, match="keep_base_weights=False"):
        manager.unload_loras()


def test_fp8_layers_merge_and_unload(tmp_path, base_sd):
    """Factors and a full delta on Fp8Linear weights: dequantise, add in fp32, requantise; unload restores the fp8
    weight and its scales bit-exactly."""
    manager = manager_with(tmp_path, base_sd, E4M3)
    dit = manager.fetch_model("wan_video_dit")
    before = {k: v.clone() for k, v in dit.state_dict().items()}
    factors = random_factors(base_sd, names=["blocks.0.self_attn.q", "blocks.1.cross_attn.v_img"])
    tensors = write_layout("comfy", factors, alpha=RANK)
    diff = torch.randn(32, 24, generator=torch.Generator().manual_seed(2)) * 0.1
    tensors["diffusion_model.blocks.1.ffn.0.diff"] = diff
    save_file(tensors, str(tmp_path / "a.safetensors"))
    dequantized = {n: dit.get_submodule(n).dequantized_weight().clone() for n in [*factors, "blocks.1.ffn.0"]}
    assert manager.load_lora_v2(tmp_path / "a.safetensors", keep_base_weights=True) == 3
    want = {n: dequantized[n] + b @ a for n, (a, b) in factors.items()}
    want["blocks.1.ffn.0"] = dequantized["blocks.1.ffn.0"] + diff
    for name, merged in want.items():
        layer = dit.get_submodule(name)
        q, scale = quantize_fp8(merged, E4M3, "channel")
        assert isinstance(layer, Fp8Linear)
        assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8)) and torch.equal(layer.scale, scale)
    manager.unload_loras()
    for key, value in dit.state_dict().items():
        same = torch.equal(value.view(torch.uint8), before[key].view(torch.uint8)) if value.dtype == E4M3 \
            else torch.equal(value, before[key])
        assert same, key


# ------------------------------------------------------------------------------------------------ pose files
def test_pose_guider_file_beside_the_lora_is_read_too(tmp_path, base_sd, caplog):
    pose = {k: v.clone() for k, v in randomize_(PoseGuider(TINY_POSE), seed=3, std=0.2).state_dict().items()}
    save_file(write_layout("comfy", random_factors(base_sd), RANK), str(tmp_path / "x.safetensors"))
    save_file(pose, str(tmp_path / "x.pose_guider.safetensors"))
    manager = manager_with(tmp_path, base_sd)
    with caplog.at_level(logging.INFO, logger="diffsynth.loading.manager"):
        manager.load_lora_v2(tmp_path / "x.safetensors")
    assert "x.pose_guider.safetensors" in caplog.text
    guider = manager.fetch_pose_guider()
    assert all(torch.equal(v, pose[k]) for k, v in guider.state_dict().items())
    assert any(p.name == "x.pose_guider.safetensors" for p in manager.loras[0].files)
    alone = manager_with(tmp_path, base_sd)
    alone.load_lora_v2(tmp_path / "x.pose_guider.safetensors")              # loadable on its own
    assert set(alone.pose_state_dict) == set(pose)
    assert all(torch.equal(v, base_sd[k]) for k, v in alone.fetch_model("wan_video_dit").state_dict().items())
