"""`WanVideoPipeline`: plain Wan2.1 text-to-video and image-to-video (no pose), on the same units as UniAnimate.

    model_manager = ModelManager(device="cpu")
    model_manager.load_models([dit_shards, t5_path, vae_path, clip_path], torch_dtype=torch.bfloat16)
    pipe = WanVideoPipeline.from_model_manager(model_manager, device="cuda")
    frames = pipe(prompt="a cat surfing", input_image=image, seed=0)        # I2V; without input_image: T2V

Defaults follow Wan2.1: 81 frames, shift 5, cfg 5, 50 steps; T2V at 480x832; I2V at the reference's aspect ratio
with height x width close to `max_area` (480*832), both multiples of 16 (Wan's `generate.py` rule).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from ..data.framing import fit_area
from ..data.images import check_pil_image, image_to_tensor
from ..prompters import WanPrompter
from .base import WanPipelineBase
from .denoise import NoiseSource, StepCallback, WholeVideo
from .request import GenerationRequest
from .schedule import make_scheduler
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

    def check_inputs(self, request: GenerationRequest, input_image, input_video=None) -> None:
        """Every argument checked before any model runs; each error names the argument and the fix."""
        request.check()
        if self.is_i2v and input_image is None:
            raise ValueError("this is an I2V DiT: pass input_image (PIL image), or load a T2V DiT for text-to-video")
        if not self.is_i2v and input_image is not None:
            raise ValueError("input_image was given but the DiT is T2V (no image input): load the Wan2.1-I2V DiT")
        if input_image is not None:
            check_pil_image(input_image, "input_image")
        if input_video is not None:
            if len(input_video) != request.num_frames:
                raise ValueError(f"input_video has {len(input_video)} frames; num_frames is {request.num_frames}")
            for i, frame in enumerate(input_video):
                check_pil_image(frame, f"input_video[{i}]")
        check_sizes(request.height, request.width, request.num_frames)

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
                 cfg_batch: Optional[bool] = None, callback_on_step_end: Optional[StepCallback] = None
                 ) -> List["Image"]:
        """Generate `num_frames` frames from the prompt (T2V) or the prompt and `input_image` (I2V).

        height/width default to 480x832 (T2V) or, for I2V, the reference's aspect at `max_area` pixels
        (`size_for_reference`). The other arguments are those of `WanUniAnimateVideoPipeline.__call__`.
        """
        arguments = dict(locals())
        del arguments["self"]
        return self._call(arguments)

    @torch.no_grad()
    def generate(self, request: GenerationRequest, *, input_image: Optional["Image"] = None,
                 input_video: Optional[List["Image"]] = None, max_area: int = DEFAULT_MAX_AREA,
                 progress_bar_cmd=tqdm, callback_on_step_end: Optional[StepCallback] = None, output: str = "pil"):
        """One T2V / I2V generation; `output`: "pil" (a list) or "iterator" (a `FrameStream`)."""
        request = request.resolved(self.step_distilled)
        if request.height is None or request.width is None:
            if input_image is not None and hasattr(input_image, "size"):
                default_height, default_width = size_for_reference(*input_image.size, max_area=max_area)
            else:
                default_height, default_width = DEFAULT_T2V_SIZE
            request = replace(request, height=request.height or default_height,
                              width=request.width or default_width)
        self.check_inputs(request, input_image, input_video)
        timer = StageTimer(self.device)
        scheduler = self.scheduler = make_scheduler(request)
        noise = NoiseSource(request.seed, request.rand_device, self.device, self.torch_dtype)

        with timer("encode"):
            latents = self.initial_latents(request, noise, scheduler, input_video)
            context, context_neg = self.encode_prompts(request.prompt, request.negative_prompt, request.cfg_scale)
            clip_feature = y = None
            if input_image is not None:
                image = image_to_tensor(input_image, request.height, request.width)
                self._onload("image_encoder", "vae")
                clip_feature, y = encode_reference_image(self.image_encoder, self.vae, image, request.num_frames,
                                                         self.device)
        dit = self._onload("dit")
        dit.check_inputs(latents, scheduler.timesteps[:1], context, clip_feature, y)
        with timer("encode"):
            guidance = self.prepare_guidance(dit, context, context_neg, clip_feature, y, request.cfg_scale,
                                             request.cfg_batch, request.latent_shape())
        schedule = WholeVideo(None, self.step_caches(request, len(scheduler.timesteps)))
        latents = self.denoise(dit, latents, guidance, schedule, scheduler, noise, timer, progress_bar_cmd,
                               callback_on_step_end)
        return self.finish(latents, request, timer, request.num_frames, output)


__all__ = ["WanVideoPipeline", "size_for_reference", "DEFAULT_MAX_AREA"]
