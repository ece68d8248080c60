"""TeaCache for the Wan DiT: skip the transformer blocks on steps where the timestep modulation barely changed.

The signal is the relative L1 change of the block modulation `e0` (`t_mod`, [B, 6, d]) between consecutive calls,
rescaled by a per-model polynomial and accumulated; while the accumulator stays under the threshold the blocks are
skipped and the last computed residual (blocks' output minus input) is added instead. The first and last steps are
always computed. One object per CFG branch (and per long-video window): each keeps its own state.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np
import torch

from .block_cache import BRANCHES, BlockCache, BlockCacheConfig, check_choice, check_number, check_schedule_length

# Rescale polynomials, highest degree first (numpy.poly1d order), from the upstream TeaCache tables.
TEACACHE_COEFFICIENTS = {
    "Wan2.1-T2V-1.3B": (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
    "Wan2.1-T2V-14B": (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
    "Wan2.1-I2V-14B-480P": (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    "Wan2.1-I2V-14B-720P": (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
}


class TeaCache(BlockCache):
    """State of one CFG branch (and window): step counter, accumulated change, last modulation and residual.

    `TeaCache(num_inference_steps, rel_l1_thresh, model_id)`; rel_l1_thresh >= 0 (0 computes every step), model_id
    one of `TEACACHE_COEFFICIENTS`. `should_compute` needs the block modulation e0 of every call.
    """

    def __init__(self, num_inference_steps: int, rel_l1_thresh: float, model_id: str):
        super().__init__(num_inference_steps)
        check_choice("TeaCache model_id", model_id, sorted(TEACACHE_COEFFICIENTS))
        self.rel_l1_thresh = check_number("rel_l1_thresh", rel_l1_thresh, minimum=0.0)
        self.model_id = model_id
        self.rescale = np.poly1d(TEACACHE_COEFFICIENTS[model_id])
        self.accumulated = 0.0
        self.previous_modulation: Optional[torch.Tensor] = None

    def should_compute(self, modulation: torch.Tensor) -> bool:
        """Decide for this call from the block modulation e0; advances the step counter."""
        if modulation is None:
            raise ValueError("TeaCache.should_compute needs the block modulation e0, got None")
        compute = self._decide(modulation)
        self.previous_modulation = modulation.detach().clone()
        self._advance(compute)
        return compute

    def _decide(self, modulation: torch.Tensor) -> bool:
        """The rule: first and last steps compute; otherwise accumulate the rescaled relative L1 change of e0 and
        compute (resetting the sum) once it reaches the threshold."""
        if self.step in (0, self.num_inference_steps - 1) or self.previous_residual is None:
            self.accumulated = 0.0
            return True
        prev = self.previous_modulation
        rel = ((modulation - prev).abs().mean() / prev.abs().mean()).item()
        self.accumulated += float(self.rescale(rel))
        if self.accumulated >= self.rel_l1_thresh:
            self.accumulated = 0.0
            return True
        return False

    def _fresh(self) -> "TeaCache":
        return TeaCache(self.num_inference_steps, self.rel_l1_thresh, self.model_id)

    def _plan_inputs(self, modulations):
        if modulations is None:
            raise ValueError("TeaCache.plan needs the block modulation e0 of every step (modulations=None given)")
        return check_schedule_length(modulations, self.num_inference_steps)

    def to(self, device) -> "TeaCache":
        """Move the residual and the last modulation to `device`, values unchanged; returns self."""
        super().to(device)
        if self.previous_modulation is not None:
            self.previous_modulation = self.previous_modulation.to(device)
        return self


@dataclass(frozen=True)
class TeaCacheConfig(BlockCacheConfig):
    """TeaCache (see `teacache.py`): `rel_l1_thresh` >= 0 (0 computes every step; upstream suggests 0.1-0.3),
    `model_id` one of `TEACACHE_COEFFICIENTS`. The same rule serves both branches."""

    rel_l1_thresh: float
    model_id: str
    needs_modulation: ClassVar[bool] = True

    def __post_init__(self):
        self.new_cache(1)   # validates every field (one source of the checks: the cache constructor)

    def new_cache(self, num_inference_steps: int, branch: int = 0) -> TeaCache:
        check_choice("branch", branch, BRANCHES)
        return TeaCache(num_inference_steps, self.rel_l1_thresh, self.model_id)



__all__ = ["TeaCache", "TeaCacheConfig", "TEACACHE_COEFFICIENTS"]
