"""Long video: pose videos longer than one DiT window, by overlapping latent windows. A window schedule handed to the
shared denoising loop (`denoise.GuidedDenoising.denoise`); `WanUniAnimateVideoPipeline.generate(...,
windows=WindowSettings())` runs it, `WanUniAnimateLongVideoPipeline` is upstream's call for it.

Upstream algorithm (spec 3.6), kept exactly where it defines the output:
- windows of `context_size` latent frames (21 = 81 pixel frames) with starts 0, s, 2s, ... (s = size - overlap)
  while start < T - overlap; the last window is moved to end exactly at T;
- the reference conditioning (CLIP tokens, y for one window) is computed once and shared by every window, so each
  window's local frame 0 is conditioned as "the reference image";
- each window keeps two private latent frames (its local frames 0-1) that follow their own trajectory and are never
  written back, except for window 0, whose frames are the video's first frames;
- every step, each window takes its slice of the latents, is denoised one step, and the updated latents of
  overlapping windows are averaged.

Better than upstream: the private frames start from noise drawn from the seeded generator (upstream uses the
unseeded global GPU RNG, so a fixed seed did not reproduce), videos shorter than one window work (one window of
T frames; upstream wraps indices for T < 21), and the frame count is rounded *down* to 4k+1 with a message that
says so (upstream's message said "up").

Memory does not grow with the video's length beyond the latents themselves (`window_state`):
- pose tokens (~335 MB per window at 480p in bf16) are computed one window at a time and parked on the CPU until
  their window runs ("offload", the default), or recomputed each time their window runs ("recompute": nothing kept
  anywhere, one pose-CNN pass per window and step); "device" keeps every window's tokens on the compute device;
- each window's step-cache residual (full-size, ~671 MB per window and branch at 480p) is parked with the tokens
  while the other windows run; pose tokens and step-cache state are dropped before decoding.
Every mode gives the same frames, bit for bit (moves and recomputation do not change values).
"""
from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

WINDOW_STATES = ("offload", "recompute", "device")


def context_windows(num_latent_frames: int, context_size: int = 21, context_overlap: int = 4) -> List[Tuple[int, int]]:
    """[start, end) latent-frame windows covering 0..T-1, the last one aligned to the end (no wrapping)."""
    if context_overlap >= context_size:
        raise ValueError(f"context_overlap={context_overlap} must be smaller than context_size={context_size}")
    T = num_latent_frames
    if T <= context_size:
        return [(0, T)]
    if context_overlap < 2 or context_size < 3:
        # later windows never write back their first two (private) frames, so a neighbour must cover them
        raise ValueError(f"with several windows, context_overlap (got {context_overlap}) must be >= 2 and "
                         f"context_size (got {context_size}) >= 3; upstream uses 21 and 4")
    stride = context_size - context_overlap
    starts = list(range(0, T - context_overlap, stride))
    windows = [(s, s + context_size) for s in starts]
    windows[-1] = (T - context_size, T)
    return windows


@dataclass(frozen=True)
class WindowSettings:
    """How a long video is cut and where per-window state waits (module docstring). `context_size` and
    `context_overlap` are in latent frames (21 and 4: windows of 81 pixel frames, 8 pixel frames averaged);
    `pose_chunk_size` runs the pose CNN on that many latent frames at a time (None: chosen to bound its
    activations, `PoseGuider.auto_chunk_size`)."""

    context_size: int = 21
    context_overlap: int = 4
    window_state: str = "offload"
    pose_chunk_size: Optional[int] = None

    def __post_init__(self):
        for name in ("context_size", "context_overlap", "pose_chunk_size"):
            value = getattr(self, name)
            if value is None and name == "pose_chunk_size":
                continue
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive whole number of latent frames; got {value!r}")
        if self.window_state not in WINDOW_STATES:
            raise ValueError(f"window_state must be one of {WINDOW_STATES}; got {self.window_state!r}")

    def round_frames(self, request, dwpose_data, input_video):
        """`num_frames` rounded down to 4k+1 (the pose and input frames after it are dropped, with a message)."""
        num_frames = request.num_frames
        rounded = (num_frames - 1) // 4 * 4 + 1
        if rounded == num_frames:
            return request, dwpose_data, input_video
        logger.warning("num_frames=%d is not 4k+1: using the first %d frames (rounded down)", num_frames, rounded)
        if isinstance(dwpose_data, torch.Tensor):
            dwpose_data = dwpose_data[:, :rounded]
        if input_video is not None:
            input_video = input_video[:rounded]
        return replace(request, num_frames=rounded), dwpose_data, input_video


class OverlappingWindows:
    """The long-video window schedule: every step, each window one guided step on its slice (its private frames in
    front), then the overlapping updates averaged."""

    def __init__(self, pipe, windows, private, pose_tokens, pose_of, caches, park, settings: WindowSettings):
        self.pipe, self.windows, self.private = pipe, windows, private
        self.pose_tokens, self.pose_of, self.caches, self.park = pose_tokens, pose_of, caches, park
        self.settings = settings

    def tokens(self, k: int) -> torch.Tensor:
        if self.pose_tokens is None:     # "recompute"
            return self.pipe.encode_pose_video(self.pose_of(*self.windows[k]), self.settings.pose_chunk_size)
        return self.pose_tokens[k].to(self.pipe.device)

    def step(self, pipe, dit, latents, timestep, guidance, scheduler, fresh, noise) -> torch.Tensor:
        T = latents.shape[2]
        total = torch.zeros_like(latents, dtype=torch.float32)
        count = torch.zeros(1, 1, T, 1, 1, device=pipe.device)
        private = self.private
        for k, (start, end) in enumerate(self.windows):
            window = latents[:, :, start:end].clone()
            window[:, :, :private[k].shape[2]] = private[k]
            tokens = self.tokens(k)
            _move_caches(self.caches[k], pipe.device)
            velocity = pipe.predict(dit, window, timestep, guidance, tokens, self.caches[k])
            _move_caches(self.caches[k], self.park)
            del tokens
            window_noise = None
            if fresh is not None:
                window_noise = fresh[:, :, start:end].clone()
                if k > 0:   # the private frames follow their own trajectory: their own noise
                    window_noise[:, :, :private[k].shape[2]] = noise(private[k].shape)
            updated = scheduler.step(velocity, timestep, window, window_noise)
            keep = 0 if k == 0 else private[k].shape[2]        # later windows never write their private frames
            total[:, :, start + keep:end] += updated[:, :, keep:].float()
            count[:, :, start + keep:end] += 1
            private[k] = updated[:, :, :private[k].shape[2]]
        return (total / count).to(pipe.torch_dtype)

    def report(self, num_steps: int) -> None:
        pass


def prepare_windows(pipe, request, settings: WindowSettings, timer, noise, scheduler, input_image, dwpose_data,
                    random_ref_dwpose, input_video):
    """The long-video call up to the loop: seeded noise for the whole video, then (same generator) each window's two
    private frames; the shared conditioning (prompts, the reference encoded once for one window's length); each
    window's pose tokens (placed by `window_state`) and step caches. Returns what `generate` needs."""
    height, width = request.height, request.width
    T = (request.num_frames - 1) // 4 + 1
    windows = context_windows(T, settings.context_size, settings.context_overlap)
    window_len = windows[0][1] - windows[0][0]
    latents = noise((1, 16, T, height // 8, width // 8))
    private = [noise((1, 16, min(2, window_len), height // 8, width // 8)) for _ in windows]
    timer.start("encode")
    if input_video is not None:
        # The private frames start from the noised input too (upstream: pure noise, which discards the input
        # video in every window's first two latent frames).
        encoded = pipe.encode_input_video(input_video, request)
        t0 = scheduler.timesteps[0]
        latents = scheduler.add_noise(encoded, latents, t0)
        private = [scheduler.add_noise(encoded[:, :, s:s + p.shape[2]], p, t0) for (s, _), p in zip(windows, private)]
    context, context_neg = pipe.encode_prompts(request.prompt, request.negative_prompt, request.cfg_scale)
    clip_feature, y = pipe.encode_reference(input_image, height, width, 4 * window_len - 3, random_ref_dwpose)
    timer.stop("encode")
    # Per window: its pose slice (pixel frames 4s .. 4(e-1), inclusive) and its own step-cache pair.
    park = pipe.device if settings.window_state == "device" else pipe.offload_device
    pose_of = lambda s, e: dwpose_data[:, 4 * s: 4 * (e - 1) + 1]  # noqa: E731
    with timer("pose"):
        if settings.window_state == "recompute":
            pose_tokens = None
            dit = pipe._onload("dit", "pose_guider")
            first_tokens = pipe.encode_pose_video(pose_of(*windows[0]), settings.pose_chunk_size)
        else:
            pose_tokens = [pipe.encode_pose_video(pose_of(s, e), settings.pose_chunk_size).to(park)
                           for s, e in windows]
            dit = pipe._onload("dit")
            first_tokens = pose_tokens[0].to(pipe.device)
    caches = [pipe.step_caches(request, len(scheduler.timesteps)) for _ in windows]
    dit.check_inputs(latents[:, :, :window_len], scheduler.timesteps[:1], context, clip_feature, y, first_tokens)
    del first_tokens
    schedule = OverlappingWindows(pipe, windows, private, pose_tokens, pose_of, caches, park, settings)
    return dit, latents, schedule, (context, context_neg, clip_feature, y), (1, 16, window_len, height // 8,
                                                                             width // 8)


def _move_caches(caches, device) -> None:
    """Move a window's step-cache residuals (full-size) to `device`; values are unchanged."""
    for cache in caches:
        if cache is not None:
            cache.to(device)


__all__ = ["WindowSettings", "OverlappingWindows", "context_windows", "prepare_windows", "WINDOW_STATES"]
