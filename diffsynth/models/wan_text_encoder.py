"""umT5-XXL encoder, the Wan2.1 text encoder (`models_t5_umt5-xxl-enc-bf16.pth`).

Attribute names are the official checkpoint keys, so the released state dict loads with a strict `load_state_dict`:

    token_embedding.weight                          [vocab, dim]
    blocks.{i}.norm1.weight                         [dim]
    blocks.{i}.attn.{q,k,v,o}.weight                [dim_attn, dim] / o: [dim, dim_attn]
    blocks.{i}.pos_embedding.embedding.weight       [num_buckets, num_heads]   (one table per layer: umT5)
    blocks.{i}.norm2.weight                         [dim]
    blocks.{i}.ffn.gate.0.weight, ffn.fc1.weight    [dim_ffn, dim]
    blocks.{i}.ffn.fc2.weight                       [dim, dim_ffn]
    norm.weight                                     [dim]

Numerics follow the official code (which the DiffSynth/UniAnimate fork copies): no 1/sqrt(d) attention scaling,
softmax in fp32, T5 RMS norm in fp32 cast to the weight dtype when that is half precision, and the tanh GELU written
out as a formula (as in Wan2.1 and transformers' `gelu_new`), so bf16 runs round at the same places as upstream.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn

from .layers import HALF_DTYPES

from diffsynth.configs import UMT5Config



def fp16_clamp(x: torch.Tensor) -> torch.Tensor:
    """Official overflow guard: in fp16 only, pull +-inf back into range (a no-op for bf16/fp32)."""
    if x.dtype == torch.float16 and torch.isinf(x).any():
        limit = torch.finfo(x.dtype).max - 1000
        x = torch.clamp(x, min=-limit, max=limit)
    return x


class GELUTanh(nn.Module):
    """0.5 u (1 + tanh(sqrt(2/pi) (u + 0.044715 u^3))), evaluated op by op in the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


class T5LayerNorm(nn.Module):
    """T5 RMS norm: no mean subtraction, no bias; normalised in fp32, cast to the weight dtype if that is half."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x * torch.rsqrt(x.float().pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight.dtype in HALF_DTYPES:
            x = x.type_as(self.weight)
        return self.weight * x


def relative_position_bucket(rel_pos: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 bucket of `rel_pos = key_pos - query_pos` (integer tensor, any shape).

    Half the buckets are for r > 0. With a = |r| and m = num_buckets // 4 (8 for the default 32): a itself when
    a < m, else min(2m - 1, m + floor(ln(a/m) / ln(max_distance/m) * m)), computed in float32 in the same order as
    Wan2.1 and transformers so the boundaries agree exactly.
    """
    half = num_buckets // 2
    buckets = (rel_pos > 0).long() * half
    a = rel_pos.abs()
    max_exact = half // 2
    # clamp(min=1) only avoids log(0) in the branch `torch.where` discards.
    large = max_exact + (
        torch.log(a.clamp(min=1).float() / max_exact) / math.log(max_distance / max_exact) * (half - max_exact)
    ).long()
    large = large.clamp(max=half - 1)
    return buckets + torch.where(a < max_exact, a, large)


class T5RelativeEmbedding(nn.Module):
    """Learned relative position bias `[1, n, Lq, Lk]` (one per layer in umT5)."""

    def __init__(self, num_buckets: int, num_heads: int, max_distance: int):
        super().__init__()
        self.num_buckets = num_buckets
        self.max_distance = max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)

    def forward(self, lq: int, lk: int) -> torch.Tensor:
        device = self.embedding.weight.device
        rel_pos = torch.arange(lk, device=device)[None, :] - torch.arange(lq, device=device)[:, None]
        buckets = relative_position_bucket(rel_pos, self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1).unsqueeze(0)  # [1, n, Lq, Lk]


class T5Attention(nn.Module):
    def __init__(self, dim: int, dim_attn: int, num_heads: int):
        super().__init__()
        if dim_attn % num_heads:
            raise ValueError(f"dim_attn={dim_attn} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim_attn // num_heads
        self.q = nn.Linear(dim, dim_attn, bias=False)
        self.k = nn.Linear(dim, dim_attn, bias=False)
        self.v = nn.Linear(dim, dim_attn, bias=False)
        self.o = nn.Linear(dim_attn, dim, bias=False)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor], pos_bias: torch.Tensor) -> torch.Tensor:
        """
        x: [B, L, dim]; mask: [B, L] (1 = real token, 0 = padding; masks keys only) or None;
        pos_bias: [1, n, L, L]. Returns [B, L, dim].
        """
        b, s, n, c = x.size(0), x.size(1), self.num_heads, self.head_dim
        q = self.q(x).view(b, s, n, c)
        k = self.k(x).view(b, s, n, c)
        v = self.v(x).view(b, s, n, c)

        bias = pos_bias.to(x.dtype).expand(b, n, s, s)
        if mask is not None:
            bias = bias.masked_fill(mask.view(b, 1, 1, s) == 0, torch.finfo(x.dtype).min)

        logits = torch.einsum("binc,bjnc->bnij", q, k) + bias  # no 1/sqrt(c) scaling in T5
        weights = torch.softmax(logits.float(), dim=-1).type_as(logits)
        out = torch.einsum("bnij,bjnc->binc", weights, v).reshape(b, s, n * c)
        return self.o(out)


class T5FeedForward(nn.Module):
    """Gated GELU: fc2(fc1(x) * gelu_tanh(gate(x))); `gate` is HF's wi_0, `fc1` is wi_1."""

    def __init__(self, dim: int, dim_ffn: int):
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(dim, dim_ffn, bias=False), GELUTanh())
        self.fc1 = nn.Linear(dim, dim_ffn, bias=False)
        self.fc2 = nn.Linear(dim_ffn, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x) * self.gate(x))


class T5Block(nn.Module):
    def __init__(self, config: UMT5Config):
        super().__init__()
        self.norm1 = T5LayerNorm(config.dim, config.eps)
        self.attn = T5Attention(config.dim, config.dim_attn, config.num_heads)
        self.norm2 = T5LayerNorm(config.dim, config.eps)
        self.ffn = T5FeedForward(config.dim, config.dim_ffn)
        self.pos_embedding = T5RelativeEmbedding(config.num_buckets, config.num_heads, config.max_distance)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        # 1. Self-attention with this layer's own relative position bias.
        pos_bias = self.pos_embedding(x.size(1), x.size(1))
        x = fp16_clamp(x + self.attn(self.norm1(x), mask, pos_bias))
        # 2. Gated feed-forward.
        x = fp16_clamp(x + self.ffn(self.norm2(x)))
        return x


class WanTextEncoder(nn.Module):
    """umT5 encoder: token ids -> contextual embeddings (dropout omitted: inference and frozen use only)."""

    def __init__(self, config: UMT5Config = UMT5Config()):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.dim)
        self.blocks = nn.ModuleList([T5Block(config) for _ in range(config.num_layers)])
        self.norm = T5LayerNorm(config.dim, config.eps)

    def forward(self, ids: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """
        Args:
            ids: [B, L] token ids.
            mask: [B, L] attention mask (1 = token, 0 = padding). Padding positions are masked as keys only; their
                own rows are still computed (callers zero them afterwards, see `WanPrompter.encode_prompt`).
        Returns:
            [B, L, dim] in the parameter dtype.
        """
        x = self.token_embedding(ids)
        for block in self.blocks:
            x = block(x, mask)
        return self.norm(x)


__all__ = [
    "WanTextEncoder", "T5Block", "T5Attention", "T5FeedForward", "T5LayerNorm", "T5RelativeEmbedding",
    "GELUTanh", "relative_position_bucket",
]
