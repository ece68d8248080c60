"""CLIP ViT-H/14 visual tower, the Wan2.1 image encoder (`visual.*` of
`models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth`).

`WanImageEncoder.state_dict()` keys are the official ones, `visual.` prefix included:

    visual.patch_embedding.weight                [dim, 3, patch, patch]   (no bias)
    visual.cls_embedding                         [1, 1, dim]
    visual.pos_embedding                         [1, tokens, dim]
    visual.pre_norm.{weight,bias}                [dim]
    visual.transformer.{i}.norm1.{weight,bias}   [dim]
    visual.transformer.{i}.attn.to_qkv.*         [3 dim, dim] / [3 dim]   (rows laid out as (3, heads, head_dim))
    visual.transformer.{i}.attn.proj.*           [dim, dim] / [dim]
    visual.transformer.{i}.norm2.{weight,bias}   [dim]
    visual.transformer.{i}.mlp.0.*               [mlp_dim, dim] / [mlp_dim]
    visual.transformer.{i}.mlp.2.*               [dim, mlp_dim] / [dim]
    visual.post_norm.{weight,bias}               [dim]        (stored, unused by Wan)
    visual.head                                  [dim, out_dim] (stored, unused by Wan)

Wan uses all 257 tokens after block `use_layers` = 31 of 32, without `post_norm` and `head`.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch

from .layers import HALF_DTYPES
import torch.nn as nn
import torch.nn.functional as F

from diffsynth.configs import ClipVisionConfig
from diffsynth.models.attention import attention

CLIP_MEAN = ClipVisionConfig.mean
CLIP_STD = ClipVisionConfig.std


class ClipLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input and parameter dtypes, then cast back to the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).type_as(x)


class ClipSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attention_backend: Optional[str] = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.attention_backend = attention_backend   # None: $DIFFSYNTH_ATTENTION or the best importable kernel
        self.head_dim = dim // num_heads
        self.to_qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, L, dim] -> [B, L, dim]; softmax scale 1/sqrt(head_dim), no mask."""
        b, s, c = x.shape
        q, k, v = self.to_qkv(x).view(b, s, 3, self.num_heads, self.head_dim).unbind(2)
        return self.proj(attention(q, k, v, backend=self.attention_backend).reshape(b, s, c))


class ClipAttentionBlock(nn.Module):
    def __init__(self, dim: int, mlp_dim: int, num_heads: int, eps: float, attention_backend: Optional[str] = None):
        super().__init__()
        self.norm1 = ClipLayerNorm(dim, eps=eps)
        self.attn = ClipSelfAttention(dim, num_heads, attention_backend)
        self.norm2 = ClipLayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))  # exact GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class VisionTransformer(nn.Module):
    """open-clip ViT with pre-norm; the attribute names are the official `visual.*` keys."""

    def __init__(self, config: ClipVisionConfig, attention_backend: Optional[str] = None):
        super().__init__()
        if config.image_size % config.patch_size:
            raise ValueError(f"image_size={config.image_size} is not a multiple of patch_size={config.patch_size}")
        dim, gain = config.dim, 1.0 / config.dim ** 0.5
        self.patch_embedding = nn.Conv2d(3, dim, config.patch_size, stride=config.patch_size, bias=False)
        self.cls_embedding = nn.Parameter(gain * torch.randn(1, 1, dim))
        self.pos_embedding = nn.Parameter(gain * torch.randn(1, config.num_tokens, dim))
        self.pre_norm = ClipLayerNorm(dim, eps=config.eps)
        self.transformer = nn.ModuleList([
            ClipAttentionBlock(dim, config.mlp_dim, config.num_heads, config.eps, attention_backend)
            for _ in range(config.num_layers)
        ])
        self.post_norm = ClipLayerNorm(dim, eps=config.eps)
        self.head = nn.Parameter(gain * torch.randn(dim, config.out_dim))

    def forward(self, x: torch.Tensor, num_blocks: Optional[int] = None) -> torch.Tensor:
        """
        Args:
            x: [B, 3, image_size, image_size] normalised pixels.
            num_blocks: how many transformer blocks to apply (None = all).
        Returns:
            [B, tokens, dim] hidden states after `num_blocks` blocks (no post_norm, no head).
        """
        dtype = self.patch_embedding.weight.dtype
        # 1. Patches + class token + absolute positions, then pre-norm.
        x = self.patch_embedding(x.to(dtype)).flatten(2).transpose(1, 2)  # [B, patches, dim]
        x = torch.cat([self.cls_embedding.expand(x.size(0), -1, -1).to(dtype), x], dim=1)
        if x.size(1) != self.pos_embedding.size(1):
            raise ValueError(f"got {x.size(1)} tokens, the position table has {self.pos_embedding.size(1)}: "
                             "resize the image to the configured image_size first")
        x = self.pre_norm(x + self.pos_embedding.to(dtype))
        # 2. Transformer blocks.
        for block in self.transformer[:num_blocks]:
            x = block(x)
        return x


def _to_minus1_1_tensor(image) -> torch.Tensor:
    """Float tensor [3,H,W] or [B,3,H,W] in [-1,1] -> [B,3,H,W]. Models take tensors only: images are decoded in
    the data layer (`diffsynth.data.images.image_to_tensor`)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"expected a float tensor in [-1, 1], got {type(image).__name__}; convert images with "
                        "diffsynth.data.images.image_to_tensor(image, height, width)")
    if not image.is_floating_point():
        raise TypeError(f"expected a float tensor in [-1, 1], got dtype {image.dtype}")
    x = image.unsqueeze(0) if image.ndim == 3 else image
    if x.ndim != 4 or x.size(1) != 3:
        raise ValueError(f"expected a tensor [B, 3, H, W] or [3, H, W], got shape {tuple(image.shape)}")
    return x.float() if x.dtype in HALF_DTYPES else x


def preprocess_clip_image(
    image: Union[torch.Tensor, Sequence[torch.Tensor]],
    size: int = 224,
    mean: Sequence[float] = CLIP_MEAN,
    std: Sequence[float] = CLIP_STD,
) -> torch.Tensor:
    """Wan2.1 CLIP preprocessing: squash-resize to size x size, then CLIP-normalise.

    Accepts a float tensor [B,3,H,W] or [3,H,W] with values in [-1, 1], or a list of those (each resized on its own,
    then stacked). PIL images are converted in the data layer (`diffsynth.data.images.image_to_tensor`).
    Steps, as in the official `CLIPModel.visual`: torch bicubic interpolation (align_corners=False, no antialias)
    straight to `size` (aspect ratio not kept, no crop); `x * 0.5 + 0.5` back to [0, 1] without clamping (bicubic may
    overshoot slightly); `(x - mean) / std`. Computed in fp32 (half inputs are upcast).

    Returns:
        [B, 3, size, size] float32 (float64 for float64 input).
    """
    if isinstance(image, (list, tuple)):
        return torch.cat([preprocess_clip_image(u, size, mean, std) for u in image])
    x = _to_minus1_1_tensor(image)
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    x = x.mul(0.5).add(0.5)
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x.sub(mean_t).div(std_t)


class WanImageEncoder(nn.Module):
    """CLIP visual tower; `forward` gives the Wan image tokens [B, 257, 1280] for the default config."""

    def __init__(self, config: ClipVisionConfig = ClipVisionConfig(), attention_backend: Optional[str] = None):
        super().__init__()
        if not 0 < config.use_layers <= config.num_layers:
            raise ValueError(f"use_layers={config.use_layers} must be in 1..num_layers={config.num_layers}")
        self.config = config
        self.visual = VisionTransformer(config, attention_backend)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels: [B, 3, image_size, image_size] already normalised -> [B, tokens, dim] after `use_layers` blocks."""
        return self.visual(pixels, num_blocks=self.config.use_layers)

    def encode_image(self, images) -> torch.Tensor:
        """Images in [-1, 1] (see `preprocess_clip_image` for accepted types) -> [B, tokens, dim] in param dtype."""
        weight = self.visual.patch_embedding.weight
        if isinstance(images, torch.Tensor):
            images = images.to(weight.device)  # resize where the model runs, as upstream does
        pixels = preprocess_clip_image(images, self.config.image_size, self.config.mean, self.config.std)
        return self.forward(pixels.to(device=weight.device, dtype=weight.dtype))


__all__ = [
    "WanImageEncoder", "VisionTransformer", "ClipAttentionBlock", "ClipSelfAttention", "ClipLayerNorm",
    "preprocess_clip_image", "CLIP_MEAN", "CLIP_STD",
]
