"""The denoising loop every pipeline shares: per-generation guidance (embedded contexts, batched CFG), the guided DiT
velocity, and the loop over timesteps. What a step does to the latents is a *window schedule*: `WholeVideo` (the DiT
sees the whole video) here, `OverlappingWindows` (long video) in `long_video.py`. A mixin of `WanPipelineBase`."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from ..models.wan_dit import EmbeddedContext
from .timing import StageTimer
from .units import dit_step, embed_context

logger = logging.getLogger(__name__)

# diffusers' convention: callback_on_step_end(pipe, step_index, timestep, {"latents": latents}) -> optional dict;
# a "latents" entry it returns replaces the latents.
StepCallback = Callable[[object, int, torch.Tensor, dict], Optional[dict]]


@dataclass
class Guidance:
    """Per-generation conditioning of the DiT, computed once: the embedded text (and CLIP) tokens of each CFG branch,
    the I2V y shared by both, and how the branches run."""

    positive: EmbeddedContext
    negative: Optional[EmbeddedContext]    # None when cfg_scale == 1 (the negative branch never runs)
    y: Optional[torch.Tensor]              # I2V: [1, 20, T, h, w]; T2V: None
    cfg_scale: float
    batched: Optional[EmbeddedContext] = None   # [positive; negative] when both branches run as one batch of 2


class NoiseSource:
    """Seeded fp32 Gaussian noise drawn on `rand_device` (CPU by default, so a seed gives the same video on any GPU),
    one generator for the initial latents and every later draw (the renoise sampler, long-video private frames)."""

    def __init__(self, seed: Optional[int], rand_device: str, device: torch.device, dtype: torch.dtype):
        self.generator = None if seed is None else torch.Generator(rand_device).manual_seed(seed)
        self.rand_device, self.device, self.dtype = rand_device, device, dtype

    def __call__(self, shape) -> torch.Tensor:
        noise = torch.randn(shape, generator=self.generator, device=self.rand_device, dtype=torch.float32)
        return noise.to(device=self.device, dtype=self.dtype)


class WholeVideo:
    """The window schedule of a one-window generation: every step, one guided velocity over the whole latent video
    (pose tokens on the conditional branch, one step cache per CFG branch)."""

    def __init__(self, pose_tokens: Optional[torch.Tensor], caches: Sequence):
        self.pose_tokens, self.caches = pose_tokens, caches

    def step(self, pipe, dit, latents, timestep, guidance: Guidance, scheduler, fresh, noise) -> torch.Tensor:
        velocity = pipe.predict(dit, latents, timestep, guidance, self.pose_tokens, self.caches)
        return scheduler.step(velocity, timestep, latents, fresh)

    def report(self, num_steps: int) -> None:
        if self.caches[0] is not None:
            logger.info("step cache skipped %d of %d steps (conditional branch)", len(self.caches[0].skipped_steps),
                        num_steps)


class GuidedDenoising:
    """Guidance, the guided velocity and the sampling loop (see the module docstring)."""

    def batched_cfg_fits(self, latent_shape: Sequence[int]) -> bool:
        """Whether running both CFG branches as one batch of 2 fits: always off CUDA; on CUDA when the free memory
        exceeds twice the estimated activation peak of one more item in a block (tokens x (ffn width + 8 widths))."""
        if self.device.type != "cuda":
            return True
        cfg = self.dit.config
        tokens = latent_shape[2] // cfg.patch_size[0] * (latent_shape[3] // cfg.patch_size[1]) * \
            (latent_shape[4] // cfg.patch_size[2])
        extra = tokens * (cfg.ffn_dim + 8 * cfg.dim) * torch.finfo(self.torch_dtype).bits // 8
        free, _ = torch.cuda.mem_get_info(self.device)
        return free > 2 * extra

    def prepare_guidance(self, dit, context: torch.Tensor, context_neg: Optional[torch.Tensor],
                         clip_feature: Optional[torch.Tensor], y: Optional[torch.Tensor], cfg_scale: float,
                         cfg_batch: Optional[bool], latent_shape: Sequence[int]) -> Guidance:
        """Embed the contexts once for the whole generation and decide batched CFG (`cfg_batch`: True, False, or
        None = when `batched_cfg_fits`)."""
        positive = embed_context(dit, context, clip_feature)
        negative = embed_context(dit, context_neg, clip_feature) if cfg_scale != 1.0 else None
        guidance = Guidance(positive, negative, None if y is None else y.to(self.torch_dtype), cfg_scale)
        batch = cfg_batch or (cfg_batch is None and self.batched_cfg_fits(latent_shape))
        if negative is not None and batch and not self._cfg_parallel():
            image = None if positive.image is None else torch.cat([positive.image, negative.image])
            guidance.batched = EmbeddedContext(torch.cat([positive.text, negative.text]), image)
        return guidance

    def predict(self, dit, latents: torch.Tensor, timestep: torch.Tensor, guidance: Guidance,
                pose_tokens: Optional[torch.Tensor], caches: Sequence) -> torch.Tensor:
        """The guided velocity `neg + cfg * (pos - neg)`: pose tokens (UniAnimate) on the conditional branch only.
        With `guidance.batched` both branches run as one batch of 2 (conditional first); otherwise one at a time."""
        t = timestep[None].to(self.device)
        y = guidance.y
        if guidance.negative is None:
            return dit_step(dit, latents, t, guidance.positive, None, y, pose_tokens, block_cache=caches[:1])
        if self._cfg_parallel():       # this rank's branch only; the other comes from its CFG partner
            branch = self.parallel.cfg_rank
            mine = dit_step(dit, latents, t, guidance.negative if branch else guidance.positive, None, y,
                            None if branch else pose_tokens, block_cache=caches[branch:branch + 1])
            velocity, velocity_neg = self._gather_branches(mine)
        elif guidance.batched is not None:
            both = dit_step(dit, latents.expand(2, *latents.shape[1:]), t, guidance.batched, None,
                            None if y is None else y.expand(2, *y.shape[1:]), pose_tokens, block_cache=caches[:2])
            velocity, velocity_neg = both[:1], both[1:]
        else:
            velocity = dit_step(dit, latents, t, guidance.positive, None, y, pose_tokens, block_cache=caches[:1])
            velocity_neg = dit_step(dit, latents, t, guidance.negative, None, y, None, block_cache=caches[1:2])
        return velocity_neg + guidance.cfg_scale * (velocity - velocity_neg)

    def denoise(self, dit, latents: torch.Tensor, guidance: Guidance, windows, scheduler, noise: NoiseSource,
                timer: StageTimer, progress_bar_cmd=None,
                callback_on_step_end: Optional[StepCallback] = None) -> torch.Tensor:
        """The sampling loop: each step draws the renoise sampler's fresh noise (when it needs any) and lets the
        window schedule `windows` update the latents; then `callback_on_step_end` sees them."""
        steps = scheduler.timesteps
        with timer("denoise"):
            for index, timestep in enumerate(steps if progress_bar_cmd is None else progress_bar_cmd(steps)):
                fresh = noise(latents.shape) if scheduler.needs_noise(timestep) else None
                latents = windows.step(self, dit, latents, timestep, guidance, scheduler, fresh, noise)
                timer.steps += 1
                if callback_on_step_end is not None:
                    returned = callback_on_step_end(self, index, timestep, {"latents": latents})
                    if returned and returned.get("latents") is not None:
                        latents = returned["latents"]
        windows.report(len(steps))
        return latents


__all__ = ["Guidance", "NoiseSource", "WholeVideo", "GuidedDenoising", "StepCallback"]

