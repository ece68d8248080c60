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
import math
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple, Union

import torch
from tqdm import tqdm

from ..acceleration.teacache import TeaCache
from ..data.images import check_pil_image, image_to_tensor
from ..data.pose_folder import pose_tensors
from ..prompters import WanPrompter, resolve_tokenizer_path
from ..schedulers import FlowMatchScheduler
from .units import (check_sizes, decode_video, dit_step, encode_pose_video, encode_prompt, encode_reference_image,
                    encode_reference_pose, encode_video)

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

MODEL_NAMES = ("text_encoder", "image_encoder", "vae", "dit", "pose_guider")


class WanUniAnimateVideoPipeline:
    """Holds the five models and runs one generation per call.

    Models are used where they are (the ModelManager's device) unless `device` differs: then each model is moved to
    `device` when first needed and stays there, or, after `enable_cpu_offload()`, is moved back to the CPU as soon
    as the next model is needed (one model on the GPU at a time).
    """

    def __init__(self, device: Union[str, torch.device] = "cuda", torch_dtype: torch.dtype = torch.bfloat16):
        self.device = torch.device(device)
        self.torch_dtype = torch_dtype
        self.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
        self.prompter = WanPrompter()
        self.text_encoder = self.image_encoder = self.vae = self.dit = self.pose_guider = None
        self.cpu_offload = False
        self.offload_device = torch.device("cpu")
        self._placed: Optional[set] = None     # see `_on_device`

    # ------------------------------------------------------------------------------------------- construction
    @classmethod
    def from_model_manager(cls, model_manager, torch_dtype: Optional[torch.dtype] = None,
                           device: Union[str, torch.device, None] = None) -> "WanUniAnimateVideoPipeline":
        """Take the models from a `ModelManager`. Call `model_manager.load_lora_v2(...)` with the UniAnimate
        checkpoint first: it also carries the pose guider weights."""
        pipe = cls(device=device or model_manager.device, torch_dtype=torch_dtype or model_manager.torch_dtype
                   or torch.bfloat16)
        text_encoder, text_encoder_path = model_manager.fetch_model("wan_video_text_encoder", require_model_path=True)
        pipe.text_encoder = text_encoder
        if text_encoder is not None:
            path = text_encoder_path[0] if isinstance(text_encoder_path, (list, tuple)) else text_encoder_path
            pipe.prompter.load_tokenizer(resolve_tokenizer_path(path))
        pipe.image_encoder = model_manager.fetch_model("wan_video_image_encoder")
        pipe.vae = model_manager.fetch_model("wan_video_vae")
        pipe.dit = model_manager.fetch_model("wan_video_dit")
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
        if prompter is not None:
            pipe.prompter = prompter
        elif tokenizer_path is not None:
            pipe.prompter.load_tokenizer(resolve_tokenizer_path(tokenizer_path))
        else:
            raise ValueError("pass prompter= or tokenizer_path= (the Wan release's google/umt5-xxl folder)")
        return pipe

    def enable_cpu_offload(self) -> None:
        """Keep models on the CPU and move each to `device` only while it runs (lower GPU memory, slower)."""
        self.cpu_offload = True

    def enable_vram_management(self, num_persistent_param_in_dit: Optional[float] = None,
                               prefetch: bool = True) -> None:
        """Layer streaming, as the upstream scripts call it (`pipe.enable_vram_management(num_persistent_param_in_dit=
        6e9)`); see `diffsynth.acceleration.vram` and docs/memory.md.

        - DiT: leaf modules in upstream order stay resident on `device` until the running parameter count passes
          `num_persistent_param_in_dit`; every later one streams from (pinned) CPU memory, one copy per block, the
          next block prefetched on a side stream. None keeps the whole DiT resident, 0 streams all of it. Bare
          parameters (`modulation`) are always resident.
        - umT5 and CLIP: everything streams (CLIP's small patch embedding stays resident: it says where CLIP runs).
        - VAE and pose guider: moved to `device` for their stage only (as with `enable_cpu_offload`).
        Results are bit-identical to a run without it. Call again to change the budget.
        """
        from ..acceleration.vram import enable_layer_streaming  # noqa: PLC0415

        self.cpu_offload = True
        streamers = self._vram_streamers()
        for name, budget, resident in (("dit", num_persistent_param_in_dit, ()), ("text_encoder", 0, ()),
                                       ("image_encoder", 0, ("visual.patch_embedding",))):
            model = getattr(self, name)
            if model is None:
                continue
            # A placed model keeps its resident part on the device; the streamed part goes to CPU memory.
            streamers[name] = enable_layer_streaming(
                model, budget, compute_device=self.device, storage_device=self.offload_device,
                always_resident=resident, prefetch=prefetch, onload=name in self._on_device)

    def _vram_streamers(self) -> dict:
        if not hasattr(self, "_streamers"):
            self._streamers = {}
        return self._streamers

    def models_on_device(self) -> List[str]:
        """Names of the models this pipeline has placed on the compute device (and not moved back since). With VRAM
        management a placed DiT/umT5/CLIP has its resident part there; its streamed weights stay in CPU memory."""
        return [name for name in MODEL_NAMES if name in self._on_device]

    def _onload(self, *names: str) -> torch.nn.Module:
        """Move the models `names` to the compute device (and, with CPU offload, every other model back to the
        CPU). Returns the first one."""
        if self.cpu_offload:
            for other in MODEL_NAMES:
                if other not in names and getattr(self, other) is not None and other in self._on_device:
                    self._offload(other)
        streamers = self._vram_streamers()
        for name in names:
            model = getattr(self, name)
            if model is None:
                raise ValueError(f"the pipeline has no {name}")
            if name not in self._on_device:
                if name in streamers:
                    streamers[name].onload()
                else:
                    model.to(self.device)
                self._on_device.add(name)
        return getattr(self, names[0])

    def _offload(self, name: str) -> None:
        streamer = self._vram_streamers().get(name)
        if streamer is not None:
            streamer.offload()
        else:
            getattr(self, name).to(self.offload_device)
        self._on_device.discard(name)

    @property
    def _on_device(self) -> set:
        # Tracked by name, not read from parameter devices: a model loaded straight onto the GPU counts as placed,
        # and the bookkeeping stays testable on a CPU-only machine.
        if self._placed is None:
            self._placed = {name for name in MODEL_NAMES if getattr(self, name) is not None
                            and next(getattr(self, name).parameters()).device == self.device}
        return self._placed

    # -------------------------------------------------------------------------------------------------- call
    def check_inputs(self, input_image, dwpose_data, random_ref_dwpose, height, width, num_frames, prompt="",
                     negative_prompt="", cfg_scale=1.0, num_inference_steps=1, input_video=None,
                     denoising_strength=1.0) -> None:
        """Every argument checked before any model runs; each error names the argument and the fix."""
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(text, str):
                raise ValueError(f"{name} must be a string (use \"\" for none); got {type(text).__name__}")
        if input_image is None:
            raise ValueError("input_image is required: the reference photo (PIL image) of the person to animate")
        check_pil_image(input_image, "input_image")
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number (1.5 in the UniAnimate scripts); got {cfg_scale!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1; got {num_inference_steps!r}")
        if not (isinstance(denoising_strength, (int, float)) and 0 < denoising_strength <= 1):
            raise ValueError(f"denoising_strength must be in (0, 1]; got {denoising_strength!r}")
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

    def generate_noise(self, shape, seed: Optional[int], rand_device: str = "cpu") -> torch.Tensor:
        """fp32 Gaussian noise drawn on `rand_device` (CPU by default, so a seed gives the same video on any GPU)."""
        generator = None if seed is None else torch.Generator(rand_device).manual_seed(seed)
        noise = torch.randn(shape, generator=generator, device=rand_device, dtype=torch.float32)
        return noise.to(device=self.device, dtype=self.torch_dtype)

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str = "", input_image: Optional["Image"] = None,
                 input_video: Optional[List["Image"]] = None, denoising_strength: float = 1.0,
                 seed: Optional[int] = None, rand_device: str = "cpu", height: int = 480, width: int = 832,
                 num_frames: int = 81, cfg_scale: float = 5.0, num_inference_steps: int = 50,
                 sigma_shift: float = 5.0, tiled: bool = True, tile_size: Tuple[int, int] = (30, 52),
                 tile_stride: Tuple[int, int] = (15, 26), tea_cache_l1_thresh: Optional[float] = None,
                 tea_cache_model_id: str = "", progress_bar_cmd=tqdm, dwpose_data: Optional[torch.Tensor] = None,
                 random_ref_dwpose: Optional[torch.Tensor] = None) -> List["Image"]:
        """Generate `num_frames` frames of the reference person following the poses.

        Args:
            input_image: reference photo (resized to height x width with PIL bicubic).
            dwpose_data: pose frames [3, F, H, W], values 0..255 (RGB as read from the pose images).
            random_ref_dwpose: reference pose [H, W, 3], values 0..255.
            height, width: multiples of 16; num_frames: 4k+1. Checked, never silently changed.
            cfg_scale: classifier-free guidance (1.5 in the UniAnimate scripts; 1.0 skips the negative branch).
            tea_cache_l1_thresh, tea_cache_model_id: enable TeaCache (e.g. 0.3, "Wan2.1-I2V-14B-720P").
            input_video, denoising_strength: video-to-video; the input is encoded (with the call's tiling settings)
                and noised part-way.
        Returns:
            a list of F PIL images.
        """
        self.check_inputs(input_image, dwpose_data, random_ref_dwpose, height, width, num_frames, prompt,
                          negative_prompt, cfg_scale, num_inference_steps, input_video, denoising_strength)
        self.scheduler.shift = sigma_shift
        self.scheduler.set_timesteps(num_inference_steps, denoising_strength)
        latent_shape = (1, 16, (num_frames - 1) // 4 + 1, height // 8, width // 8)

        # 1. Noise, or the noised input video.
        latents = self.generate_noise(latent_shape, seed, rand_device)
        if input_video is not None:
            encoded = self.encode_input_video(input_video, height, width, tiled, tile_size, tile_stride)
            latents = self.scheduler.add_noise(encoded, latents, self.scheduler.timesteps[0])
        context, context_neg = self.encode_prompts(prompt, negative_prompt, cfg_scale)
        clip_feature, y = self.encode_reference(input_image, height, width, num_frames, random_ref_dwpose)
        pose_tokens = self.encode_pose_video(dwpose_data)
        # 5. Denoising loop.
        dit = self._onload("dit")
        dit.check_inputs(latents, self.scheduler.timesteps[:1], context, clip_feature, y, pose_tokens)
        caches = self.new_tea_caches(num_inference_steps, tea_cache_l1_thresh, tea_cache_model_id)
        for timestep in progress_bar_cmd(self.scheduler.timesteps):
            velocity = self.predict(dit, latents, timestep, context, context_neg, clip_feature, y, pose_tokens,
                                    cfg_scale, caches)
            latents = self.scheduler.step(velocity, timestep, latents)
        if caches[0] is not None:
            logger.info("TeaCache skipped %d of %d steps", len(caches[0].skipped_steps), num_inference_steps)
        return self.decode(latents, tiled, tile_size, tile_stride)

    # ------------------------------------------------------------------------------- steps shared with long video
    def encode_input_video(self, input_video, height, width, tiled, tile_size, tile_stride) -> torch.Tensor:
        """Video-to-video: the input frames as latents, encoded with the call's tiling settings (as upstream)."""
        vae = self._onload("vae")
        encoded = encode_video(vae, input_video, height, width, self.device, tiled, tile_size, tile_stride)
        return encoded.to(self.torch_dtype)

    def encode_prompts(self, prompt: str, negative_prompt: str, cfg_scale: float):
        """umT5 contexts for both CFG branches (the negative one only when cfg_scale != 1)."""
        text_encoder = self._onload("text_encoder")
        context = encode_prompt(self.prompter, text_encoder, prompt, self.device)
        context_neg = encode_prompt(self.prompter, text_encoder, negative_prompt, self.device) \
            if cfg_scale != 1.0 else None
        return context, context_neg

    def encode_reference(self, input_image: "Image", height: int, width: int, num_frames: int,
                         random_ref_dwpose: torch.Tensor):
        """CLIP tokens and y = [mask; VAE latent] + reference-pose embedding (on all 20 channels)."""
        image = image_to_tensor(input_image, height, width)
        self._onload("image_encoder", "vae")   # both run in encode_reference_image
        clip_feature, y = encode_reference_image(self.image_encoder, self.vae, image, num_frames, self.device)
        pose_guider = self._onload("pose_guider")
        ref_pose_emb = encode_reference_pose(pose_guider, random_ref_dwpose, self.device)
        return clip_feature, y.to(self.torch_dtype) + ref_pose_emb.to(self.torch_dtype)

    def encode_pose_video(self, dwpose_data: torch.Tensor) -> torch.Tensor:
        """Pose frames [3, F, H, W] (0..255) -> pose tokens [1, d, T, h', w'] in the pipeline dtype."""
        pose_guider = self._onload("pose_guider")
        return encode_pose_video(pose_guider, dwpose_data, self.device).to(self.torch_dtype)

    @staticmethod
    def new_tea_caches(num_inference_steps, tea_cache_l1_thresh, tea_cache_model_id):
        """One TeaCache per CFG branch (positive, negative), or (None, None)."""
        if tea_cache_l1_thresh is None:
            return [None, None]
        return [TeaCache(num_inference_steps, tea_cache_l1_thresh, tea_cache_model_id) for _ in range(2)]

    def predict(self, dit, latents, timestep, context, context_neg, clip_feature, y, pose_tokens, cfg_scale, caches):
        """The guided velocity: pose tokens on the conditional branch only, `neg + cfg * (pos - neg)`."""
        t = timestep[None].to(self.device)
        velocity = dit_step(dit, latents, t, context, clip_feature, y, pose_tokens, caches[0])
        if cfg_scale != 1.0:
            velocity_neg = dit_step(dit, latents, t, context_neg, clip_feature, y, None, caches[1])
            velocity = velocity_neg + cfg_scale * (velocity - velocity_neg)
        return velocity

    def decode(self, latents, tiled, tile_size, tile_stride, stream: Optional[bool] = None
               ) -> Union[List["Image"], Iterator["Image"]]:
        """Latents -> the list of PIL frames; or, with `stream=True` (or inside `generate_to_file`), the iterator
        of `decode_iter` (same frames, decoded chunk by chunk as they are consumed)."""
        if stream or (stream is None and getattr(self, "_stream_decode", False)):
            return self.decode_iter(latents, tiled, tile_size, tile_stride)
        vae = self._onload("vae")
        frames = decode_video(vae, latents, tiled=tiled, tile_size=tile_size, tile_stride=tile_stride)
        if self.cpu_offload:
            self._offload("vae")
        return frames

    # ------------------------------------------------------------------------------------- streamed output
    def decode_iter(self, latents, tiled, tile_size, tile_stride) -> Iterator["Image"]:
        """The frames of `decode`, yielded chunk by chunk (1, then 4 per latent frame) while the VAE decodes with
        its causal cache (one per spatial tile when tiled); no float copy of the whole video is ever held. The VAE
        is placed on the device at the first frame asked for, and (with CPU offload) moved back when the stream
        ends or is closed."""
        from .units import decode_video_iter  # noqa: PLC0415

        vae = self._onload("vae")
        try:
            yield from decode_video_iter(vae, latents, tiled=tiled, tile_size=tile_size, tile_stride=tile_stride)
        finally:
            if self.cpu_offload:
                self._offload("vae")

    def generate_to_file(self, path, *, fps: float = 15, quality: int = 9,
                         overwrite: bool = False, progress: bool = False, **call_kwargs) -> str:
        """Run `self(**call_kwargs)` and write the video to `path` (mp4) while it is decoded, chunk by chunk: each
        decoded chunk becomes uint8 frames that go straight to the encoder, so memory does not grow with the
        number of frames after denoising. Same frames as `save_video(self(...), path)`.

        The path is checked before anything runs (an existing file is refused unless `overwrite=True`), and the
        file is written atomically (`save_video`). Returns the path.
        """
        from ..data.safe_write import check_output_file  # noqa: PLC0415
        from ..data.video import save_video  # noqa: PLC0415

        check_output_file(path, overwrite=overwrite, flag="overwrite=True")
        self._stream_decode = True
        try:
            frames = self(**call_kwargs)
        finally:
            self._stream_decode = False
        return save_video(frames, path, fps=fps, quality=quality, progress=progress, overwrite=overwrite)


def load_pose_data(pose_images, reference_pose, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pose images (PIL, as written by run_align_pose.py) -> (dwpose_data [3, F, H, W] float 0..255,
    random_ref_dwpose [H, W, 3] uint8), resized bilinearly to the generation size like the upstream scripts.
    See `diffsynth.data.pose_folder.read_pose_clip` to read a whole pose folder."""
    return pose_tensors(pose_images, reference_pose, height, width)


__all__ = ["WanUniAnimateVideoPipeline", "load_pose_data"]
