"""What every Wan pipeline shares, one concern per module:

- `request.py`: `GenerationRequest`, the settings of one generation (defaults and presets in one place);
- `placement.py`: where the models live (offload, layer streaming, several GPUs, compile);
- `schedule.py`: the per-call scheduler, step caches and `cache_plan`;
- `denoise.py`: guidance, the guided DiT velocity and the sampling loop over a window schedule;
- here: construction, prompt and input-video encoding, decoding, and the upstream keyword call as an adapter.

`WanVideoPipeline` (plain T2V/I2V) and `WanUniAnimateVideoPipeline` subclass it; each adds only its conditioning
and its `generate(request, ...)`.
"""
from __future__ import annotations

import inspect
import os
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Union

import torch

from ..prompters import WanPrompter, resolve_tokenizer_path
from ..schedulers import FlowMatchScheduler
from .denoise import GuidedDenoising, NoiseSource
from .placement import ModelPlacement
from .request import GenerationRequest, detect_step_distilled, split_call
from .schedule import cache_plan, new_step_caches
from .timing import StageTimer
from .units import decode_video, decode_video_iter, encode_prompt, encode_video

if TYPE_CHECKING:
    from PIL.Image import Image

OUTPUTS = ("pil", "iterator")


class FrameStream:
    """The frames of a generation decoded chunk by chunk as they are consumed (`output="iterator"`): an iterator of
    PIL images that also carries the call's `timer` (its decode time is spent while the consumer writes)."""

    def __init__(self, frames: Iterator["Image"], timer: StageTimer):
        self._frames, self.timer = frames, timer

    def __iter__(self):
        return self

    def __next__(self) -> "Image":
        return next(self._frames)

    def close(self) -> None:
        self._frames.close()


class WanPipelineBase(ModelPlacement, GuidedDenoising):
    """Models, their placement and the generation steps shared by the Wan pipelines (see the module docstring)."""

    MODEL_NAMES = ("text_encoder", "image_encoder", "vae", "dit")
    USES_UNIANIMATE = False    # from_pretrained merges the UniAnimate checkpoint (LoRA + pose guider)

    def __init__(self, device: Union[str, torch.device] = "cuda", torch_dtype: torch.dtype = torch.bfloat16):
        self._init_placement(device)
        self.torch_dtype = torch_dtype
        self.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)   # the last call's
        self.prompter = WanPrompter()
        for name in self.MODEL_NAMES:
            setattr(self, name, None)
        self.step_distilled = False            # set by from_model_manager from the LoRA names, or by the user
        self.show_summary = True               # print the one-line timing summary after each call
        self.last_timings: Optional[dict] = None
        self.loaded: List[str] = []            # from_pretrained: what was loaded and merged, one line each

    # ---------------------------------------------------------------------------------------- construction
    @classmethod
    def _from_manager(cls, model_manager, torch_dtype, device) -> "WanPipelineBase":
        """A pipeline holding the manager's umT5 (with its tokenizer), CLIP, VAE and DiT, and knowing whether a
        merged LoRA is a step-distillation one. Subclasses add their own models and checks."""
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
        pipe.step_distilled = detect_step_distilled(lora_files_of(model_manager))
        return pipe

    @classmethod
    def from_pretrained(cls, source: Union[str, os.PathLike] = "checkpoints", *,
                        torch_dtype: torch.dtype = torch.bfloat16, device: Union[str, torch.device, None] = None,
                        loras: Sequence = (), dit_dtype: Optional[torch.dtype] = None,
                        progress: bool = True, stack_loras: bool = False) -> "WanPipelineBase":
        """The pipeline on the release in `source` (a models folder holding `Wan2.1-I2V-14B-720P/` and the UniAnimate
        checkpoint, or the Wan folder itself), or on the shipped demo model (`"demo"`, or a folder in its layout),
        each model in its dtype (`loading.release.MODEL_DTYPES`). `loras`: further LoRA files or `(path, strength)`
        pairs merged after the UniAnimate one; a UniAnimate LoRA among them (one carrying a pose guider, e.g. one you
        trained) replaces the UniAnimate checkpoint instead, unless `stack_loras`. `dit_dtype=torch.float8_e4m3fn`
        stores the DiT in fp8. `device`: where the models run (default: the CPU they are loaded on). Missing files
        are named with the fix. `pipe.loaded` says what was merged and where the pose guider came from."""
        from ..loading.release import describe_loaded, find_model_files, load_model_files  # noqa: PLC0415

        files = find_model_files(source, with_unianimate=cls.USES_UNIANIMATE)
        notes = [files.add_lora(*(entry if isinstance(entry, (tuple, list)) else (entry, 1.0)), stack=stack_loras)
                 for entry in loras]
        manager = load_model_files(files, torch_dtype, dit_dtype, progress)
        pipe = cls.from_model_manager(manager, torch_dtype=torch_dtype, device=device or "cpu")
        pipe.loaded = [f"models: {source}", *notes, *describe_loaded(manager)]
        return pipe

    def use_prompter(self, prompter: Optional[WanPrompter] = None, tokenizer_path: Optional[str] = None) -> None:
        """The prompter to encode prompts with: a given one, or one on the `google/umt5-xxl` tokenizer folder (the
        folder of the T5 file works too)."""
        if prompter is not None:
            self.prompter = prompter
        elif tokenizer_path is not None:
            self.prompter.load_tokenizer(resolve_tokenizer_path(tokenizer_path))
        else:
            raise ValueError("pass prompter= or tokenizer_path= (the Wan release's google/umt5-xxl folder)")

    # ------------------------------------------------------------------------------------- the keyword call
    def _call(self, arguments: dict, output: str = "pil"):
        """An upstream keyword call (`__call__`'s arguments) -> `generate(request, ...)`."""
        request, rest = split_call(arguments)
        return self.generate(request, output=output, **rest)

    def generate(self, request: GenerationRequest, *, output: str = "pil", **inputs):
        raise NotImplementedError

    def cache_plan(self, num_inference_steps: Optional[int] = 50, **settings) -> dict:
        """Which steps a call with these settings (the keyword call's schedule, guidance and step-cache arguments)
        will compute, before running it; see `schedule.cache_plan`. Changes nothing on the pipeline."""
        request = GenerationRequest.from_call(num_inference_steps=num_inference_steps, **settings)
        return cache_plan(self.dit, request.resolved(self.step_distilled))

    def step_caches(self, request: GenerationRequest, num_steps: int) -> List:
        """One step cache per CFG branch for a call (or [None, None])."""
        if request.step_cache is not None and self._fsdp and self._cfg_parallel():
            raise ValueError("a step cache with CFG parallel and a sharded DiT (dit_fsdp) is refused: the two "
                             "branches may skip different steps, and their ranks would wait on each other's "
                             "all-gathers. Drop one of the three")
        return new_step_caches(request.step_cache, num_steps)

    # --------------------------------------------------------------------------------------------- encoding
    def encode_prompts(self, prompt: str, negative_prompt: str, cfg_scale: float):
        """umT5 contexts for both CFG branches (the negative one only when cfg_scale != 1)."""
        text_encoder = self._onload("text_encoder")
        context = encode_prompt(self.prompter, text_encoder, prompt, self.device)
        context_neg = encode_prompt(self.prompter, text_encoder, negative_prompt, self.device) \
            if cfg_scale != 1.0 else None
        return context, context_neg

    def initial_latents(self, request: GenerationRequest, noise: NoiseSource, scheduler,
                        input_video) -> torch.Tensor:
        """Seeded noise, or (video-to-video) the encoded input video noised to the schedule's first timestep."""
        latents = noise(request.latent_shape())
        if input_video is not None:
            encoded = self.encode_input_video(input_video, request)
            latents = scheduler.add_noise(encoded, latents, scheduler.timesteps[0])
        return latents

    def encode_input_video(self, input_video, request: GenerationRequest) -> torch.Tensor:
        """Video-to-video: the input frames as latents, encoded with the call's tiling settings (as upstream)."""
        vae = self._onload("vae")
        encoded = encode_video(vae, input_video, request.height, request.width, self.device, request.tiled,
                               request.tile_size, request.tile_stride)
        return encoded.to(self.torch_dtype)

    # -------------------------------------------------------------------------------------------- decoding
    def decode(self, latents, tiled: bool = True, tile_size=(30, 52), tile_stride=(15, 26)) -> List["Image"]:
        """Latents -> the list of PIL frames."""
        vae = self._onload("vae")
        frames = decode_video(vae, latents, tiled=tiled, tile_size=tile_size, tile_stride=tile_stride)
        if self.cpu_offload:
            self._offload("vae")
        return frames

    def decode_iter(self, latents, tiled: bool = True, tile_size=(30, 52), tile_stride=(15, 26)
                    ) -> Iterator["Image"]:
        """The frames of `decode`, yielded chunk by chunk (1, then 4 per latent frame) while the VAE decodes with
        its causal cache (one per spatial tile when tiled); no float copy of the whole video is ever held. The VAE
        is placed on the device at the first frame asked for, and (with CPU offload) moved back when the stream
        ends or is closed."""
        vae = self._onload("vae")
        try:
            yield from decode_video_iter(vae, latents, tiled=tiled, tile_size=tile_size, tile_stride=tile_stride)
        finally:
            if self.cpu_offload:
                self._offload("vae")

    def finish(self, latents, request: GenerationRequest, timer: StageTimer, num_frames: int, output: str):
        """Decode as `output` asks: "pil" (timed, a list) or "iterator" (a `FrameStream`; the consumer's time
        includes decoding), and print the summary of a "pil" call. Multi-GPU ranks other than 0 return None."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}")
        timer.frames = num_frames
        if not self.is_main_process:   # multi-GPU: rank 0 decodes and writes
            self.last_timings = timer.report()
            return None
        if output == "iterator":
            self.last_timings = timer.report()
            return FrameStream(self.decode_iter(latents, request.tiled, request.tile_size, request.tile_stride),
                               timer)
        with timer("decode"):
            frames = self.decode(latents, request.tiled, request.tile_size, request.tile_stride)
        self.last_timings = timer.report()
        if self.show_summary:
            timer.print_summary()
        return frames

    def generate_to_file(self, path, *, fps: float = 15, quality: int = 9,
                         overwrite: bool = False, progress: bool = False, **call_kwargs) -> Optional[str]:
        """Run the keyword call `call_kwargs` and write the video to `path` (mp4) while it is decoded, chunk by chunk:
        each decoded chunk becomes uint8 frames that go straight to the encoder, so memory does not grow with the
        number of frames after denoising. Same frames as `save_video(pipe(...), path)`.

        The path is checked before anything runs (an existing file is refused unless `overwrite=True`), and the
        file is written atomically (`save_video`). Returns the path.
        """
        from ..data.safe_write import check_output_file  # noqa: PLC0415
        from ..data.video import save_video  # noqa: PLC0415

        check_output_file(path, overwrite=overwrite, flag="overwrite=True")
        bound = inspect.signature(self.__call__).bind(**call_kwargs)
        bound.apply_defaults()
        frames = self._call(dict(bound.arguments), output="iterator")
        if frames is None:             # multi-GPU: not rank 0, nothing to write
            return None
        with frames.timer("decode+write"):
            out = save_video(frames, path, fps=fps, quality=quality, progress=progress, overwrite=overwrite)
        self.last_timings = frames.timer.report()
        if self.show_summary:
            frames.timer.print_summary()
        return out


def lora_files_of(model_manager) -> List:
    """The files of every LoRA merged by a ModelManager (for `detect_step_distilled`)."""
    files: List = []
    for merged in getattr(model_manager, "loras", []):
        files.extend(getattr(merged, "files", ()) or ())
        path = getattr(merged, "path", None)
        if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__"):
            files.append(path)
    return files


__all__ = ["WanPipelineBase", "FrameStream", "lora_files_of", "OUTPUTS"]
