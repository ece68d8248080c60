"""`WanUniAnimateLongVideoPipeline`: pose videos longer than one DiT window, by overlapping latent windows.

Upstream algorithm (spec 3.6), kept exactly where it defines the output:
- windows of `context_size` latent frames (21 = 81 pixel frames) with starts 0, s, 2s, ... (s = size - overlap)
  while start < T - overlap; the last window is moved to end exactly at T;
- the reference conditioning (CLIP tokens, y for one window) is computed once and shared by every window, so each
  window's local frame 0 is conditioned as "the reference image";
- each window keeps two private latent frames (its local frames 0-1) that follow their own trajectory and are never
  written back, except for window 0, whose frames are the video's first frames;
- every step, each window takes its slice of the latents, is denoised one Euler step, and the updated latents of
  overlapping windows are averaged.

Better than upstream: the private frames start from noise drawn from the seeded generator (upstream uses the
unseeded global GPU RNG, so a fixed seed did not reproduce), videos shorter than one window work (one window of
T frames; upstream wraps indices for T < 21), and the frame count is rounded *down* to 4k+1 with a message that
says so (upstream's message said "up").

Memory does not grow with the video's length beyond the latents themselves (`window_state`, `output_type`):
- pose tokens (~335 MB per window at 480p in bf16) are computed one window at a time and parked on the CPU until
  their window runs ("offload", the default), or recomputed each time their window runs ("recompute": nothing kept
  anywhere, one pose-CNN pass per window and step);
- each window's TeaCache residual (full-size, ~671 MB per window and branch at 480p) is parked on the CPU while
  the other windows run; pose tokens and TeaCache state are dropped before decoding;
- decoding streams (`output_type="iterator"` or `generate_to_file`): one latent frame at a time with the VAE's
  causal cache, each chunk converted to uint8 at once.
`window_state="device"` keeps the former placement (every window's tokens and residuals on the compute device).
Every mode gives the same frames, bit for bit (moves and recomputation do not change values).
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from .base import NoiseSource
from .timing import StageTimer
from .unianimate import WanUniAnimateVideoPipeline

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

WINDOW_STATES = ("offload", "recompute", "device")
OUTPUT_TYPES = ("pil", "iterator")


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


class WanUniAnimateLongVideoPipeline(WanUniAnimateVideoPipeline):
    """Any number of pose frames, by overlapping DiT windows (see the module docstring); built like the short one."""

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str = "", input_image: Optional["Image"] = None,
                 input_video: Optional[List["Image"]] = None, denoising_strength: float = 1.0,
                 seed: Optional[int] = None, rand_device: str = "cpu", height: int = 480, width: int = 832,
                 num_frames: int = 81, cfg_scale: float = 5.0, num_inference_steps: int = 50,
                 sigma_shift: float = 5.0, tiled: bool = True, tile_size: Tuple[int, int] = (30, 52),
                 tile_stride: Tuple[int, int] = (15, 26), tea_cache_l1_thresh: Optional[float] = None,
                 tea_cache_model_id: str = "", progress_bar_cmd=tqdm, dwpose_data: Optional[torch.Tensor] = None,
                 random_ref_dwpose: Optional[torch.Tensor] = None, context_size: int = 21,
                 context_overlap: int = 4, window_state: str = "offload", pose_chunk_size: Optional[int] = None,
                 output_type: str = "pil", step_cache=None, preset: Optional[str] = None,
                 denoising_step_list: Optional[Sequence[int]] = None, sampler: str = "euler",
                 cfg_batch: Optional[bool] = None, **unused) -> Union[List["Image"], Iterator["Image"]]:
        """Like `WanUniAnimateVideoPipeline.__call__`, for any number of pose frames.

        `num_frames` is rounded down to 4k+1 (the pose frames after it are dropped); `context_size` and
        `context_overlap` are in latent frames (21 and 4: windows of 81 pixel frames, 8 pixel frames averaged).
        `input_video` (video-to-video, as upstream) is encoded whole with the call's tiling and noised to the first
        timestep of the `denoising_strength` schedule; each window's private frames are its slice of the noised
        input (upstream drew them as pure noise, so the input never reached them).

        Memory (module docstring): `window_state` is "offload" (default: per-window pose tokens and TeaCache
        residuals wait on the CPU while other windows run), "recompute" (pose tokens recomputed whenever their window
        runs; keeps the pose guider on the device next to the DiT) or "device" (all on the compute device, as
        before). `pose_chunk_size` runs the pose CNN on that many latent frames at a time (bounds its full-resolution
        activations; equal to the one-shot pass up to the convolution backend's rounding, see
        `PoseGuider.embed_pose_video`). `output_type="iterator"` returns a generator of the frames, decoded chunk
        by chunk as it is consumed (give it to `save_video`); "pil" returns the list.

        `step_cache`, `preset`, `denoising_step_list`, `sampler`, `cfg_batch`: as in the short pipeline. With the
        renoise sampler one noise draw per step covers the whole video, so averaging the overlapping windows'
        re-noised latents averages their x0 predictions and keeps the noise at full strength.
        """
        if unused:
            raise TypeError(f"unexpected arguments for the long-video pipeline: {sorted(unused)}")
        if window_state not in WINDOW_STATES:
            raise ValueError(f"window_state must be one of {WINDOW_STATES}; got {window_state!r}")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}; got {output_type!r}")
        rounded = (num_frames - 1) // 4 * 4 + 1
        if rounded != num_frames:
            logger.warning("num_frames=%d is not 4k+1: using the first %d frames (rounded down)", num_frames, rounded)
            num_frames = rounded
            if isinstance(dwpose_data, torch.Tensor):
                dwpose_data = dwpose_data[:, :num_frames]
            if input_video is not None:
                input_video = input_video[:num_frames]
        settings = self.resolve_preset(preset, dict(cfg_scale=cfg_scale, sigma_shift=sigma_shift, sampler=sampler,
                                                    num_inference_steps=num_inference_steps,
                                                    denoising_step_list=denoising_step_list))
        cfg_scale, num_inference_steps = settings["cfg_scale"], settings["num_inference_steps"]
        self.check_inputs(input_image, dwpose_data, random_ref_dwpose, height, width, num_frames, prompt,
                          negative_prompt, cfg_scale, num_inference_steps, input_video, denoising_strength)
        timer = StageTimer(self.device)
        steps = self.configure_schedule(settings, denoising_strength)
        cache_config = self.step_cache_config(step_cache, tea_cache_l1_thresh, tea_cache_model_id)
        T = (num_frames - 1) // 4 + 1
        windows = context_windows(T, context_size, context_overlap)
        window_len = windows[0][1] - windows[0][0]

        # 1. Seeded noise for the whole video, then (same generator) each window's two private frames.
        draw = NoiseSource(seed, rand_device, self.device, self.torch_dtype)
        latents = draw((1, 16, T, height // 8, width // 8))
        private = [draw((1, 16, min(2, window_len), height // 8, width // 8)) for _ in windows]
        timer.start("encode")
        if input_video is not None:
            # The private frames start from the noised input too (upstream: pure noise, which discards the input
            # video in every window's first two latent frames).
            encoded = self.encode_input_video(input_video, height, width, tiled, tile_size, tile_stride)
            t0 = self.scheduler.timesteps[0]
            latents = self.scheduler.add_noise(encoded, latents, t0)
            private = [self.scheduler.add_noise(encoded[:, :, s:s + p.shape[2]], p, t0)
                       for (s, _), p in zip(windows, private)]
        # 2. Shared conditioning: prompts, and the reference encoded once for one window's length.
        context, context_neg = self.encode_prompts(prompt, negative_prompt, cfg_scale)
        clip_feature, y = self.encode_reference(input_image, height, width, 4 * window_len - 3, random_ref_dwpose)
        timer.stop("encode")
        # 3. Per window: its pose slice (pixel frames 4s .. 4(e-1), inclusive) and its own TeaCache pair.
        park = self.device if window_state == "device" else self.offload_device
        pose_of = lambda s, e: dwpose_data[:, 4 * s: 4 * (e - 1) + 1]  # noqa: E731
        with timer("pose"):
            if window_state == "recompute":
                pose_tokens = None
                dit = self._onload("dit", "pose_guider")
                first_tokens = self._window_pose_tokens(pose_of(*windows[0]), pose_chunk_size)
            else:
                pose_tokens = [self._window_pose_tokens(pose_of(s, e), pose_chunk_size).to(park) for s, e in windows]
                dit = self._onload("dit")
                first_tokens = pose_tokens[0].to(self.device)
        caches = [self.new_step_caches(steps, cache_config) for _ in windows]
        dit.check_inputs(latents[:, :, :window_len], self.scheduler.timesteps[:1], context, clip_feature, y,
                         first_tokens)
        del first_tokens
        with timer("encode"):
            guidance = self.prepare_guidance(dit, context, context_neg, clip_feature, y, cfg_scale, cfg_batch,
                                             (1, 16, window_len, height // 8, width // 8))
        # 4. Denoise: every window one step, then average the overlapping updated latents.
        timer.start("denoise")
        for timestep in progress_bar_cmd(self.scheduler.timesteps):
            total = torch.zeros_like(latents, dtype=torch.float32)
            count = torch.zeros(1, 1, T, 1, 1, device=self.device)
            fresh = draw(latents.shape) if self.scheduler.needs_noise(timestep) else None
            for k, (start, end) in enumerate(windows):
                window = latents[:, :, start:end].clone()
                window[:, :, :private[k].shape[2]] = private[k]
                tokens = self._window_pose_tokens(pose_of(start, end), pose_chunk_size) if pose_tokens is None \
                    else pose_tokens[k].to(self.device)
                _move_caches(caches[k], self.device)
                velocity = self.predict(dit, window, timestep, guidance, tokens, caches[k])
                _move_caches(caches[k], park)
                del tokens
                window_noise = None
                if fresh is not None:
                    window_noise = fresh[:, :, start:end].clone()
                    if k > 0:   # the private frames follow their own trajectory: their own noise
                        window_noise[:, :, :private[k].shape[2]] = draw(private[k].shape)
                updated = self.scheduler.step(velocity, timestep, window, window_noise)
                keep = 0 if k == 0 else private[k].shape[2]        # later windows never write their private frames
                total[:, :, start + keep:end] += updated[:, :, keep:].float()
                count[:, :, start + keep:end] += 1
                private[k] = updated[:, :, :private[k].shape[2]]
            latents = (total / count).to(self.torch_dtype)
            timer.steps += 1
        timer.stop("denoise")
        del pose_tokens, caches, total, count, private, window, velocity, updated, guidance
        return self.finish(latents, tiled, tile_size, tile_stride, timer, num_frames,
                           stream=True if output_type == "iterator" else None)

    def _window_pose_tokens(self, pose_video: torch.Tensor, chunk_size: Optional[int]) -> torch.Tensor:
        """Pose tokens of one window's frames, in the pipeline dtype on the compute device."""
        return self.encode_pose_video(pose_video, chunk_size)


def _move_caches(caches, device) -> None:
    """Move a window's step-cache residuals (full-size) to `device`; values are unchanged."""
    for cache in caches:
        if cache is not None:
            cache.to(device)

__all__ = ["WanUniAnimateLongVideoPipeline", "context_windows", "WINDOW_STATES", "OUTPUT_TYPES"]
