"""Block caching for the Wan DiT: the interface the DiT forward calls, and the configs the pipelines take.

Protocol, per DiT call (one cache object per CFG branch and per long-video window, each with its own state):

    if cache.should_compute(modulation):          # advances the cache's step counter
        out = run_blocks(tokens); cache.store(tokens, out); tokens = out
    else:
        tokens = cache.reuse(tokens)              # tokens + the last computed residual

Rules: `TeaCache` (timestep-modulation change, `teacache.py`) and `MagCache` (calibrated residual magnitude
ratios, `magcache.py`). A pipeline takes one config (`TeaCacheConfig` or `MagCacheConfig`) and asks it for a cache
per branch with `new_cache(num_inference_steps, branch)`.
"""
from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from typing import ClassVar, Iterable, List, Optional, Sequence, Union

import torch


BRANCHES = (0, 1)   # 0: conditional (positive prompt), 1: unconditional (negative prompt)


class BlockCache(ABC):
    """Skip-or-compute state of one CFG branch (and window) around the DiT block loop.

    Attributes: `num_inference_steps`; `step` (index of the next call, wraps to 0 after a full schedule so the object
    can serve the next generation); `skipped_steps` (steps answered with `reuse`, appended across generations);
    `previous_residual` (blocks' output minus input on the last computed step, or None).
    """

    def __init__(self, num_inference_steps: int):
        self.num_inference_steps = check_int("num_inference_steps", num_inference_steps, minimum=1)
        self.step = 0
        self.previous_residual: Optional[torch.Tensor] = None
        self.skipped_steps: List[int] = []

    @abstractmethod
    def should_compute(self, modulation: Optional[torch.Tensor]) -> bool:
        """True: run the blocks (then call `store`); False: call `reuse`. Advances the step counter."""

    @abstractmethod
    def _fresh(self) -> "BlockCache":
        """A new cache with the same settings and no state (what `plan` simulates on)."""

    def store(self, blocks_in: torch.Tensor, blocks_out: torch.Tensor) -> None:
        """Remember what the blocks added on a computed step."""
        self.previous_residual = blocks_out - blocks_in

    def reuse(self, blocks_in: torch.Tensor) -> torch.Tensor:
        """A skipped step: the block input plus the last computed residual."""
        if self.previous_residual is None:
            raise RuntimeError(f"{type(self).__name__}.reuse called before any store(): nothing to reuse")
        return blocks_in + self.previous_residual

    def to(self, device: Union[torch.device, str]) -> "BlockCache":
        """Move the held tensors (the residual) to `device`, values unchanged; returns self."""
        if self.previous_residual is not None:
            self.previous_residual = self.previous_residual.to(device)
        return self

    def plan(self, modulations: Optional[Sequence[torch.Tensor]] = None) -> List[bool]:
        """The decisions a fresh cache with these settings makes over one whole schedule, without running blocks.

        Returns `num_inference_steps` booleans, True = computed (False = residual reused). `modulations` are the
        per-step inputs to `should_compute` (required by rules that read them, see the config's
        `needs_modulation`). Pure: this object's state is not touched.
        """
        probe = self._fresh()
        decisions = []
        for modulation in self._plan_inputs(modulations):
            compute = probe.should_compute(modulation)
            if compute:
                probe.previous_residual = _STORED   # what `store` would leave; its value never matters here
            decisions.append(compute)
        return decisions

    def _plan_inputs(self, modulations: Optional[Sequence[torch.Tensor]]) -> Sequence[Optional[torch.Tensor]]:
        """One `should_compute` argument per step; rules that ignore the modulation accept None."""
        if modulations is None:
            return [None] * self.num_inference_steps
        return check_schedule_length(modulations, self.num_inference_steps)

    def _advance(self, compute: bool) -> None:
        """Record the decision for the current step and move to the next one (wrapping after the last)."""
        if not compute:
            self.skipped_steps.append(self.step)
        self.step = (self.step + 1) % self.num_inference_steps


_STORED = torch.zeros(())


class BlockCacheConfig(ABC):
    """A caching rule's settings, as the pipelines take them: `new_cache` builds the per-branch caches."""

    needs_modulation: ClassVar[bool]    # whether `should_compute` / `plan` read the timestep modulation

    @abstractmethod
    def new_cache(self, num_inference_steps: int, branch: int = 0) -> BlockCache:
        """A fresh cache for one generation of `num_inference_steps` steps; branch 0 = conditional, 1 =
        unconditional."""


# --- validation helpers: errors name the field and the allowed values --------------------------------------------

def check_number(name: str, value, minimum: float, maximum: float = math.inf) -> float:
    """`value` as a float in [minimum, maximum], else ValueError naming `name` and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not minimum <= value <= maximum:
        upper = "" if maximum == math.inf else f" and <= {maximum}"
        raise ValueError(f"{name} must be a number >= {minimum}{upper}, got {value!r}")
    return float(value)


def check_int(name: str, value, minimum: int) -> int:
    """`value` as an int >= minimum, else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_choice(name: str, value, choices: Iterable):
    """`value` if it is one of `choices`, else ValueError listing them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_schedule_length(values: Sequence, num_inference_steps: int) -> Sequence:
    """`values` if it has one entry per step, else ValueError."""
    if len(values) != num_inference_steps:
        raise ValueError(f"plan needs one modulation per step: {num_inference_steps} expected, got {len(values)}")
    return values


__all__ = ["BlockCache", "BlockCacheConfig", "BRANCHES"]
