"""Layers shared by the Wan models: RMSNorm, the sinusoidal timestep embedding and 3D rotary embeddings."""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# The 16-bit float dtypes: computed in fp32 where upstream upcasts (norms, modulation, attention kernels).
HALF_DTYPES = (torch.float16, torch.bfloat16)


class RMSNorm(nn.Module):
    """RMS normalisation over the last axis; normalised in fp32, cast back, then scaled by `weight`."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in HALF_DTYPES else x
        normed = F.rms_norm(xf, (xf.shape[-1],), eps=self.eps)   # x * rsqrt(mean(x^2) + eps), fused
        # Each fp32 copy is dropped as soon as it is used (the same numbers): the q/k norms of a batched-CFG step
        # were the DiT's memory peak, two [B, L, d] fp32 copies beside the cast; 1.0 GiB lower at 480p (simulated).
        del xf
        normed = normed.to(x.dtype)
        return normed * self.weight


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


@functools.lru_cache(maxsize=16)
def _axis_phasors(axis_dim: int, max_len: int, theta: float) -> torch.Tensor:
    """[max_len, axis_dim/2] complex128 unit phasors of positions 0..max_len-1, built exactly as upstream
    (`rope_params`: float64 angles, `torch.polar`, on the CPU); each axis uses its own width in the exponent.
    Cached (at most 1 MB each); never modify the result."""
    freqs = 1.0 / torch.pow(theta, torch.arange(0, axis_dim, 2, dtype=torch.float64) / axis_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freqs)
    return torch.polar(torch.ones_like(angles), angles)


def rope_freqs(grid: Tuple[int, int, int], head_dim: int, device=None, theta: float = 10000.0,
               max_len: int = 1024) -> torch.Tensor:
    """Rotary phasors of the (f, h, w) token grid, flattened in (f, h, w) row-major order: [L, 1, head_dim/2],
    complex128. Positions are local indices 0..T-1, 0..h'-1, 0..w'-1, as in every Wan implementation.

    As upstream, the per-axis tables are built on the CPU over all `max_len` positions, moved to `device` and
    indexed there, so every phasor is bit-identical to upstream's on any device (`torch.polar` and `torch.cos`, or
    CPU and GPU kernels, can differ in the last bit).
    """
    f, h, w = grid
    if max(grid) > max_len:
        raise ValueError(f"token grid {grid} (frames, height/16, width/16) exceeds the RoPE table length {max_len} "
                         f"on one axis; generate at most {max_len} latent frames and {16 * max_len} pixels per side")
    tt, th, tw = (_axis_phasors(dim, max_len, float(theta)).to(device) for dim in rope_split(head_dim))
    return torch.cat([
        tt[:f].view(f, 1, 1, -1).expand(f, h, w, -1),
        th[:h].view(1, h, 1, -1).expand(f, h, w, -1),
        tw[:w].view(1, 1, w, -1).expand(f, h, w, -1),
    ], dim=-1).reshape(f * h * w, 1, head_dim // 2)


ROPE_PRECISIONS = ("float64", "float32")
ROPE_CHUNK_BYTES = 32 * 2**20   # default bound on the compute-precision copy of q or k made inside `apply_rope`


def rope_table(freqs: torch.Tensor, precision: str, dtype: torch.dtype) -> torch.Tensor:
    """The table `apply_rope` takes for activations of `dtype`: the complex128 phasors themselves for
    precision "float64" (the upstream rotation), else their (cos, sin) as [L, 1, dh/2, 2] in fp32 (fp64 for fp64
    activations)."""
    if precision not in ROPE_PRECISIONS:
        raise ValueError(f"rope_precision must be one of {ROPE_PRECISIONS}; got {precision!r}")
    if precision == "float64":
        return freqs
    return torch.view_as_real(freqs).to(torch.float64 if dtype == torch.float64 else torch.float32)


def apply_rope(x: torch.Tensor, table: torch.Tensor, chunk_bytes: Optional[int] = None) -> torch.Tensor:
    """Rotate adjacent channel pairs (2m, 2m+1) of x [B, L, n, dh] by phase m; returns x's dtype.

    `table` comes from `rope_table`:
    - complex128 [L, 1, dh/2]: upstream's rotation, bit for bit: `view_as_complex(x.double()) * freqs`, then back to
      x's dtype. (Real float64 arithmetic, `x1*cos - x2*sin`, is NOT bit-identical to torch's complex multiply.)
    - real [L, 1, dh/2, 2] (cos, sin): the same rotation in real arithmetic at the table's precision.

    Tokens are processed in chunks whose compute-precision copy is at most `chunk_bytes` (default
    `ROPE_CHUNK_BYTES`, at least one token), each written into one output of x's dtype and freed at once, so the
    transient stays bounded whatever the sequence length (upstream makes a full float64 copy of q and k: 1.34 GB
    each at 480p for the 14B model). Chunking does not change any value: the rotation is element-wise.
    """
    b, length, n, dh = x.shape
    compute = table.real.dtype if table.is_complex() else table.dtype
    per_token = b * n * dh * compute.itemsize
    step = max(1, (ROPE_CHUNK_BYTES if chunk_bytes is None else chunk_bytes) // per_token)
    out = torch.empty_like(x, memory_format=torch.contiguous_format)
    for start in range(0, length, step):
        rows = slice(start, start + step)
        # copy=True: a float64 x must not be rotated in place
        xc = x[:, rows].to(compute, copy=True).unflatten(-1, (-1, 2))
        if table.is_complex():
            torch.view_as_complex(xc).mul_(table[rows])
            out[:, rows] = xc.flatten(-2)
        else:
            cos, sin = table[rows, ..., 0], table[rows, ..., 1]
            x1, x2 = xc[..., 0], xc[..., 1]
            out[:, rows] = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).flatten(-2)
        del xc
    return out


__all__ = ["RMSNorm", "sinusoidal_embedding", "rope_split", "rope_freqs", "rope_table", "apply_rope", "ROPE_PRECISIONS",
           "ROPE_CHUNK_BYTES"]
