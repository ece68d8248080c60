"""MagCache for the Wan DiT: skip the transformer blocks while the calibrated residual magnitude barely changes.

Rule (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache"; reference code
github.com/Zehong-Ma/MagCache, MagCache4Wan2.1/magcache_generate.py, `magcache_forward`, commit e1862e0): a
calibration run measured, per step, the mean ratio of the blocks' residual norm to the previous step's
(`MAG_RATIOS`). From the last computed step on, each step multiplies an accumulated ratio by its table ratio and adds
|1 - accumulated ratio| to an accumulated error; the step is skipped (the last computed residual is added to the
block input instead) while the error stays under `threshold` and at most `K` steps in a row were skipped, otherwise
it is computed and the accumulators reset. The first `retention_ratio` of the steps are always computed. Unlike
TeaCache the decision reads no tensor: the whole schedule is known before sampling.

The tables interleave the two CFG branches per step (conditional first, as Wan2.1 calls the model) and were
calibrated for a step count of len(table) / 2; for another count each branch's column is resampled by nearest
index (`nearest_interp`). One object per branch (and long-video window): branch 0 reads the conditional column,
branch 1 the unconditional one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Sequence, Tuple

import numpy as np
import torch

from .block_cache import BRANCHES, BlockCache, BlockCacheConfig, check_choice, check_int, check_number

# Published magnitude ratios, MagCache4Wan2.1/magcache_generate.py (commit e1862e09110943638562513e0128c3c7f790540a,
# unchanged since the initial version), interleaved [cond step 0, uncond step 0, cond step 1, ...]. I2V tables are
# calibrated for 40 steps, T2V for 50 (the Wan2.1 default sampling steps of each task).
MAG_RATIOS = {
    "Wan2.1-I2V-14B-480P": (
        1.0, 1.0,  # upstream's padding for step 0 (no previous residual to compare with)
        0.98783, 0.98993, 0.97559, 0.97593, 0.98311, 0.98319, 0.98202, 0.98225, 0.9888, 0.98878,
        0.98762, 0.98759, 0.98957, 0.98971, 0.99052, 0.99043, 0.99383, 0.99384, 0.98857, 0.9886,
        0.99065, 0.99068, 0.98845, 0.98847, 0.99057, 0.99057, 0.98957, 0.98961, 0.98601, 0.9861,
        0.98823, 0.98823, 0.98756, 0.98759, 0.98808, 0.98814, 0.98721, 0.98724, 0.98571, 0.98572,
        0.98543, 0.98544, 0.98157, 0.98165, 0.98411, 0.98413, 0.97952, 0.97953, 0.98149, 0.9815,
        0.9774, 0.97742, 0.97825, 0.97826, 0.97355, 0.97361, 0.97085, 0.97087, 0.97056, 0.97055,
        0.96588, 0.96587, 0.96113, 0.96124, 0.9567, 0.95681, 0.94961, 0.94969, 0.93973, 0.93988,
        0.93217, 0.93224, 0.91878, 0.91896, 0.90955, 0.90954, 0.92617, 0.92616,
    ),
    "Wan2.1-I2V-14B-720P": (
        1.0, 1.0,  # upstream's padding for step 0 (no previous residual to compare with)
        0.99428, 0.99498, 0.98588, 0.98621, 0.98273, 0.98281, 0.99018, 0.99023, 0.98911, 0.98917,
        0.98646, 0.98652, 0.99454, 0.99456, 0.9891, 0.98909, 0.99124, 0.99127, 0.99102, 0.99103,
        0.99215, 0.99212, 0.99515, 0.99515, 0.99576, 0.99572, 0.99068, 0.99072, 0.99097, 0.99097,
        0.99166, 0.99169, 0.99041, 0.99042, 0.99201, 0.99198, 0.99101, 0.99101, 0.98599, 0.98603,
        0.98845, 0.98844, 0.98848, 0.98851, 0.98862, 0.98857, 0.98718, 0.98719, 0.98497, 0.98497,
        0.98264, 0.98263, 0.98389, 0.98393, 0.97938, 0.9794, 0.97535, 0.97536, 0.97498, 0.97499,
        0.973, 0.97301, 0.96827, 0.96828, 0.96261, 0.96263, 0.95335, 0.9534, 0.94649, 0.94655,
        0.93397, 0.93414, 0.91636, 0.9165, 0.89088, 0.89109, 0.8679, 0.86768,
    ),
    "Wan2.1-T2V-1.3B": (
        1.0, 1.0,  # upstream's padding for step 0 (no previous residual to compare with)
        1.0124, 1.02213, 1.00166, 1.0041, 0.99791, 1.00061, 0.99682, 0.99762, 0.99634, 0.99685,
        0.99567, 0.99586, 0.99416, 0.99422, 0.99578, 0.99575, 0.9957, 0.99563, 0.99511, 0.99506,
        0.99535, 0.99531, 0.99552, 0.99549, 0.99541, 0.99539, 0.9954, 0.99536, 0.99489, 0.99485,
        0.99518, 0.99514, 0.99484, 0.99478, 0.99481, 0.99479, 0.99415, 0.99413, 0.99419, 0.99416,
        0.99396, 0.99393, 0.99388, 0.99386, 0.99349, 0.99349, 0.99309, 0.99304, 0.9927, 0.9927,
        0.99228, 0.99226, 0.99171, 0.9917, 0.99137, 0.99135, 0.99068, 0.99063, 0.99005, 0.99003,
        0.98944, 0.98942, 0.98849, 0.98849, 0.98758, 0.98757, 0.98644, 0.98643, 0.98504, 0.98503,
        0.9836, 0.98359, 0.98202, 0.98201, 0.97977, 0.97978, 0.97717, 0.97718, 0.9741, 0.97411,
        0.97003, 0.97002, 0.96538, 0.96541, 0.9593, 0.95933, 0.95086, 0.95089, 0.94013, 0.94019,
        0.92402, 0.92414, 0.90241, 0.9026, 0.86821, 0.86868, 0.81838, 0.81939,
    ),
    "Wan2.1-T2V-14B": (
        1.0, 1.0,  # upstream's padding for step 0 (no previous residual to compare with)
        1.02504, 1.03017, 1.00025, 1.00251, 0.9985, 0.99962, 0.99779, 0.99771, 0.9966, 0.99658,
        0.99482, 0.99476, 0.99467, 0.99451, 0.99664, 0.99656, 0.99434, 0.99431, 0.99533, 0.99545,
        0.99468, 0.99465, 0.99438, 0.99434, 0.99516, 0.99517, 0.99384, 0.9938, 0.99404, 0.99401,
        0.99517, 0.99516, 0.99409, 0.99408, 0.99428, 0.99426, 0.99347, 0.99343, 0.99418, 0.99416,
        0.99271, 0.99269, 0.99313, 0.99311, 0.99215, 0.99215, 0.99218, 0.99215, 0.99216, 0.99217,
        0.99163, 0.99161, 0.99138, 0.99135, 0.98982, 0.9898, 0.98996, 0.98995, 0.9887, 0.98866,
        0.98772, 0.9877, 0.98767, 0.98765, 0.98573, 0.9857, 0.98501, 0.98498, 0.9838, 0.98376,
        0.98177, 0.98173, 0.98037, 0.98035, 0.97678, 0.97677, 0.97546, 0.97543, 0.97184, 0.97183,
        0.96711, 0.96708, 0.96349, 0.96345, 0.95629, 0.95625, 0.94926, 0.94929, 0.93964, 0.93961,
        0.92511, 0.92504, 0.90693, 0.90678, 0.8796, 0.87945, 0.86111, 0.86189,
    ),
}


def nearest_interp(values: Sequence[float], length: int) -> np.ndarray:
    """Resample `values` to `length` entries by nearest index, as upstream's `nearest_interp`: entry k reads index
    round(k * (len - 1) / (length - 1)) with numpy's half-to-even rounding (so both ends are kept)."""
    values = np.asarray(values, dtype=np.float64)
    if length == 1:
        return values[-1:]
    step = (len(values) - 1) / (length - 1)
    return values[np.round(np.arange(length) * step).astype(int)]


def branch_ratios(table: Sequence[float], branch: int, num_inference_steps: int) -> np.ndarray:
    """One branch's per-step ratios for `num_inference_steps` from an interleaved table (resampled if the table was
    calibrated for another step count)."""
    column = np.asarray(table, dtype=np.float64)[branch::2]
    if len(column) == num_inference_steps:
        return column
    return nearest_interp(column, num_inference_steps)


class MagCache(BlockCache):
    """State of one CFG branch (and window): step counter, accumulated ratio/error/skips and the last residual.

    Settings as `MagCacheConfig` (threshold >= 0, K >= 1, retention_ratio in [0, 1], model_id in `MAG_RATIOS`,
    optional own interleaved `mag_ratios`) plus `branch` (0 conditional, 1 unconditional). `should_compute`
    ignores its argument.
    """

    def __init__(self, num_inference_steps: int, threshold: float = 0.12, K: int = 2, retention_ratio: float = 0.2,
                 model_id: str = "Wan2.1-I2V-14B-480P", branch: int = 0,
                 mag_ratios: Optional[Sequence[float]] = None):
        super().__init__(num_inference_steps)
        self.threshold = check_number("MagCache threshold", threshold, minimum=0.0)
        self.K = check_int("MagCache K", K, minimum=1)
        self.retention_ratio = check_number("MagCache retention_ratio", retention_ratio, minimum=0.0, maximum=1.0)
        self.model_id = check_choice("MagCache model_id", model_id, sorted(MAG_RATIOS))
        self.branch = check_choice("branch", branch, BRANCHES)
        self.mag_ratios = None if mag_ratios is None else _check_table(mag_ratios)
        table = MAG_RATIOS[model_id] if self.mag_ratios is None else self.mag_ratios
        self.ratios = branch_ratios(table, branch, num_inference_steps)
        # Upstream counts the calls of both branches together (call c = 2 * step + branch, of 2 * steps) and retains
        # calls c < int(2 * steps * retention_ratio); same float expression, so odd cut-offs split the same way.
        self.retained_calls = int(num_inference_steps * 2 * retention_ratio)
        self._reset()

    def should_compute(self, modulation: Optional[torch.Tensor] = None) -> bool:
        """Decide for this call from the table (the modulation is not read); advances the step counter."""
        compute = self._decide()
        self._advance(compute)
        if self.step == 0:
            self._reset()   # a full schedule is done: the next call starts a new generation (upstream does the same)
        return compute

    def _decide(self) -> bool:
        """The rule for the current step; updates the accumulators."""
        if self._retained() or self.previous_residual is None:
            return True
        self.accumulated_ratio *= float(self.ratios[self.step])
        self.accumulated_steps += 1
        self.accumulated_error += abs(1.0 - self.accumulated_ratio)
        if self.accumulated_error < self.threshold and self.accumulated_steps <= self.K:
            return False
        self._reset()
        return True

    def _retained(self) -> bool:
        # Step 0 always computes: upstream would otherwise add a missing (or the previous video's) residual when
        # retention_ratio rounds to no retained call; it never differs from upstream where upstream runs.
        return self.step == 0 or 2 * self.step + self.branch < self.retained_calls

    def _reset(self) -> None:
        """Accumulators back to "just computed"."""
        self.accumulated_ratio = 1.0
        self.accumulated_error = 0.0
        self.accumulated_steps = 0

    def _fresh(self) -> "MagCache":
        return MagCache(self.num_inference_steps, self.threshold, self.K, self.retention_ratio, self.model_id,
                        self.branch, self.mag_ratios)


def _check_table(mag_ratios: Sequence[float]) -> tuple:
    """An own calibration: interleaved (cond, uncond) per step, finite positive ratios."""
    values = tuple(float(v) for v in mag_ratios)
    if len(values) < 2 or len(values) % 2 or not all(np.isfinite(values)) or min(values) <= 0:
        raise ValueError("mag_ratios must interleave (conditional, unconditional) ratios per step: an even number "
                         f">= 2 of finite positive values, got {len(values)} values")
    return values


@dataclass(frozen=True)
class MagCacheConfig(BlockCacheConfig):
    """MagCache (see `magcache.py`); defaults are the authors' script defaults (MagCache4Wan2.1/magcache_generate.py).

    threshold >= 0: bound on the accumulated error (0 computes every step); K >= 1: most consecutive skips;
    retention_ratio in [0, 1]: leading fraction of steps always computed; model_id: one of `MAG_RATIOS`;
    mag_ratios: optional own calibration (interleaved conditional, unconditional per step, step 0 first), which
    replaces the published table of `model_id`.
    """

    threshold: float = 0.12
    K: int = 2
    retention_ratio: float = 0.2
    model_id: str = "Wan2.1-I2V-14B-480P"
    mag_ratios: Optional[Tuple[float, ...]] = None
    needs_modulation: ClassVar[bool] = False

    def __post_init__(self):
        if self.mag_ratios is not None:
            object.__setattr__(self, "mag_ratios", tuple(self.mag_ratios))   # hashable, immutable like the rest
        self.new_cache(1)   # validates every field

    def new_cache(self, num_inference_steps: int, branch: int = 0) -> MagCache:
        return MagCache(num_inference_steps, threshold=self.threshold, K=self.K,
                        retention_ratio=self.retention_ratio, model_id=self.model_id, branch=branch,
                        mag_ratios=self.mag_ratios)



__all__ = ["MagCache", "MagCacheConfig", "MAG_RATIOS", "nearest_interp", "branch_ratios"]
