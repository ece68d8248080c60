"""`WanVideoPipeline`: plain Wan2.1 text-to-video and image-to-video (no pose), on the same units as UniAnimate.

    model_manager = ModelManager(device="cpu")
    model_manager.load_models([dit_shards, t5_path, vae_path, clip_path], torch_dtype=torch.bfloat16)
    pipe = WanVideoPipeline.from_model_manager(model_manager, device="cuda")
    frames = pipe(prompt="a cat surfing", input_image=image, seed=0)        # I2V; without input_image: T2V

Defaults follow Wan2.1: 81 frames, shift 5, cfg 5, 50 steps; T2V at 480x832; I2V at the reference's aspect ratio
with height x width close to `max_area` (480*832), both multiples of 16 (Wan's `generate.py` rule).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from ..data.framing import fit_area
from ..data.images import check_pil_image, image_to_tensor
from ..prompters import WanPrompter
from .base import NoiseSource, WanPipelineBase
from .timing import StageTimer
from .units import check_sizes, encode_reference_image

if TYPE_CHECKING:
    from PIL.Image import Image

DEFAULT_T2V_SIZE = (480, 832)
DEFAULT_MAX_AREA = 480 * 832


def size_for_reference(image_width: int, image_height: int, max_area: int = DEFAULT_MAX_AREA) -> Tuple[int, int]:
    """(height, width) for I2V: the reference's aspect ratio at about `max_area` pixels, each rounded down to a
    multiple of 16 (the VAE stride 8 times the patch size 2), as Wan2.1's I2V does (`data.framing.fit_area`)."""
    return fit_area(image_width, image_height, max_area, 16)


class WanVideoPipeline(WanPipelineBase):
    """Wan2.1 T2V (text only) and I2V (text + reference image): umT5, CLIP (I2V), VAE and the DiT."""

    MODEL_NAMES = ("text_encoder", "image_encoder", "vae", "dit")

    @classmethod
    def from_model_manager(cls, model_manager, torch_dtype: Optional[torch.dtype] = None,
                           device: Union[str, torch.device, None] = None) -> "WanVideoPipeline":
        """Take the models from a `ModelManager` (the CLIP image encoder only for an I2V DiT)."""
        pipe = cls._from_manager(model_manager, torch_dtype, device)
        pipe.check_models()
        return pipe

    @classmethod
    def from_models(cls, *, dit, vae, text_encoder, image_encoder=None, prompter: Optional[WanPrompter] = None,
                    tokenizer_path: Optional[str] = None, device: Union[str, torch.device] = "cuda",
                    torch_dtype: torch.dtype = torch.bfloat16) -> "WanVideoPipeline":
        """Build from models loaded one by one. Give a `prompter` or the `tokenizer_path` of `google/umt5-xxl`."""
        pipe = cls(device=device, torch_dtype=torch_dtype)
        pipe.dit, pipe.vae, pipe.text_encoder, pipe.image_encoder = dit, vae, text_encoder, image_encoder
        pipe.use_prompter(prompter, tokenizer_path)
        pipe.check_models()
        return pipe

    @property
    def is_i2v(self) -> bool:
        return bool(self.dit is not None and self.dit.config.has_image_input)

    def check_models(self) -> None:
        missing = [name for name in ("text_encoder", "vae", "dit") if getattr(self, name) is None]
        if self.is_i2v and self.image_encoder is None:
            missing.append("image_encoder (an I2V DiT needs the CLIP .pth file)")
        if missing:
            raise ValueError(f"the pipeline lacks {', '.join(missing)}: load the Wan2.1 DiT shards, the T5 and VAE "
                             ".pth files (and CLIP for I2V) with load_models() first")

    def check_inputs(self, input_image, height, width, num_frames, prompt="", negative_prompt="", cfg_scale=5.0,
                     num_inference_steps=50, input_video=None, denoising_strength=1.0) -> None:
        """Every argument checked before any model runs; each error names the argument and the fix."""
        self.check_common(prompt, negative_prompt, height, width, num_frames, cfg_scale, num_inference_steps,
                          denoising_strength)
        if self.is_i2v and input_image is None:
            raise ValueError("this is an I2V DiT: pass input_image (PIL image), or load a T2V DiT for text-to-video")
        if not self.is_i2v and input_image is not None:
            raise ValueError("input_image was given but the DiT is T2V (no image input): load the Wan2.1-I2V DiT")
        if input_image is not None:
            check_pil_image(input_image, "input_image")
        if input_video is not None:
            if len(input_video) != num_frames:
                raise ValueError(f"input_video has {len(input_video)} frames; num_frames is {num_frames}")
            for i, frame in enumerate(input_video):
                check_pil_image(frame, f"input_video[{i}]")
        check_sizes(height, width, num_frames)

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str = "", input_image: Optional["Image"] = None,
                 input_video: Optional[List["Image"]] = None, denoising_strength: float = 1.0,
                 seed: Optional[int] = None, rand_device: str = "cpu", height: Optional[int] = None,
                 width: Optional[int] = None, num_frames: int = 81, cfg_scale: float = 5.0,
                 num_inference_steps: int = 50, sigma_shift: float = 5.0, tiled: bool = True,
                 tile_size: Tuple[int, int] = (30, 52), tile_stride: Tuple[int, int] = (15, 26),
                 tea_cache_l1_thresh: Optional[float] = None, tea_cache_model_id: str = "", progress_bar_cmd=tqdm,
                 *, max_area: int = DEFAULT_MAX_AREA, step_cache=None, preset: Optional[str] = None,
                 denoising_step_list: Optional[Sequence[int]] = None, sampler: str = "euler",
                 cfg_batch: Optional[bool] = None) -> List["Image"]:
        """Generate `num_frames` frames from the prompt (T2V) or the prompt and `input_image` (I2V).

        height/width default to 480x832 (T2V) or, for I2V, the reference's aspect at `max_area` pixels
        (`size_for_reference`). The other arguments are those of `WanUniAnimateVideoPipeline.__call__`.
        """
        settings = self.resolve_preset(preset, dict(cfg_scale=cfg_scale, sigma_shift=sigma_shift, sampler=sampler,
                                                    num_inference_steps=num_inference_steps,
                                                    denoising_step_list=denoising_step_list))
        cfg_scale, num_inference_steps = settings["cfg_scale"], settings["num_inference_steps"]
        if height is None or width is None:
            if input_image is not None and hasattr(input_image, "size"):
                default_height, default_width = size_for_reference(*input_image.size, max_area=max_area)
            else:
                default_height, default_width = DEFAULT_T2V_SIZE
            height, width = height or default_height, width or default_width
        self.check_inputs(input_image, height, width, num_frames, prompt, negative_prompt, cfg_scale,
                          num_inference_steps, input_video, denoising_strength)
        timer = StageTimer(self.device)
        steps = self.configure_schedule(settings, denoising_strength)
        cache_config = self.step_cache_config(step_cache, tea_cache_l1_thresh, tea_cache_model_id)
        latent_shape = (1, 16, (num_frames - 1) // 4 + 1, height // 8, width // 8)
        noise = NoiseSource(seed, rand_device, self.device, self.torch_dtype)

        with timer("encode"):
            latents = self.initial_latents(latent_shape, noise, input_video, height, width, tiled, tile_size,
                                           tile_stride)
            context, context_neg = self.encode_prompts(prompt, negative_prompt, cfg_scale)
            clip_feature = y = None
            if input_image is not None:
                image = image_to_tensor(input_image, height, width)
                self._onload("image_encoder", "vae")
                clip_feature, y = encode_reference_image(self.image_encoder, self.vae, image, num_frames, self.device)
        dit = self._onload("dit")
        dit.check_inputs(latents, self.scheduler.timesteps[:1], context, clip_feature, y)
        with timer("encode"):
            guidance = self.prepare_guidance(dit, context, context_neg, clip_feature, y, cfg_scale, cfg_batch,
                                             latent_shape)
        caches = self.new_step_caches(steps, cache_config)
        latents = self.denoise(dit, latents, guidance, None, caches, noise, progress_bar_cmd, timer)
        return self.finish(latents, tiled, tile_size, tile_stride, timer, num_frames)


__all__ = ["WanVideoPipeline", "size_for_reference", "DEFAULT_MAX_AREA"]
