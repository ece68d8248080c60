"""Slow checks at the real VAE width (run with `bash scripts/test.sh -m slow`)."""
from __future__ import annotations

import pytest
import torch

from diffsynth.configs import WanVAEConfig
from diffsynth.loading.diffusers_vae import vae_official_to_diffusers
from diffsynth.models.wan_vae import WanVideoVAE

pytestmark = pytest.mark.slow


@torch.no_grad()
def test_real_size_vae_matches_diffusers_and_round_trips_shapes():
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    ours = WanVideoVAE(WanVAEConfig()).eval()                      # the released architecture, random weights
    peer = AutoencoderKLWan().eval()
    peer.load_state_dict(vae_official_to_diffusers(ours.state_dict()), strict=True)
    video = torch.rand(1, 3, 5, 32, 48) * 2 - 1
    mu = ours.encode_raw(video)
    torch.testing.assert_close(mu, peer.encode(video).latent_dist.mean, atol=1e-5, rtol=1e-5)
    latents = ours.encode(video, progress=False)
    assert latents.shape == (1, 16, 2, 4, 6)
    decoded = ours.decode(latents, progress=False)
    assert decoded.shape == video.shape and decoded.abs().max() <= 1
    raw = latents / ours.inv_std.view(1, -1, 1, 1, 1) + ours.mean.view(1, -1, 1, 1, 1)   # diffusers does not de-normalise
    expected = peer.decode(raw).sample
    torch.testing.assert_close(decoded, expected, atol=1e-5, rtol=1e-5)
