"""fp8 DiT weights: `Fp8Linear` (fp8 weight + fp32 scale per output channel, bf16 compute), the fp8 load path of
`load_models(..., torch_dtype=torch.float8_e4m3fn)`, ComfyUI fp8_scaled files, LoRA merging into fp8 layers and
the e5m2 fallback rule for GPUs before Ada."""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import save_file

from loading.loading_helpers import cast_state_dict, dit_forward, prefixed, tiny_dit
from tiny import TINY_I2V
from diffsynth.configs import DIT_PRESETS
from diffsynth.loading import ModelManager, load_wan_dit
from diffsynth.models import fp8 as fp8_module
from diffsynth.models.fp8 import (FP8_MAX, Fp8Linear, dequantize_fp8, fp8_linear_names, fp8_storage_dtype,
                                  parameter_bytes, quantize_fp8, quantize_model_fp8)
from diffsynth.models.wan_dit import WanModel

E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm())


def _spread_weight(out=64, inp=128, seed=0) -> torch.Tensor:
    """Rows whose magnitudes span 1e-5 .. 1e2 (like a trained layer with dead and loud channels, exaggerated)."""
    gen = torch.Generator().manual_seed(seed)
    row_scale = torch.logspace(-5, 2, out, dtype=torch.float64)
    return (torch.randn(out, inp, generator=gen, dtype=torch.float64) * row_scale[:, None]).float()


def _row_errors(weight: torch.Tensor, granularity: str, dtype=E4M3) -> torch.Tensor:
    q, scale = quantize_fp8(weight, dtype, granularity)
    deq = dequantize_fp8(q, scale)
    return (deq - weight).norm(dim=1) / weight.norm(dim=1)


# ------------------------------------------------------------------------------------------------ quantisation
def test_per_channel_scales_are_used():
    """Per-channel scales keep every row at e4m3 precision (relative error < 4%: 3 mantissa bits, RMS ~2.3%); one
    scale for the whole tensor or the plain cast lose the small rows to underflow (error up to 100%)."""
    w = _spread_weight()
    channel, tensor, plain = (_row_errors(w, g) for g in ("channel", "tensor", "none"))
    assert channel.max() < 0.04, channel.max()
    assert tensor.max() > 0.5 and plain.max() > 0.5          # small rows flushed to (near) zero
    assert channel.mean() < tensor.mean() / 5 and channel.mean() < plain.mean() / 5
    q, scale = quantize_fp8(w, E4M3, "channel")
    assert q.dtype == E4M3 and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
    torch.testing.assert_close(scale, w.abs().amax(dim=1) / 448.0)
    assert float(q.float().abs().amax()) == 448.0            # each row's largest value maps onto fp8_max


def test_per_tensor_scale_and_plain_cast():
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(1)) * 1000.0   # > 448: the plain cast clamps
    _, scale = quantize_fp8(w, E4M3, "tensor")
    assert torch.all(scale == w.abs().amax() / 448.0)
    q, scale = quantize_fp8(w, E4M3, "none")
    assert torch.all(scale == 1) and float(q.float().abs().max()) == 448.0
    q, scale = quantize_fp8(w, E5M2, "channel")
    assert q.dtype == E5M2 and float(q.float().abs().amax()) == FP8_MAX[E5M2]
    assert _row_errors(w, "channel", E5M2).max() < 0.08      # 2 mantissa bits
    z, zscale = quantize_fp8(torch.zeros(3, 4), E4M3, "channel")      # zero rows: scale 1, no NaN
    assert torch.all(zscale == 1) and torch.all(z.float() == 0)


# ------------------------------------------------------------------------------------------------ Fp8Linear
@pytest.mark.parametrize("dtype, tol", [(E4M3, 0.04), (E5M2, 0.08)])
def test_fp8_linear_matches_the_bf16_linear(dtype, tol):
    """Output of Fp8Linear vs the bf16 Linear it was made from, bf16 inputs: relative (Frobenius) error below
    4% (e4m3) / 8% (e5m2); measured 2.5% / 5.0%, the fp8 rounding of the weights."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(256, 96).to(torch.bfloat16)
    with torch.no_grad():
        linear.weight.mul_(torch.logspace(-2, 1, 96).to(torch.bfloat16)[:, None])    # rows of different size
    x = torch.randn(4, 10, 256, dtype=torch.bfloat16)
    layer = Fp8Linear.from_linear(linear, dtype)
    want = linear(x)
    got = layer(x)
    assert got.dtype == torch.bfloat16 and got.shape == want.shape
    assert rel_err(got, want) < tol, rel_err(got, want)
    assert rel_err(got, want) > 1e-4            # really quantised, not a bf16 copy
    torch.testing.assert_close(layer.bias, linear.bias)


def test_fp8_linear_stores_one_byte_per_weight():
    layer = Fp8Linear.from_linear(torch.nn.Linear(64, 32))
    assert layer.weight.dtype == E4M3 and layer.weight.element_size() == 1 and not layer.weight.requires_grad
    assert layer.scale.dtype == torch.float32 and layer.scale.shape == (32,)
    assert layer.bias.dtype == torch.bfloat16
    assert parameter_bytes(layer) == 64 * 32 * 1 + 32 * 4 + 32 * 2
    assert set(layer.state_dict()) == {"weight", "scale", "bias"}
    layer.to(torch.bfloat16)                     # a model-wide dtype change keeps the fp8 storage and fp32 scale
    assert layer.weight.dtype == E4M3 and layer.scale.dtype == torch.float32
    layer.to(torch.float32)
    assert layer.weight.dtype == E4M3 and layer.bias.dtype == torch.float32 and layer.compute_dtype == torch.float32


def test_14b_dit_in_fp8_takes_16_5_gb():
    """Bytes of the I2V-14B DiT with fp8 Linears, built on meta. Formula: sum over the replaced Linears of
    (out*in*1 B fp8 weight + out*4 B fp32 scale + out*2 B bf16 bias) + 2 B for every other parameter (norms,
    modulation, conv patch embedding, time_embedding.0). 16.42e9 B (15.3 GiB) against 32.8e9 B in bf16."""
    with torch.device("meta"):
        model = WanModel(DIT_PRESETS["wan2.1-i2v-14b"])
    n_params = sum(p.numel() for p in model.parameters())
    quantize_model_fp8(model)
    fp8_layers = [m for m in model.modules() if isinstance(m, Fp8Linear)]
    linear = sum(m.weight.numel() for m in fp8_layers)
    out = sum(m.out_features for m in fp8_layers)
    formula = linear * 1 + out * 4 + out * 2 + (n_params - linear - out) * 2
    assert parameter_bytes(model) == formula
    assert 16.3e9 < formula < 16.6e9, formula / 1e9
    assert linear / n_params > 0.999             # practically every parameter is a Linear weight
    assert model.time_embedding[0].__class__ is torch.nn.Linear   # skipped: embed_timestep reads its dtype


# ------------------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def dit():
    return tiny_dit(TINY_I2V)


@pytest.fixture(scope="module")
def bf16_output(dit, tmp_path_factory):
    path = tmp_path_factory.mktemp("bf16") / "dit.safetensors"
    save_file(dit.state_dict(), str(path))
    return dit_forward(load_wan_dit(path, torch.bfloat16, config=TINY_I2V)).float()


def _fp8_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, Fp8Linear)}


def test_load_models_fp8_gives_fp8_linears(tmp_path, dit, bf16_output):
    """DiffSynth spelling: ModelManager.load_models(..., torch_dtype=torch.float8_e4m3fn). Every Linear but
    time_embedding.0 becomes an Fp8Linear holding quantize_fp8(W); the rest is bf16. The forward equals a bf16
    DiT holding the dequantised weights within 2% (bf16 rounding only; measured ~0.5%), and is within 10% of the
    bf16 load's (measured 4.6%: this tiny DiT has random std-0.2 weights everywhere, norms and modulation
    included, which amplifies any weight error; see benchmarks/bench_fp8.py for realistic scales)."""
    path = tmp_path / "dit.safetensors"
    save_file(dit.state_dict(), str(path))
    manager = ModelManager()
    manager.load_models([path], torch_dtype=E4M3, config=TINY_I2V)
    model = manager.fetch_model("wan_video_dit")
    layers = _fp8_layers(model)
    assert set(layers) == set(fp8_linear_names(dit)) and len(layers) > 20
    for name, layer in layers.items():
        assert layer.weight.dtype == E4M3 and layer.scale.dtype == torch.float32
        q, scale = quantize_fp8(dit.get_submodule(name).weight, E4M3, "channel")
        assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8)) and torch.equal(layer.scale, scale)
    others = [(n, p) for n, p in model.named_parameters() if not n.endswith(".weight") or
              n.rpartition(".")[0] not in layers]
    assert others and all(p.dtype == torch.bfloat16 for _, p in others)
    out = dit_forward(model).float()
    reference = tiny_dit(TINY_I2V)
    with torch.no_grad():
        for name, layer in layers.items():
            reference.get_submodule(name).weight.copy_(layer.dequantized_weight())
    reference = dit_forward(reference.to(torch.bfloat16)).float()
    assert rel_err(out, reference) < 0.02, rel_err(out, reference)
    assert rel_err(out, bf16_output) < 0.10, rel_err(out, bf16_output)


@pytest.mark.parametrize("granularity", ["tensor", "none"])
def test_load_fp8_granularity_options(tmp_path, dit, granularity):
    path = tmp_path / "dit.safetensors"
    save_file(dit.state_dict(), str(path))
    model = load_wan_dit(path, E4M3, config=TINY_I2V, fp8_granularity=granularity)
    for name, layer in _fp8_layers(model).items():
        q, scale = quantize_fp8(dit.get_submodule(name).weight, E4M3, granularity)
        assert torch.equal(layer.scale, scale) and len(set(layer.scale.tolist())) == 1
        assert layer.granularity == granularity


def test_plain_fp8_file_is_kept_as_stored(tmp_path, dit):
    """An fp8 (e4m3fn, unscaled) file loaded as fp8: the stored bytes, scale 1, no second rounding."""
    sd = cast_state_dict(dit.state_dict(), E4M3)
    path = tmp_path / "wan_fp8.safetensors"
    save_file(prefixed(sd, "model.diffusion_model."), str(path))
    model = load_wan_dit(path, E4M3, config=TINY_I2V)
    for name, layer in _fp8_layers(model).items():
        assert torch.equal(layer.weight.view(torch.uint8), sd[name + ".weight"].view(torch.uint8))
        assert torch.all(layer.scale == 1)


def test_fp8_request_on_an_old_gpu_stores_e5m2(tmp_path, dit, monkeypatch, caplog):
    path = tmp_path / "dit.safetensors"
    save_file(dit.state_dict(), str(path))
    monkeypatch.setattr(fp8_module, "device_capability", lambda device: (8, 6))       # an Ampere GPU
    with caplog.at_level(logging.WARNING, logger="diffsynth.models.fp8"):
        model = load_wan_dit(path, E4M3, config=TINY_I2V)
    assert {m.weight.dtype for m in _fp8_layers(model).values()} == {E5M2}
    assert "float8_e5m2" in caplog.text and "8.6" in caplog.text


@pytest.mark.parametrize("capability, expected", [
    (None, E4M3), ((7, 5), E5M2), ((8, 0), E5M2), ((8, 6), E5M2), ((8, 9), E4M3), ((9, 0), E4M3), ((12, 0), E4M3)])
def test_e5m2_fallback_rule(capability, expected, caplog):
    with caplog.at_level(logging.WARNING, logger="diffsynth.models.fp8"):
        assert fp8_storage_dtype(E4M3, capability) == expected
    assert ("e5m2" in caplog.text) == (expected == E5M2)
    assert fp8_storage_dtype(E5M2, capability) == E5M2                 # e5m2 asked for: always e5m2
    assert fp8_module.device_capability("cpu") is None


# ------------------------------------------------------------------------------------------------ ComfyUI fp8_scaled
def _comfy_scaled(dit, per_channel: bool, bare_marker: bool = False):
    """A ComfyUI fp8_scaled file: Linear weights stored as e4m3fn W / s with `<layer>.scale_weight` = s (a scalar
    or [out]) and a `scale_input`, the `scaled_fp8` marker, every key under `model.diffusion_model.`."""
    sd, linears = {}, set(fp8_linear_names(dit, skip=()))
    for key, value in dit.state_dict().items():
        module = key.rpartition(".")[0]
        if key.endswith(".weight") and module in linears:
            q, scale = quantize_fp8(value, E4M3, "channel" if per_channel else "tensor")
            sd[key] = q
            sd[module + ".scale_weight"] = scale if per_channel else scale[0].clone()    # shape [] like ComfyUI
            sd[module + ".scale_input"] = torch.tensor(1.0)
        else:
            sd[key] = value.to(torch.bfloat16)
    sd = prefixed(sd, "model.diffusion_model.")
    marker = torch.empty(0, dtype=E4M3)
    sd["scaled_fp8" if bare_marker else "model.diffusion_model.scaled_fp8"] = marker
    return sd


@pytest.mark.parametrize("per_channel, bare_marker", [(False, False), (True, False), (False, True)])
def test_comfyui_fp8_scaled_loads_as_fp8(tmp_path, dit, per_channel, bare_marker):
    """Loaded as fp8: the stored fp8 bytes and the file's scales, unchanged. Its forward matches the same file
    dequantised into bf16 within 2% (the only difference: W_q * scale rounded once to bf16 at load vs per call
    with a bf16-rounded scale; measured < 1%)."""
    sd = _comfy_scaled(dit, per_channel, bare_marker)
    path = tmp_path / "wan2.1_i2v_fp8_scaled.safetensors"
    save_file(sd, str(path))
    model = load_wan_dit(path, E4M3, config=TINY_I2V)
    for name, layer in _fp8_layers(model).items():
        stored = sd["model.diffusion_model." + name + ".weight"]
        scale = sd["model.diffusion_model." + name + ".scale_weight"]
        assert torch.equal(layer.weight.view(torch.uint8), stored.view(torch.uint8))          # as stored
        assert torch.equal(layer.scale, scale.expand(layer.out_features))
    # time_embedding.0 is not an Fp8Linear: its scaled fp8 weight is dequantised into bf16
    key = "model.diffusion_model.time_embedding.0."
    want = (sd[key + "weight"].float() * sd[key + "scale_weight"].reshape(-1, 1)).to(torch.bfloat16)
    assert torch.equal(model.time_embedding[0].weight, want)
    out = dit_forward(model).float()
    dequantised = dit_forward(load_wan_dit(path, torch.bfloat16, config=TINY_I2V)).float()
    assert rel_err(out, dequantised) < 0.02, rel_err(out, dequantised)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, None])
def test_comfyui_fp8_scaled_dequantised_without_fp8(tmp_path, dit, dtype):
    """Without an fp8 dtype every scaled weight is W_stored * scale_weight in the requested dtype (None: bf16)."""
    sd = _comfy_scaled(dit, per_channel=False)
    path = tmp_path / "wan_fp8_scaled.safetensors"
    save_file(sd, str(path))
    model = load_wan_dit(path, dtype, config=TINY_I2V)
    assert not _fp8_layers(model)
    got, checked = model.state_dict(), 0
    for key, value in sd.items():
        if key.endswith(".weight") and key[: -len("weight")] + "scale_weight" in sd:
            name = key[len("model.diffusion_model."):]
            want = value.float() * sd[key[: -len("weight")] + "scale_weight"]
            assert torch.equal(got[name], want.to(dtype or torch.bfloat16)), name
            checked += 1
    assert checked == len(fp8_linear_names(dit, skip=()))


# ------------------------------------------------------------------------------------------------ LoRA
def test_lora_merge_into_fp8_requantises(tmp_path, dit):
    """load_lora_v2 after an fp8 load: W_q*s is dequantised, B@A added in fp32 and the sum requantised with new
    per-channel scales, so the merged layer equals quantize(dequant(W) + B@A); a plain cast of the sum without
    scales would fail this, and a merge that skipped the fp8 layers would leave them unchanged."""
    path = tmp_path / "dit.safetensors"
    save_file(dit.state_dict(), str(path))
    manager = ModelManager()
    manager.load_models([path], torch_dtype=E4M3, config=TINY_I2V)
    model = manager.fetch_model("wan_video_dit")
    gen = torch.Generator().manual_seed(3)
    targets = ["blocks.0.self_attn.q", "blocks.1.ffn.0"]
    lora, before = {}, {}
    for name in targets:
        layer = model.get_submodule(name)
        before[name] = layer.dequantized_weight().clone()
        lora[f"pipe.dit.{name}.lora_A.default.weight"] = torch.randn(2, layer.in_features, generator=gen)
        lora[f"pipe.dit.{name}.lora_B.default.weight"] = torch.randn(layer.out_features, 2, generator=gen) * 3
    lora_path = tmp_path / "lora.safetensors"
    save_file(lora, str(lora_path))
    assert manager.load_lora_v2(lora_path) == 2
    for name in targets:
        layer = model.get_submodule(name)
        assert isinstance(layer, Fp8Linear) and layer.weight.dtype == E4M3
        merged = before[name] + lora[f"pipe.dit.{name}.lora_B.default.weight"] @ \
            lora[f"pipe.dit.{name}.lora_A.default.weight"]
        q, scale = quantize_fp8(merged, E4M3, "channel")
        assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8)) and torch.equal(layer.scale, scale)
        assert rel_err(layer.dequantized_weight(), merged) < 0.04
