"""`WanUniAnimateVideoPipeline`: animate a reference image along a pose video (short clips, one DiT window).

    model_manager = ModelManager(device="cpu")
    model_manager.load_models([clip_path], torch_dtype=torch.float32)
    model_manager.load_models([dit_shards, t5_path, vae_path], torch_dtype=torch.bfloat16)
    model_manager.load_lora_v2("checkpoints/UniAnimate-Wan2.1-14B-Lora-12000.ckpt", lora_alpha=1.0)
    pipe = WanUniAnimateVideoPipeline.from_model_manager(model_manager, torch_dtype=torch.bfloat16, device="cuda")
    frames = pipe(prompt="a person is dancing", input_image=image, dwpose_data=poses, random_ref_dwpose=ref_pose,
                  height=832, width=480, num_frames=81, cfg_scale=1.5, seed=0)

Data flow (upstream spec 3.3): prompts -> umT5; reference image -> CLIP tokens and y = [mask; VAE latent]; reference
pose -> added to y; pose video -> tokens added after patch embedding on the conditional branch only; seeded noise;
flow-matching Euler with CFG (optionally TeaCache); tiled VAE decode.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from ..data.images import check_pil_image, image_to_tensor
from ..data.pose_folder import pose_tensors
from ..models.wan_dit import condition_tokens
from ..prompters import WanPrompter
from .base import WanPipelineBase
from .denoise import NoiseSource, StepCallback, WholeVideo
from .request import GenerationRequest
from .schedule import make_scheduler
from .timing import StageTimer
from .windows import WindowSettings, prepare_windows
from .units import check_sizes, encode_pose_video, encode_reference_image, encode_reference_pose

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

MODEL_NAMES = ("text_encoder", "image_encoder", "vae", "dit", "pose_guider")


class WanUniAnimateVideoPipeline(WanPipelineBase):
    """Holds the five models and runs one generation per call (placement, caching, schedule: `WanPipelineBase`)."""

    MODEL_NAMES = MODEL_NAMES
    USES_UNIANIMATE = True

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_model_manager(cls, model_manager, torch_dtype: Optional[torch.dtype] = None,
                           device: Union[str, torch.device, None] = None) -> "WanUniAnimateVideoPipeline":
        """Take the models from a `ModelManager`. Call `model_manager.load_lora_v2(...)` with the UniAnimate
        checkpoint first: it also carries the pose guider weights."""
        pipe = cls._from_manager(model_manager, torch_dtype, device)
        # The pose CNNs are small: kept in fp32 like upstream (their output is cast to the DiT dtype).
        pipe.pose_guider = model_manager.fetch_pose_guider(torch_dtype=torch.float32, device="cpu")
        missing = [name for name in MODEL_NAMES if getattr(pipe, name) is None]
        if missing:
            raise ValueError(f"the model manager lacks {', '.join(missing)}: load the Wan2.1-I2V DiT shards, the T5 "
                             "and VAE .pth files and the CLIP .pth file with load_models() first")
        return pipe

    @classmethod
    def from_models(cls, *, dit, vae, text_encoder, image_encoder, pose_guider, prompter: Optional[WanPrompter] = None,
                    tokenizer_path: Optional[str] = None, device: Union[str, torch.device] = "cuda",
                    torch_dtype: torch.dtype = torch.bfloat16) -> "WanUniAnimateVideoPipeline":
        """Build from models loaded one by one (e.g. with `load_wan_dit` in a notebook). Give a `prompter` or the
        `tokenizer_path` of the `google/umt5-xxl` folder (the folder of the T5 file works too)."""
        pipe = cls(device=device, torch_dtype=torch_dtype)
        pipe.dit, pipe.vae, pipe.text_encoder = dit, vae, text_encoder
        pipe.image_encoder, pipe.pose_guider = image_encoder, pose_guider
        pipe.use_prompter(prompter, tokenizer_path)
        return pipe

    # -------------------------------------------------------------------------------------------------- call
    def check_inputs(self, request: GenerationRequest, input_image, dwpose_data, random_ref_dwpose,
                     input_video=None) -> None:
        """Every argument checked before any model runs; each error names the argument and the fix."""
        request.check()
        height, width, num_frames = request.height, request.width, request.num_frames
        if input_image is None:
            raise ValueError("input_image is required: the reference photo (PIL image) of the person to animate")
        check_pil_image(input_image, "input_image")
        if input_video is not None:
            if len(input_video) != num_frames:
                raise ValueError(f"input_video has {len(input_video)} frames; num_frames is {num_frames}")
            for i, frame in enumerate(input_video):
                check_pil_image(frame, f"input_video[{i}]")
        if dwpose_data is None or random_ref_dwpose is None:
            raise ValueError("dwpose_data ([3, F, H, W] pose frames, 0..255) and random_ref_dwpose ([H, W, 3] "
                             "reference pose, 0..255) are required: make them with run_align_pose.py")
        for name, value in (("dwpose_data", dwpose_data), ("random_ref_dwpose", random_ref_dwpose)):
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a torch tensor (see load_pose_data); got {type(value).__name__}")
        check_sizes(height, width, num_frames)
        if tuple(dwpose_data.shape) != (3, num_frames, height, width):
            raise ValueError(f"dwpose_data has shape {tuple(dwpose_data.shape)}; expected [3, num_frames, height, "
                             f"width] = {[3, num_frames, height, width]}: resize the pose frames to the generation "
                             "size and pass as many frames as num_frames")
        if tuple(random_ref_dwpose.shape) != (height, width, 3):
            raise ValueError(f"random_ref_dwpose has shape {tuple(random_ref_dwpose.shape)}; expected "
                             f"[height, width, 3] = {[height, width, 3]}")
        for name, value in (("dwpose_data", dwpose_data), ("random_ref_dwpose", random_ref_dwpose)):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise ValueError(f"{name} holds NaN or infinite values: pose frames are 0..255 pixel values")

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str = "", input_image: Optional["Image"] = None,
                 input_video: Optional[List["Image"]] = None, denoising_strength: float = 1.0,
                 seed: Optional[int] = None, rand_device: str = "cpu", height: int = 480, width: int = 832,
                 num_frames: int = 81, cfg_scale: float = 5.0, num_inference_steps: int = 50,
                 sigma_shift: float = 5.0, tiled: bool = True, tile_size: Tuple[int, int] = (30, 52),
                 tile_stride: Tuple[int, int] = (15, 26), tea_cache_l1_thresh: Optional[float] = None,
                 tea_cache_model_id: str = "", progress_bar_cmd=tqdm, dwpose_data: Optional[torch.Tensor] = None,
                 random_ref_dwpose: Optional[torch.Tensor] = None, *, step_cache=None, preset: Optional[str] = None,
                 denoising_step_list: Optional[Sequence[int]] = None, sampler: str = "euler",
                 cfg_batch: Optional[bool] = None, callback_on_step_end: Optional[StepCallback] = None
                 ) -> List["Image"]:
        """Generate `num_frames` frames of the reference person following the poses (upstream's call; a thin
        adapter over `generate(GenerationRequest(...), ...)`).

        Args:
            input_image: reference photo (resized to height x width with PIL bicubic).
            dwpose_data: pose frames [3, F, H, W], values 0..255 (RGB as read from the pose images).
            random_ref_dwpose: reference pose [H, W, 3], values 0..255.
            height, width: multiples of 16; num_frames: 4k+1. Checked, never silently changed.
            cfg_scale: classifier-free guidance (1.5 in the UniAnimate scripts; 1.0 skips the negative branch).
            tea_cache_l1_thresh, tea_cache_model_id: enable TeaCache (e.g. 0.3, "Wan2.1-I2V-14B-720P").
            step_cache: a `TeaCacheConfig` or `MagCacheConfig` (diffsynth.acceleration); see `cache_plan`.
            preset: "fast" = 4 steps [1000, 750, 500, 250] at shift 5, cfg 1, the renoise sampler (no negative
                prompt encoded). Needs a step-distillation LoRA (e.g. LightX2V's) merged; refuses otherwise.
            denoising_step_list, sampler: an explicit step-distill schedule and "euler" / "renoise" (see
                `FlowMatchScheduler`); with a step list `num_inference_steps` is ignored.
            cfg_batch: run both CFG branches as one batch of 2 (True), one at a time (False, bit-identical to
                upstream's order of operations), or None: batched when memory allows (`batched_cfg_fits`).
            input_video, denoising_strength: video-to-video; the input is encoded (with the call's tiling settings)
                and noised part-way.
            callback_on_step_end: diffusers' convention, `fn(pipe, step_index, timestep, {"latents": ...})`.
        Returns:
            a list of F PIL images. A one-line summary (time per stage, s/step, peak GPU memory) is printed to
            stderr unless `pipe.show_summary = False`; the figures stay in `pipe.last_timings`.
        """
        arguments = dict(locals())
        del arguments["self"]
        return self._call(arguments)

    @torch.no_grad()
    def generate(self, request: GenerationRequest, *, input_image: Optional["Image"] = None,
                 dwpose_data: Optional[torch.Tensor] = None, random_ref_dwpose: Optional[torch.Tensor] = None,
                 input_video: Optional[List["Image"]] = None, windows: Optional[WindowSettings] = None,
                 progress_bar_cmd=tqdm, callback_on_step_end: Optional[StepCallback] = None, output: str = "pil"):
        """One generation: the reference person along the poses. `windows=None` denoises the whole video at once
        (up to 81 frames on the released model); `windows=WindowSettings(...)` runs the long-video window schedule
        (`long_video.py`) for any length. `output`: "pil" (a list) or "iterator" (a `FrameStream`)."""
        if windows is not None:
            request, dwpose_data, input_video = windows.round_frames(request, dwpose_data, input_video)
        request = request.resolved(self.step_distilled)
        self.check_inputs(request, input_image, dwpose_data, random_ref_dwpose, input_video)
        timer = StageTimer(self.device)
        scheduler = self.scheduler = make_scheduler(request)
        noise = NoiseSource(request.seed, request.rand_device, self.device, self.torch_dtype)
        if windows is None:
            prepared = self._prepare_whole_video(request, timer, noise, scheduler, input_image, dwpose_data,
                                                 random_ref_dwpose, input_video)
        else:
            prepared = prepare_windows(self, request, windows, timer, noise, scheduler, input_image, dwpose_data,
                                       random_ref_dwpose, input_video)
        dit, latents, schedule, conditioning, window_shape = prepared
        with timer("encode"):
            guidance = self.prepare_guidance(dit, *conditioning, request.cfg_scale, request.cfg_batch, window_shape)
        del conditioning, prepared
        latents = self.denoise(dit, latents, guidance, schedule, scheduler, noise, timer, progress_bar_cmd,
                               callback_on_step_end)
        del schedule, guidance
        return self.finish(latents, request, timer, request.num_frames, output)

    def _prepare_whole_video(self, request, timer, noise, scheduler, input_image, dwpose_data, random_ref_dwpose,
                             input_video):
        """Noise (or the noised input video), prompts, the reference and the pose tokens of a one-window call."""
        with timer("encode"):
            latents = self.initial_latents(request, noise, scheduler, input_video)
            context, context_neg = self.encode_prompts(request.prompt, request.negative_prompt, request.cfg_scale)
            clip_feature, y = self.encode_reference(input_image, request.height, request.width, request.num_frames,
                                                    random_ref_dwpose)
        with timer("pose"):
            pose_tokens = self.encode_pose_video(dwpose_data)
        dit = self._onload("dit")
        dit.check_inputs(latents, scheduler.timesteps[:1], context, clip_feature, y, pose_tokens)
        schedule = WholeVideo(pose_tokens, self.step_caches(request, len(scheduler.timesteps)))
        return dit, latents, schedule, (context, context_neg, clip_feature, y), request.latent_shape()

    # ------------------------------------------------------------------------------- steps shared with long video
    def encode_reference(self, input_image: "Image", height: int, width: int, num_frames: int,
                         random_ref_dwpose: torch.Tensor):
        """CLIP tokens and y = [mask; VAE latent] + reference-pose embedding (on all 20 channels)."""
        image = image_to_tensor(input_image, height, width)
        self._onload("image_encoder", "vae")   # both run in encode_reference_image
        clip_feature, y = encode_reference_image(self.image_encoder, self.vae, image, num_frames, self.device)
        pose_guider = self._onload("pose_guider")
        ref_pose_emb = encode_reference_pose(pose_guider, random_ref_dwpose, self.device)
        return clip_feature, y.to(self.torch_dtype) + ref_pose_emb.to(self.torch_dtype)

    def encode_pose_video(self, dwpose_data: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Pose frames [3, F, H, W] (0..255) -> pose tokens [1, L, d] in the pipeline dtype (flattened once here,
        not at every step)."""
        pose_guider = self._onload("pose_guider") if "pose_guider" not in self._on_device else self.pose_guider
        tokens = encode_pose_video(pose_guider, dwpose_data, self.device, chunk_size)
        return condition_tokens(tokens).to(self.torch_dtype).contiguous()


def load_pose_data(pose_images, reference_pose, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pose images (PIL, as written by run_align_pose.py) -> (dwpose_data [3, F, H, W] float 0..255,
    random_ref_dwpose [H, W, 3] uint8), resized bilinearly to the generation size like the upstream scripts.
    See `diffsynth.data.pose_folder.read_pose_clip` to read a whole pose folder."""
    return pose_tensors(pose_images, reference_pose, height, width)


__all__ = ["WanUniAnimateVideoPipeline", "load_pose_data"]
