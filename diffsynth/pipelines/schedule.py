"""The schedule of one generation: its scheduler (a new one per call, never a shared object mutated by a query), its
step caches, and `cache_plan` (which steps a call will compute, before running it)."""
from __future__ import annotations

from typing import List, Optional

import torch

from ..schedulers import FlowMatchScheduler
from .request import GenerationRequest


def make_scheduler(request: GenerationRequest) -> FlowMatchScheduler:
    """The flow-matching scheduler of a resolved request: an explicit step list, or `num_inference_steps` shifted
    steps (`denoising_strength` < 1 starts part-way)."""
    scheduler = FlowMatchScheduler(shift=request.sigma_shift, sigma_min=0.0, extra_one_step=True,
                                   sampler=request.sampler)
    if request.denoising_step_list is not None:
        scheduler.set_timesteps(None, denoising_step_list=request.denoising_step_list)
    else:
        scheduler.set_timesteps(request.num_inference_steps, request.denoising_strength)
    return scheduler


def new_step_caches(config, num_steps: int) -> List:
    """One step cache per CFG branch (conditional, unconditional), or [None, None]."""
    if config is None:
        return [None, None]
    return [config.new_cache(num_steps, branch) for branch in (0, 1)]


@torch.no_grad()
def cache_plan(dit, request: GenerationRequest) -> dict:
    """Which steps a resolved request computes: both step-cache rules depend only on the schedule (and, for TeaCache,
    the DiT's timestep modulation, computed here without running any block).

    Returns {"timesteps": [...], "positive": [bool per step], "negative": [...] or None (cfg_scale 1),
    "computed": {"positive": n, "negative": n}}; True = the blocks run at that step.
    """
    scheduler = make_scheduler(request)
    steps = len(scheduler.timesteps)
    config = request.step_cache
    timesteps = [float(t) for t in scheduler.timesteps]
    if config is None:
        plans = [[True] * steps, [True] * steps]
    else:
        modulations: Optional[list] = None
        if config.needs_modulation:
            dtype = next(dit.parameters()).dtype
            device = next(dit.time_embedding.parameters()).device
            modulations = [dit.embed_timestep(torch.tensor([t], device=device).to(dtype))[1]
                           for t in scheduler.timesteps]
        plans = [cache.plan(modulations) for cache in new_step_caches(config, steps)]
    negative = plans[1] if request.cfg_scale != 1.0 else None
    return {"timesteps": timesteps, "positive": plans[0], "negative": negative,
            "computed": {"positive": sum(plans[0]), "negative": None if negative is None else sum(negative)}}


__all__ = ["make_scheduler", "new_step_caches", "cache_plan"]
