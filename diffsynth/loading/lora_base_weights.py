"""The base weights under merged LoRAs: the original of each weight a merge changes, kept the first time it
changes, so `ModelManager.unload_loras` puts the base model back bit-exactly."""
from __future__ import annotations

from typing import Dict, Tuple

import torch


class BaseWeights:
    """The original values of the weights a LoRA merge changed, kept the first time each one changes, so `restore`
    puts the base model back bit-exactly.

    A CPU weight is kept by reference (no copy): its merged value goes to new memory and the original tensor stays
    untouched here. A weight on another device is copied to CPU. Either way the cost is CPU memory equal to the
    touched weights as stored (bf16: 2 bytes per parameter, ~1 GB for the block Linears of a 537M-parameter DiT,
    ~26 GB for a 14B DiT with a LoRA on every block Linear; fp8: 1 byte per parameter plus fp32 scales)."""

    def __init__(self):
        self._saved: Dict[int, Tuple[object, Tuple[torch.Tensor, ...]]] = {}

    @staticmethod
    def tensors(owner) -> Tuple[torch.Tensor, ...]:
        """The tensors of `owner` a merge changes: a Parameter itself, or an Fp8Linear's weight and scale."""
        from ..models.fp8 import Fp8Linear

        return (owner.weight, owner.scale) if isinstance(owner, Fp8Linear) else (owner,)

    def __contains__(self, owner) -> bool:
        return id(owner) in self._saved

    def keep(self, owner, originals: Tuple[torch.Tensor, ...]) -> None:
        """Record `originals` (tensors the caller no longer changes) as the base value of `owner`."""
        if id(owner) not in self._saved:
            self._saved[id(owner)] = (owner, originals)

    def save(self, owner) -> None:
        """Keep a CPU copy of the current value of `owner` (for a weight that is changed in place)."""
        if id(owner) not in self._saved:
            self.keep(owner, tuple(t.detach().to("cpu", copy=True) for t in self.tensors(owner)))

    @torch.no_grad()
    def restore(self) -> int:
        """Put every kept original back (same dtype: bit-exact) and forget them. Returns the number restored."""
        for owner, saved in self._saved.values():
            for tensor, original in zip(self.tensors(owner), saved):
                if original.device == tensor.device and original.dtype == tensor.dtype:
                    tensor.data = original
                else:                     # moved since (e.g. the DiT went to the GPU): copy into place
                    tensor.data.copy_(original)
        count = len(self._saved)
        self._saved.clear()
        return count

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, saved in self._saved.values() for t in saved)

    def __len__(self) -> int:
        return len(self._saved)


__all__ = ["BaseWeights"]
