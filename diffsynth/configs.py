"""Model configurations as frozen dataclasses, with named presets for the released Wan2.1 checkpoints.

Every size here is what the official checkpoint files imply; `config_from_state_dict` helpers in
`diffsynth.loading` read the same fields back from tensor shapes.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Tuple

# Per-channel latent statistics of the Wan2.1 VAE (z_dim 16), exact decimal values from the official code.
WAN_VAE_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN_VAE_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)


@dataclass(frozen=True)
class WanDiTConfig:
    """Wan2.1 diffusion transformer (`WanModel`)."""

    model_type: str = "i2v"          # "t2v" or "i2v" (i2v adds img_emb and the k_img/v_img cross-attention branch)
    in_dim: int = 36                 # latent channels in: 16 (t2v) or 16 noise + 20 y channels (i2v)
    dim: int = 5120                  # model width d
    ffn_dim: int = 13824             # feed-forward hidden width
    num_heads: int = 40              # head width d / num_heads (128 for every released model)
    num_layers: int = 40
    out_dim: int = 16                # latent channels out
    text_dim: int = 4096             # umT5 width
    freq_dim: int = 256              # sinusoidal timestep embedding width
    image_dim: int = 1280            # CLIP token width (i2v only)
    patch_size: Tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    text_len: int = 512              # prompts are zero-padded to this many tokens
    rope_max_len: int = 1024         # RoPE table length per axis (official value)

    def __post_init__(self):
        if self.model_type not in ("t2v", "i2v"):
            raise ValueError(f"model_type must be 't2v' or 'i2v', got {self.model_type!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head width {self.head_dim} must be even for RoPE")

    @property
    def has_image_input(self) -> bool:
        return self.model_type == "i2v"

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @classmethod
    def from_preset(cls, name: str) -> "WanDiTConfig":
        """The configuration of a released model: "wan2.1-t2v-1.3b", "wan2.1-t2v-14b" or "wan2.1-i2v-14b"."""
        try:
            return DIT_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(DIT_PRESETS)}") from None


DIT_PRESETS = {
    "wan2.1-t2v-1.3b": WanDiTConfig(model_type="t2v", in_dim=16, dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-t2v-14b": WanDiTConfig(model_type="t2v", in_dim=16, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.1-i2v-14b": WanDiTConfig(model_type="i2v", in_dim=36, dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}


@dataclass(frozen=True)
class WanVAEConfig:
    """Wan2.1 causal video VAE (`Wan2.1_VAE.pth`)."""

    dim: int = 96                                         # base channel width
    z_dim: int = 16                                       # latent channels (the encoder emits 2*z_dim: mean, log-var)
    dim_mult: Tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: Tuple[float, ...] = ()
    temporal_downsample: Tuple[bool, ...] = (False, True, True)   # decoder uses the reverse
    latents_mean: Tuple[float, ...] = WAN_VAE_LATENT_MEAN
    latents_std: Tuple[float, ...] = WAN_VAE_LATENT_STD

    def __post_init__(self):
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(f"latents_mean/std need z_dim={self.z_dim} values each; got {len(self.latents_mean)} "
                             f"and {len(self.latents_std)}")


@dataclass(frozen=True)
class UMT5Config:
    """umT5-XXL encoder (`models_t5_umt5-xxl-enc-bf16.pth`)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_attn: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32
    max_distance: int = 128
    eps: float = 1e-6
    text_len: int = 512


@dataclass(frozen=True)
class ClipVisionConfig:
    """Visual tower of open-clip XLM-RoBERTa-large / ViT-H-14 (the `visual.*` part of the Wan CLIP file)."""

    image_size: int = 224
    patch_size: int = 14
    dim: int = 1280
    mlp_dim: int = 5120
    num_heads: int = 16
    num_layers: int = 32
    out_dim: int = 1024              # `head` projection width (stored, unused by Wan)
    eps: float = 1e-5
    use_layers: int = 31             # Wan takes the output of block 31 of 32 (penultimate)
    mean: Tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: Tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)

    @property
    def num_tokens(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class PoseGuiderConfig:
    """UniAnimate pose encoders: `dwpose_embedding` (pose video -> DiT tokens), `randomref_embedding_pose`."""

    hidden_dim: int = 16             # upstream concat_dim * 4
    out_dim: int = 5120              # follows the DiT width
    ref_dim: int = 20                # channels of the I2V `y` tensor


__all__ = [
    "DEMO_HEIGHT", "DEMO_WIDTH", "DEMO_INFERENCE",
    "WanDiTConfig", "DIT_PRESETS", "WanVAEConfig", "UMT5Config", "ClipVisionConfig", "PoseGuiderConfig",
    "WAN_VAE_LATENT_MEAN", "WAN_VAE_LATENT_STD", "replace",
]


# What the demo model was trained and evaluated at: its own size and schedule (the defaults whenever it runs).
DEMO_HEIGHT, DEMO_WIDTH = 64, 48
DEMO_INFERENCE = dict(num_inference_steps=10, cfg_scale=1.0, sigma_shift=5.0)
