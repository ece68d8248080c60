"""The FLOPs of one Wan DiT forward from its configuration and the latent size: the matrix products only (what
`torch.utils.flop_counter.FlopCounterMode` counts; norms, RoPE and activations are a rounding error beside them).

Wan2.1-I2V-14B at 480p (81 frames, 21 x 60 x 104 latents, 32,760 tokens): 1.686e15 per forward, two thirds of it
the self-attention's score and value products. Used for time estimates before a run (`animate` on a CPU) and to
check the simulator's count.
"""
from __future__ import annotations

from ..configs import WanDiTConfig

CLIP_TOKENS = 257      # the CLIP ViT-H image tokens of an I2V model (cls + 16 x 16 patches)


def dit_tokens(config: WanDiTConfig, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Video tokens after the patch embedding."""
    pt, ph, pw = config.patch_size
    return (latent_frames // pt) * (latent_height // ph) * (latent_width // pw)


def dit_forward_flops(config: WanDiTConfig, latent_frames: int, latent_height: int, latent_width: int,
                      text_tokens: int = None) -> float:
    """Multiply-adds x 2 of one forward over one video (one CFG branch, batch 1)."""
    d, L = config.dim, dit_tokens(config, latent_frames, latent_height, latent_width)
    text = config.text_len if text_tokens is None else text_tokens
    image = CLIP_TOKENS if config.has_image_input else 0
    patch = 2 * L * config.in_dim * config.patch_size[0] * config.patch_size[1] * config.patch_size[2] * d
    embed = 2 * text * (config.text_dim * d + d * d) + 2 * (config.freq_dim * d + d * d + d * 6 * d)
    if image:
        embed += 2 * image * (config.image_dim * config.image_dim + config.image_dim * d)
    self_attention = 2 * 4 * L * d * d + 2 * 2 * L * L * d                 # q, k, v, o; scores and values
    cross_attention = 2 * 2 * L * d * d + 2 * 2 * (text + image) * d * d \
        + 2 * 2 * L * (text + image) * d                                     # q, o; k, v of the contexts; products
    ffn = 2 * 2 * L * d * config.ffn_dim
    head = 2 * L * d * config.out_dim * config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
    return float(patch + embed + config.num_layers * (self_attention + cross_attention + ffn) + head)


__all__ = ["dit_forward_flops", "dit_tokens", "CLIP_TOKENS"]
