"""Layers shared by the Wan models: RMSNorm, the sinusoidal timestep embedding and 3D rotary embeddings."""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis; normalised in fp32, cast back, then scaled by `weight`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        normed = F.rms_norm(xf, (xf.shape[-1],), eps=self.eps)   # x * rsqrt(mean(x^2) + eps), fused
        return normed.to(x.dtype) * self.weight


def sinusoidal_embedding(dim: int, timestep: torch.Tensor) -> torch.Tensor:
    """Wan timestep embedding: [cos(t w_i) | sin(t w_i)], w_i = 10000^(-i/(dim/2)), computed in float64.

    The result has the timestep's dtype (float32 for integer timesteps). With a bf16 timestep this reproduces the
    DiffSynth/UniAnimate numerics, where t is rounded to bf16 *before* the sinusoid.
    """
    half = dim // 2
    t = timestep.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=t.device) / half)
    angles = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)
    out_dtype = timestep.dtype if timestep.is_floating_point() else torch.float32
    return emb.to(out_dtype)


def rope_split(head_dim: int) -> Tuple[int, int, int]:
    """Channels per axis (t, h, w) of the 3D RoPE: 44/42/42 for head width 128."""
    hw = 2 * (head_dim // 6)
    return head_dim - 2 * hw, hw, hw


def _axis_angles(positions: torch.Tensor, axis_dim: int, theta: float) -> torch.Tensor:
    """[P] positions -> [P, axis_dim/2] angles, float64 (each axis uses its own width in the exponent)."""
    freqs = 1.0 / torch.pow(theta, torch.arange(0, axis_dim, 2, dtype=torch.float64, device=positions.device) / axis_dim)
    return positions.to(torch.float64)[:, None] * freqs[None, :]


def rope_cos_sin(grid: Tuple[int, int, int], head_dim: int, device=None, theta: float = 10000.0,
                 max_len: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """Rotary phases of the (f, h, w) token grid, flattened in (f, h, w) row-major order.

    Returns cos, sin of shape [L, 1, head_dim/2] in float64 (callers cast them once to the compute dtype).
    Positions are local indices 0..T-1, 0..h'-1, 0..w'-1, as in every Wan implementation.
    """
    f, h, w = grid
    if max(grid) > max_len:
        raise ValueError(f"token grid {grid} (frames, height/16, width/16) exceeds the RoPE table length {max_len} "
                         f"on one axis; generate at most {max_len} latent frames and {16 * max_len} pixels per side")
    dt, dh_, dw = rope_split(head_dim)
    pos = lambda n: torch.arange(n, device=device)  # noqa: E731
    at, ah, aw = _axis_angles(pos(f), dt, theta), _axis_angles(pos(h), dh_, theta), _axis_angles(pos(w), dw, theta)
    angles = torch.cat([
        at[:, None, None, :].expand(f, h, w, -1),
        ah[None, :, None, :].expand(f, h, w, -1),
        aw[None, None, :, :].expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, head_dim // 2)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate adjacent channel pairs (2m, 2m+1) of x [B, L, n, dh] by the phases cos/sin [L, 1, dh/2].

    Equivalent to the upstream complex multiply `(x[2m] + i x[2m+1]) * e^{i angle_m}` but in real arithmetic at
    the precision of cos/sin (fp32 for half inputs), so no float64 copies of q and k are ever made.
    """
    compute = cos.dtype
    x_pairs = x.unflatten(-1, (-1, 2))
    x1, x2 = x_pairs[..., 0].to(compute), x_pairs[..., 1].to(compute)
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def rope_compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Precision of the rotation: fp32 for half inputs, the input's own precision otherwise."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


__all__ = ["RMSNorm", "sinusoidal_embedding", "rope_split", "rope_cos_sin", "apply_rope", "rope_compute_dtype"]
