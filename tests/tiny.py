"""Tiny model configurations and seeded random weights shared by the tests."""
from __future__ import annotations

import torch

from diffsynth.configs import PoseGuiderConfig, WanDiTConfig


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.5) -> torch.nn.Module:
    """Give every parameter seeded random values (default inits leave norms at 1 and biases at 0, which would
    hide mapping mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(module.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)
    return module


TINY_I2V = WanDiTConfig(model_type="i2v", in_dim=36, dim=24, ffn_dim=32, num_heads=2, num_layers=2,
                        text_dim=32, image_dim=16)
TINY_T2V = WanDiTConfig(model_type="t2v", in_dim=16, dim=24, ffn_dim=32, num_heads=2, num_layers=2, text_dim=32)
TINY_POSE = PoseGuiderConfig(out_dim=24)
