"""The default LoRA merge of bf16/fp16 weights is bit-identical to upstream's `GeneralLoRAFromPeft.load` (DiffSynth
as UniAnimate-DiT ships it), transcribed below from its source; `merge_precision="float32"` is the one-rounding
merge (different numbers); fp32 weights are unchanged by the option."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from tiny import randomize_
from diffsynth.configs import WanDiTConfig
from diffsynth.loading import ModelManager
from diffsynth.models.wan_dit import WanModel

# Wide enough (128) that the three roundings of upstream's formula and the single fp32 rounding differ on many
# elements; two blocks, every Linear of them adapted (rank 16).
CONFIG = WanDiTConfig(model_type="i2v", in_dim=36, dim=128, ffn_dim=256, num_heads=1, num_layers=2, text_dim=32,
                      image_dim=16)
RANK = 16


def upstream_load(model: torch.nn.Module, state_dict_lora, alpha: float = 1.0) -> None:
    """GeneralLoRAFromPeft.load (diffsynth/models/lora.py of UniAnimate-DiT's DiffSynth), line for line:
    `fetch_device_and_dtype` takes the first tensor of the model's state_dict; the computation device is CUDA when
    that tensor is on the CPU and CUDA is available; factors and weight are cast to the model dtype there;
    `weight_patched = weight_model + alpha * torch.mm(weight_up, weight_down)` is stored back."""
    state_dict_model = model.state_dict()
    device, dtype = None, None
    for _, param in state_dict_model.items():
        device, dtype = param.device, param.dtype
        break
    computation_device, computation_dtype = device, dtype
    if computation_device == torch.device("cpu") and torch.cuda.is_available():
        computation_device = torch.device("cuda")
    if computation_dtype == torch.float8_e4m3fn:
        computation_dtype = torch.float32
    lora_name_dict = {}                                   # get_name_dict
    for key in state_dict_lora:
        if ".lora_B." not in key:
            continue
        keys = key.split(".")
        if len(keys) > keys.index("lora_B") + 2:
            keys.pop(keys.index("lora_B") + 1)
        keys.pop(keys.index("lora_B"))
        if keys[0] == "diffusion_model":
            keys.pop(0)
        lora_name_dict[".".join(keys)] = (key, key.replace(".lora_B.", ".lora_A."))
    for name in lora_name_dict:
        weight_up = state_dict_lora[lora_name_dict[name][0]].to(device=computation_device, dtype=computation_dtype)
        weight_down = state_dict_lora[lora_name_dict[name][1]].to(device=computation_device, dtype=computation_dtype)
        weight_lora = alpha * torch.mm(weight_up, weight_down)
        weight_model = state_dict_model[name].to(device=computation_device, dtype=computation_dtype)
        weight_patched = weight_model + weight_lora
        state_dict_model[name] = weight_patched.to(device=device, dtype=dtype)
    model.load_state_dict(state_dict_model)


def lora_file(base: WanModel, path, seed: int, dtype=torch.float32, std: float = 0.05):
    """PEFT names without prefix (upstream's loader and ours both read them), every block Linear."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, module in base.named_modules():
        if name.startswith("blocks.") and isinstance(module, torch.nn.Linear):
            o, i = module.weight.shape
            out[f"{name}.lora_A.default.weight"] = (torch.randn(RANK, i, generator=gen) * std).to(dtype)
            out[f"{name}.lora_B.default.weight"] = (torch.randn(o, RANK, generator=gen) * std).to(dtype)
    save_file(out, str(path))
    return out


@pytest.fixture(scope="module")
def base_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dit") / "dit.safetensors"
    save_file({k: v.contiguous() for k, v in randomize_(WanModel(CONFIG), seed=0, std=0.05).state_dict().items()},
              str(path))
    return path


def load(base_file, dtype):
    manager = ModelManager(progress=False)
    manager.load_models([base_file], torch_dtype=dtype, config=CONFIG)
    return manager


def same_bits(a: torch.nn.Module, b: torch.nn.Module) -> int:
    """Number of elements whose bits differ (0: bit-identical), over every tensor of the state dicts."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return sum(int((sa[k].view(torch.int16) != sb[k].view(torch.int16)).sum()) if sa[k].dtype in
               (torch.bfloat16, torch.float16) else int((sa[k] != sb[k]).sum()) for k in sa)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("factor_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("strength,keep", [(1.0, False), (0.7, True)])
def test_default_merge_is_bit_identical_to_upstream(tmp_path, base_file, dtype, factor_dtype, strength, keep):
    lora = lora_file(WanModel(CONFIG), tmp_path / "lora.safetensors", seed=1, dtype=factor_dtype)
    ours = load(base_file, dtype)
    reference = load(base_file, dtype).fetch_model("wan_video_dit")
    before = {k: v.clone() for k, v in reference.state_dict().items()}
    ours.load_lora_v2(tmp_path / "lora.safetensors", lora_alpha=strength, keep_base_weights=keep)
    upstream_load(reference, lora, alpha=strength)
    assert same_bits(ours.fetch_model("wan_video_dit"), reference) == 0
    changed = sum(not torch.equal(v, before[k]) for k, v in reference.state_dict().items())
    assert changed == len(lora) // 2                        # the comparison covers every adapted weight
    if keep:
        ours.unload_loras()
        assert all(torch.equal(v, before[k]) for k, v in ours.fetch_model("wan_video_dit").state_dict().items())


def test_several_loras_equal_upstream_loading_them_one_after_the_other(tmp_path, base_file):
    a = lora_file(WanModel(CONFIG), tmp_path / "a.safetensors", seed=2)
    b = lora_file(WanModel(CONFIG), tmp_path / "b.safetensors", seed=3, dtype=torch.bfloat16)
    together, one_by_one = load(base_file, torch.bfloat16), load(base_file, torch.bfloat16)
    reference = load(base_file, torch.bfloat16).fetch_model("wan_video_dit")
    together.load_lora_v2([(tmp_path / "a.safetensors", 1.0), (tmp_path / "b.safetensors", 0.5)])
    one_by_one.load_lora_v2(tmp_path / "a.safetensors")
    one_by_one.load_lora_v2(tmp_path / "b.safetensors", lora_alpha=0.5)
    upstream_load(reference, a, alpha=1.0)
    upstream_load(reference, b, alpha=0.5)
    assert same_bits(together.fetch_model("wan_video_dit"), reference) == 0
    assert same_bits(one_by_one.fetch_model("wan_video_dit"), reference) == 0


def test_float32_precision_rounds_once_and_differs_from_upstream(tmp_path, base_file):
    lora = lora_file(WanModel(CONFIG), tmp_path / "lora.safetensors", seed=4)
    manager = load(base_file, torch.bfloat16)
    base = {k: v.clone() for k, v in manager.fetch_model("wan_video_dit").state_dict().items()}
    manager.load_lora_v2(tmp_path / "lora.safetensors", lora_alpha=0.7, merge_precision="float32")
    reference = load(base_file, torch.bfloat16).fetch_model("wan_video_dit")
    upstream_load(reference, lora, alpha=0.7)
    got = manager.fetch_model("wan_video_dit").state_dict()
    for key in [k for k in lora if ".lora_A." in k]:
        name = key.replace(".lora_A.default.weight", ".weight")
        b = lora[key.replace("lora_A", "lora_B")].double()
        update = 0.7 * (b @ lora[key].double())
        exact = base[name].double() + update
        half_ulp = torch.ldexp(torch.ones_like(exact), torch.frexp(exact).exponent - 9)   # bf16: 8 significant bits
        # the fp32 accumulation: a GEMM of depth RANK errs by at most about RANK units of fp32 rounding
        fp32_sum = (RANK + 1) * 2 ** -24 * (base[name].double().abs() + 0.7 * (b.abs() @ lora[key].double().abs()))
        assert ((got[name].double() - exact).abs() <= half_ulp + fp32_sum).all(), name    # rounded once
    assert same_bits(manager.fetch_model("wan_video_dit"), reference) > 100       # not upstream's numbers


def test_fp32_weights_merge_the_same_with_either_precision(tmp_path, base_file):
    lora_file(WanModel(CONFIG), tmp_path / "lora.safetensors", seed=5)
    a, b = load(base_file, torch.float32), load(base_file, torch.float32)
    a.load_lora_v2(tmp_path / "lora.safetensors", lora_alpha=0.7)
    b.load_lora_v2(tmp_path / "lora.safetensors", lora_alpha=0.7, merge_precision="float32")
    assert same_bits(a.fetch_model("wan_video_dit"), b.fetch_model("wan_video_dit")) == 0
    with pytest.raises(ValueError, match="merge_precision must be one of"):
        a.load_lora_v2(tmp_path / "lora.safetensors", merge_precision="bf16")
