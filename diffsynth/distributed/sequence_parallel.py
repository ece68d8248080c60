"""Sequence parallel for the Wan DiT: Ulysses attention on `torch.distributed.all_to_all_single`.

The tokens of one generation are split across the ranks of a group after patch embedding (padded to a multiple of
the group size; the padding is stripped before attention and after the final gather, so it never reaches a
softmax). Everything token-wise (norms, modulation, cross-attention to the replicated text/image context, the FFN,
the head) runs on the local shard. Self-attention exchanges shards for heads: an all-to-all turns
[B, L/P, n, dh] into [B, L, n/P, dh] (each rank sees every token for n/P heads), attention runs there, and a second
all-to-all brings the result back (Ulysses, as DeepSpeed-Ulysses, yunchang and xDiT do). RoPE uses global positions:
the full table is sliced like the tokens. Needs the head count (40 for the 14B DiT) divisible by the group size.

Ring attention (`ring_size > 1`, optionally with Ulysses inside each ring step) runs on yunchang's
`LongContextAttention`, the engine under xDiT (`pip install yunchang`; its groups are made by `init_parallel` with
`yunchang.set_seq_parallel_pg`, over the same ranks in the same order). Ring attention has no mask, so it needs a
token count divisible by the sequence-parallel size (480p and 720p at 81 frames are divisible by 8); other counts
are refused with that message. On CUDA it uses flash-attn when installed, else torch's flash SDPA kernel.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.distributed as dist

from ..models.attention import attention as local_attention


class SequenceParallel:
    """Token sharding and Ulysses attention over one process group (see the module docstring).

    `shard` records the unpadded token count of the current forward; `attention` and `gather` use it, so one
    object serves one forward at a time (the DiT forward is sequential)."""

    def __init__(self, group: Optional[dist.ProcessGroup] = None, ring_size: int = 1):
        self.group = group
        self.size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        self.length: Optional[int] = None
        self.ring_size = ring_size
        self._ring = ring_attention_engine() if ring_size > 1 else None

    # ------------------------------------------------------------------------------------------ sharding
    def chunk(self, length: int) -> int:
        """Tokens per rank for a sequence of `length` (the last rank's shard may be partly padding)."""
        return math.ceil(length / self.size)

    def _local_rows(self, tensor: torch.Tensor, dim: int) -> torch.Tensor:
        length = tensor.shape[dim]
        chunk = self.chunk(length)
        start, stop = self.rank * chunk, min((self.rank + 1) * chunk, length)
        local = tensor.narrow(dim, start, max(stop - start, 0))
        if local.shape[dim] < chunk:   # pad with zeros: stripped before attention and after the gather
            shape = list(local.shape)
            shape[dim] = chunk - local.shape[dim]
            local = torch.cat([local, local.new_zeros(shape)], dim=dim)
        return local.contiguous()

    def shard(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, L, d] -> this rank's padded shard [B, ceil(L/P), d]."""
        self.length = tokens.shape[1]
        return self._local_rows(tokens, 1)

    def shard_rope(self, table: torch.Tensor) -> torch.Tensor:
        """The RoPE table [L, ...] of the full sequence -> the rows of this rank's tokens (global positions)."""
        return self._local_rows(table, 0)

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """Shards [B, L/P, C] from every rank -> [B, L, C] in token order, padding stripped."""
        local = local.contiguous()
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local, group=self.group)
        return torch.cat(parts, dim=1)[:, :self.length]

    # ----------------------------------------------------------------------------------------- attention
    def _exchange(self, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        out = torch.empty_like(tensor, memory_format=torch.contiguous_format)   # not the input's permuted strides
        dist.all_to_all_single(out, tensor, group=self.group)
        return out

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Optional[str] = None
                  ) -> torch.Tensor:
        """Self-attention of the whole sequence from local shards q, k, v [B, L/P, n, dh] -> [B, L/P, n, dh]."""
        if self._ring is not None:
            if self.length % self.size:
                raise ValueError(f"ring attention needs the token count ({self.length}) divisible by the "
                                 f"sequence-parallel size ({self.size}): change the frame count or size, or use "
                                 "ring_size=1 (Ulysses pads exactly)")
            return self._ring(q, k, v)
        batch, chunk, heads, head_dim = q.shape
        size = self.size
        if heads % size:
            raise ValueError(f"Ulysses sequence parallel needs the head count ({heads}) divisible by the group size "
                             f"({size}); choose ulysses_size among the divisors of {heads}")

        def to_heads(t: torch.Tensor) -> torch.Tensor:
            # [B, c, n, dh] -> [P, B, c, n/P, dh]: slice i (head group i) goes to rank i; rank j's slice comes back
            # as slice j, so concatenating the received slices follows the token order.
            parts = t.reshape(batch, chunk, size, heads // size, head_dim).permute(2, 0, 1, 3, 4)
            received = self._exchange(parts)
            full = received.permute(1, 0, 2, 3, 4).reshape(batch, size * chunk, heads // size, head_dim)
            return full[:, :self.length]

        out = local_attention(to_heads(q), to_heads(k), to_heads(v), backend)     # [B, L, n/P, dh]
        if out.shape[1] < size * chunk:
            out = torch.cat([out, out.new_zeros(batch, size * chunk - out.shape[1], *out.shape[2:])], dim=1)
        parts = out.reshape(batch, size, chunk, heads // size, head_dim).permute(1, 0, 2, 3, 4)
        back = self._exchange(parts)                                               # [P (head group), B, c, n/P, dh]
        return back.permute(1, 2, 0, 3, 4).reshape(batch, chunk, heads, head_dim)


def ring_attention_engine():
    """yunchang's LongContextAttention (Ulysses within, ring across; the groups set by `set_seq_parallel_pg`)."""
    try:
        from yunchang import LongContextAttention  # noqa: PLC0415
        from yunchang.kernels import AttnType  # noqa: PLC0415
    except ImportError as error:
        raise ImportError(f"ring attention (ring_size > 1) runs on yunchang, the engine under xDiT: pip install "
                          f"yunchang ({error})") from error
    try:
        import flash_attn  # noqa: F401,PLC0415
        impl, kind = "basic", AttnType.FA
    except Exception:  # noqa: BLE001 - any broken flash-attn install: torch's kernels instead
        impl, kind = "basic_pytorch", AttnType.TORCH_FLASH
    return LongContextAttention(ring_impl_type=impl, attn_type=kind)


__all__ = ["SequenceParallel", "ring_attention_engine"]
