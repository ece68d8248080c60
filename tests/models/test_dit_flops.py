"""The DiT FLOP formula against torch's own counter over a real forward (an independent count)."""
from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from diffsynth.configs import WanDiTConfig
from diffsynth.models.dit_flops import CLIP_TOKENS, dit_forward_flops
from diffsynth.models.wan_dit import WanModel


@pytest.mark.parametrize("model_type, latents", [("i2v", (3, 8, 6)), ("t2v", (2, 6, 10)), ("i2v", (1, 4, 4))])
def test_formula_matches_torchs_flop_counter(model_type, latents):
    config = WanDiTConfig(model_type=model_type, in_dim=36 if model_type == "i2v" else 16, dim=64, ffn_dim=96,
                          num_heads=4, num_layers=2, text_dim=48, image_dim=40, freq_dim=32, text_len=20)
    model = WanModel(config).eval()
    frames, height, width = latents
    x = torch.randn(1, 16, frames, height, width)
    inputs = dict(timestep=torch.tensor([500.0]), context=torch.randn(1, config.text_len, config.text_dim))
    if model_type == "i2v":
        inputs.update(clip_feature=torch.randn(1, CLIP_TOKENS, config.image_dim),
                      y=torch.randn(1, 20, frames, height, width))
    # The math kernel is made of counted matrix products (the CPU's fused flash kernel has no FLOP formula in torch).
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, **inputs)
    assert dit_forward_flops(config, frames, height, width) == pytest.approx(counter.get_total_flops(), rel=0.01)


def test_the_released_14b_at_480p():
    """21 x 104 x 60 latents (81 frames at 832x480): the count the simulator's FlopCounterMode gave at full size."""
    assert dit_forward_flops(WanDiTConfig(), 21, 104, 60) == pytest.approx(1.686e15, rel=1e-3)
