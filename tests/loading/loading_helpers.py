"""Tiny models, their inputs and checkpoint writers shared by the loading tests."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List

import torch
from safetensors.torch import save_file

from tiny import TINY_I2V, randomize_
from diffsynth.configs import ClipVisionConfig, UMT5Config, WanDiTConfig, WanVAEConfig
from diffsynth.models.wan_dit import WanModel
from diffsynth.models.wan_image_encoder import WanImageEncoder
from diffsynth.models.wan_text_encoder import WanTextEncoder
from diffsynth.models.wan_vae import WanVideoVAE

TINY_T5 = UMT5Config(vocab_size=100, dim=32, dim_attn=32, dim_ffn=48, num_heads=4, num_layers=2)
TINY_CLIP = ClipVisionConfig(image_size=28, patch_size=14, dim=32, mlp_dim=64, num_heads=4, num_layers=3,
                             out_dim=16, use_layers=2)
TINY_VAE = WanVAEConfig(dim=4, z_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1)


def tiny_dit(config: WanDiTConfig = TINY_I2V, seed: int = 0) -> WanModel:
    return randomize_(WanModel(config), seed=seed, std=0.2).eval()


def tiny_t5(seed: int = 0) -> WanTextEncoder:
    return randomize_(WanTextEncoder(TINY_T5), seed=seed, std=0.2).eval()


def tiny_clip(seed: int = 0) -> WanImageEncoder:
    return randomize_(WanImageEncoder(TINY_CLIP), seed=seed, std=0.2).eval()


def tiny_vae(seed: int = 0) -> WanVideoVAE:
    """Weights ~ N(0, 1/fan_in) and gammas near 1, so activations stay O(1)."""
    vae = WanVideoVAE(TINY_VAE)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(vae.named_parameters()):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64)
            value = 1.0 + 0.3 * noise if name.endswith("gamma") else noise / math.sqrt(p[0].numel())
            p.copy_(value.to(p.dtype))
    return vae.eval()


# ------------------------------------------------------------------------------------------------ forwards
def dit_forward(model: WanModel, seed: int = 0) -> torch.Tensor:
    cfg, dtype = model.config, model.patch_embedding.weight.dtype
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 2, 4, 4, generator=gen)
    kwargs = dict(timestep=torch.tensor([537.0]), context=torch.randn(1, 6, cfg.text_dim, generator=gen))
    if cfg.has_image_input:
        kwargs["y"] = torch.randn(1, 20, 2, 4, 4, generator=gen)
        kwargs["clip_feature"] = torch.randn(1, 5, cfg.image_dim, generator=gen)
    with torch.no_grad():
        return model(x.to(dtype), **{k: v.to(dtype) for k, v in kwargs.items()})


def t5_forward(model: WanTextEncoder) -> torch.Tensor:
    ids = torch.randint(0, TINY_T5.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(ids, torch.ones_like(ids))


def clip_forward(model: WanImageEncoder) -> torch.Tensor:
    pixels = torch.randn(1, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(pixels.to(model.visual.patch_embedding.weight.dtype))


def vae_forward(model: WanVideoVAE) -> torch.Tensor:
    video = torch.rand(1, 3, 5, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        return model.decode(model.encode(video))


# ------------------------------------------------------------------------------------------------ writers
def cast_state_dict(state_dict: Dict[str, torch.Tensor], dtype) -> Dict[str, torch.Tensor]:
    return {k: v.to(dtype).contiguous() for k, v in state_dict.items()}


def save_shards(state_dict: Dict[str, torch.Tensor], directory: Path, n: int, stem: str = "diffusion_pytorch_model"
                ) -> List[Path]:
    """Split like a HF release: `{stem}-0000k-of-0000n.safetensors`, consecutive keys per shard."""
    keys = list(state_dict)
    per = math.ceil(len(keys) / n)
    paths = []
    for i in range(n):
        path = Path(directory) / f"{stem}-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file({k: state_dict[k].contiguous() for k in keys[i * per:(i + 1) * per]}, str(path))
        paths.append(path)
    return paths


def assert_same_weights(model: torch.nn.Module, expected: Dict[str, torch.Tensor], dtype=None) -> None:
    got = model.state_dict()
    assert set(got) == set(expected), (set(got) ^ set(expected))
    for key, value in expected.items():
        want = value.to(dtype) if dtype is not None else value
        assert got[key].dtype == want.dtype, (key, got[key].dtype, want.dtype)
        assert torch.equal(got[key], want), key


def prefixed(state_dict: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def assert_same_output(got: torch.Tensor, expected: torch.Tensor) -> None:
    """Outputs of two models with bit-identical weights. Not compared bitwise: BLAS kernels may sum in another
    order depending on the weights' memory alignment (a few fp32 ulps, which bf16 rounding can amplify)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    tol = 1e-5 if got.dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
