"""TeaCache for the Wan DiT: skip the transformer blocks on steps where the timestep modulation barely changed.

The signal is the relative L1 change of the block modulation `e0` (`t_mod`, [B, 6, d]) between consecutive calls,
rescaled by a per-model polynomial and accumulated; while the accumulator stays under the threshold the blocks are
skipped and the last computed residual (blocks' output minus input) is added instead. The first and last steps are
always computed. One object per CFG branch (and per long-video window): each keeps its own state.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

# Rescale polynomials, highest degree first (numpy.poly1d order), from the upstream TeaCache tables.
TEACACHE_COEFFICIENTS = {
    "Wan2.1-T2V-1.3B": (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
    "Wan2.1-T2V-14B": (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
    "Wan2.1-I2V-14B-480P": (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    "Wan2.1-I2V-14B-720P": (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
}


class TeaCache:
    """State of one CFG branch (and window): step counter, accumulated change, last modulation and residual."""

    def __init__(self, num_inference_steps: int, rel_l1_thresh: float, model_id: str):
        if model_id not in TEACACHE_COEFFICIENTS:
            raise ValueError(f"TeaCache has no coefficients for model_id {model_id!r}; "
                             f"choose one of {sorted(TEACACHE_COEFFICIENTS)}")
        self.num_inference_steps = num_inference_steps
        self.rel_l1_thresh = rel_l1_thresh
        self.rescale = np.poly1d(TEACACHE_COEFFICIENTS[model_id])
        self.step = 0
        self.accumulated = 0.0
        self.previous_modulation: Optional[torch.Tensor] = None
        self.previous_residual: Optional[torch.Tensor] = None
        self.skipped_steps: list = []

    def should_compute(self, modulation: torch.Tensor) -> bool:
        """Decide for this call from the block modulation e0; advances the step counter."""
        if self.step in (0, self.num_inference_steps - 1) or self.previous_residual is None:
            compute, self.accumulated = True, 0.0
        else:
            prev = self.previous_modulation
            rel = ((modulation - prev).abs().mean() / prev.abs().mean()).item()
            self.accumulated += float(self.rescale(rel))
            compute = self.accumulated >= self.rel_l1_thresh
            if compute:
                self.accumulated = 0.0
        if not compute:
            self.skipped_steps.append(self.step)
        self.previous_modulation = modulation.detach().clone()
        self.step = (self.step + 1) % self.num_inference_steps
        return compute

    def store(self, blocks_in: torch.Tensor, blocks_out: torch.Tensor) -> None:
        """Remember what the blocks added on a computed step."""
        self.previous_residual = blocks_out - blocks_in

    def reuse(self, blocks_in: torch.Tensor) -> torch.Tensor:
        """A skipped step: the block input plus the last computed residual."""
        return blocks_in + self.previous_residual


__all__ = ["TeaCache", "TEACACHE_COEFFICIENTS"]
