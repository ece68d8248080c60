"""What every Wan pipeline shares: model placement (offload, layer streaming), prompt encoding, the guided DiT step
(batched CFG, step caches), the schedule (presets, explicit step lists), decoding, timing and `torch.compile`.

`WanVideoPipeline` (plain T2V/I2V) and the UniAnimate pipelines are subclasses; each adds only its conditioning.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..models.wan_dit import EmbeddedContext
from ..prompters import WanPrompter, resolve_tokenizer_path
from ..schedulers import FlowMatchScheduler
from .timing import StageTimer
from .units import decode_video, decode_video_iter, dit_step, embed_context, encode_prompt, encode_video

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

# The LightX2V Wan2.1 step-distill settings (their configs/distill/*.json): 4 steps on the shifted 1000-step grid,
# shift 5, cfg 1 (the LoRA distils guidance too), and their re-noising sampler.
FAST_PRESET = dict(denoising_step_list=(1000, 750, 500, 250), sigma_shift=5.0, cfg_scale=1.0, sampler="renoise")
PRESETS = ("default", "fast")
# LoRA file names that announce a step-distillation LoRA (LightX2V, Lightning, CausVid, "4step" exports).
STEP_DISTILL_NAME = re.compile(r"distill|lightx2v|lightning|causvid|4[-_]?steps?|cfg[-_]step", re.IGNORECASE)


@dataclass
class Guidance:
    """Per-generation conditioning of the DiT, computed once: the embedded text (and CLIP) tokens of each CFG branch,
    the I2V y shared by both, and how the branches run."""

    positive: EmbeddedContext
    negative: Optional[EmbeddedContext]    # None when cfg_scale == 1 (the negative branch never runs)
    y: Optional[torch.Tensor]              # I2V: [1, 20, T, h, w]; T2V: None
    cfg_scale: float
    batched: Optional[EmbeddedContext] = None   # [positive; negative] when both branches run as one batch of 2

    @property
    def batch_cfg(self) -> bool:
        return self.batched is not None


class NoiseSource:
    """Seeded fp32 Gaussian noise drawn on `rand_device` (CPU by default, so a seed gives the same video on any GPU),
    one generator for the initial latents and every later draw (the renoise sampler, long-video private frames)."""

    def __init__(self, seed: Optional[int], rand_device: str, device: torch.device, dtype: torch.dtype):
        self.generator = None if seed is None else torch.Generator(rand_device).manual_seed(seed)
        self.rand_device, self.device, self.dtype = rand_device, device, dtype

    def __call__(self, shape) -> torch.Tensor:
        noise = torch.randn(shape, generator=self.generator, device=self.rand_device, dtype=torch.float32)
        return noise.to(device=self.device, dtype=self.dtype)


class WanPipelineBase:
    """Model placement and the denoising machinery shared by the Wan pipelines (see the module docstring).

    Models are used where they are (the ModelManager's device) unless `device` differs: then each model is moved to
    `device` when first needed and stays there, or, after `enable_cpu_offload()`, is moved back to the CPU as soon
    as the next model is needed (one model on the GPU at a time).
    """

    MODEL_NAMES: Tuple[str, ...] = ("text_encoder", "image_encoder", "vae", "dit")

    def __init__(self, device: Union[str, torch.device] = "cuda", torch_dtype: torch.dtype = torch.bfloat16):
        self.device = torch.device(device)
        self.torch_dtype = torch_dtype
        self.scheduler = FlowMatchScheduler(shift=5.0, sigma_min=0.0, extra_one_step=True)
        self.prompter = WanPrompter()
        for name in self.MODEL_NAMES:
            setattr(self, name, None)
        self.cpu_offload = False
        self.offload_device = torch.device("cpu")
        self._placed: Optional[set] = None     # see `_on_device`
        self.step_distilled = False            # set by from_model_manager from the LoRA names, or by the user
        self.show_summary = True               # print the one-line timing summary after each call
        self.last_timings: Optional[dict] = None
        self._compiled = False
        self.parallel = None                   # a `diffsynth.distributed.ParallelState` after enable_parallel()

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
        pipe.step_distilled = pipe.detect_step_distilled(lora_files_of(model_manager))
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

    # ------------------------------------------------------------------------------------------- placement
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

        if self._compiled:
            raise RuntimeError("enable_vram_management must come before pipe.compile(): streamed weights change "
                               "every call, which a compiled graph would recompile for")
        self.cpu_offload = True
        streamers = self._vram_streamers()
        for name, budget, resident in (("dit", num_persistent_param_in_dit, ()), ("text_encoder", 0, ()),
                                       ("image_encoder", 0, ("visual.patch_embedding",))):
            model = getattr(self, name, None)
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
        return [name for name in self.MODEL_NAMES if name in self._on_device]

    def _onload(self, *names: str) -> torch.nn.Module:
        """Move the models `names` to the compute device (and, with CPU offload, every other model back to the
        CPU). Returns the first one."""
        if self.cpu_offload:
            for other in self.MODEL_NAMES:
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
            self._placed = {name for name in self.MODEL_NAMES if getattr(self, name) is not None
                            and next(getattr(self, name).parameters()).device == self.device}
        return self._placed

    # ------------------------------------------------------------------------------------------- multi-GPU
    def enable_parallel(self, state, dit_fsdp: bool = False, t5_fsdp: bool = False) -> None:
        """Split every generation across the ranks of `state` (`diffsynth.distributed.init_parallel`, under
        torchrun): the DiT's tokens across each sequence-parallel group (Ulysses), the two CFG branches across the
        CFG groups. Every rank runs the call with the same arguments; only rank 0 decodes and returns frames (the
        other ranks return None). `dit_fsdp` / `t5_fsdp` shard those weights over all ranks (FSDP2, as Wan2.1's
        flags; `diffsynth.distributed.fsdp`). See docs/parallel.md."""
        from ..distributed.fsdp import shard_model  # noqa: PLC0415
        from ..distributed.sequence_parallel import SequenceParallel  # noqa: PLC0415

        config = state.config
        if self.dit.config.num_heads % config.ulysses_size:
            raise ValueError(f"ulysses_size {config.ulysses_size} must divide the DiT's {self.dit.config.num_heads} "
                             "heads")
        if state.world_size > 1 and self._vram_streamers():
            raise ValueError("enable_parallel with enable_vram_management is not supported yet: each rank would "
                             "stream the whole DiT; use the GPUs' memory instead, or one process per GPU with "
                             "item parallel (diffsynth.distributed.item_shard)")
        if (dit_fsdp or t5_fsdp) and (state.world_size == 1 or self.cpu_offload):
            raise ValueError("FSDP sharding needs several processes (torchrun) and no CPU offload / layer streaming "
                             "(they move the weights the shards live in)")
        self.parallel = state
        self.device = state.device
        self._placed = None
        self.dit.sequence_parallel = SequenceParallel(state.sp_group, config.ring_size) if config.sp_size > 1 \
            else None
        for name, wanted in (("dit", dit_fsdp), ("text_encoder", t5_fsdp)):
            if wanted:
                shard_model(getattr(self, name), state)
                self._on_device.add(name)
        self._fsdp = bool(dit_fsdp)

    @property
    def is_main_process(self) -> bool:
        return self.parallel is None or self.parallel.is_main

    def _cfg_parallel(self) -> bool:
        return self.parallel is not None and self.parallel.config.cfg_parallel

    def _gather_branches(self, velocity: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """CFG parallel: this rank's branch velocity -> (conditional, unconditional) from the CFG group."""
        import torch.distributed as dist  # noqa: PLC0415

        parts = [torch.empty_like(velocity) for _ in range(2)]
        dist.all_gather(parts, velocity.contiguous(), group=self.parallel.cfg_group)
        return parts[0], parts[1]

    # ---------------------------------------------------------------------------------------------- compile
    def compile(self, mode: Optional[str] = None) -> None:
        """`torch.compile` every DiT block (`dynamic=False`: one graph per video size). The first call at a new size
        pays the compile time (minutes for the 14B DiT on a GPU); later steps run the fused kernels. Not combinable
        with `enable_vram_management` (streamed weights are new tensors on every call). Inductor cannot generate code
        for the float64 complex RoPE multiply (the upstream-exact default), which then runs eagerly inside the
        graph: set `pipe.dit.rope_precision = "float32"` for a fully compiled block. A step cache that makes the two
        CFG branches skip different steps runs the blocks on a batch of 1: a second graph, compiled once."""
        if self.dit is None:
            raise ValueError("the pipeline has no DiT to compile")
        if "dit" in self._vram_streamers():
            raise RuntimeError("pipe.compile() cannot follow enable_vram_management(): streamed weights are new "
                               "tensors on every call, so the compiled blocks would recompile each time")
        for block in self.dit.blocks:
            block.compile(dynamic=False, mode=mode)
        self._compiled = True

    # --------------------------------------------------------------------------------------------- schedule
    def resolve_preset(self, preset: Optional[str], settings: dict) -> dict:
        """Apply a preset to the call's schedule/guidance `settings` (a dict with cfg_scale, sigma_shift,
        num_inference_steps, denoising_step_list, sampler). "fast" needs a step-distillation LoRA (see
        `FAST_PRESET`); it refuses to run without one instead of producing a blurry video."""
        if preset in (None, "default"):
            return settings
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}; got {preset!r}")
        if not self.step_distilled:
            raise ValueError(
                "preset='fast' needs a step-distillation LoRA (4 steps, cfg 1), e.g. LightX2V's "
                "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors, merged with "
                "model_manager.load_lora_v2 before from_model_manager(). None of the loaded LoRAs is named like one "
                f"({STEP_DISTILL_NAME.pattern}). If the DiT is distilled another way, set pipe.step_distilled = True.")
        settings = dict(settings, **FAST_PRESET)
        settings["num_inference_steps"] = len(FAST_PRESET["denoising_step_list"])
        return settings

    def configure_scheduler(self, num_inference_steps: Optional[int], denoising_strength: float = 1.0,
                            sigma_shift: float = 5.0, denoising_step_list: Optional[Sequence[int]] = None,
                            sampler: str = "euler") -> int:
        """Set the scheduler for one call; returns the number of steps."""
        self.scheduler.shift = sigma_shift
        self.scheduler.sampler = sampler
        if denoising_step_list is not None:
            self.scheduler.set_timesteps(None, denoising_step_list=denoising_step_list)
        else:
            self.scheduler.set_timesteps(num_inference_steps, denoising_strength)
        return len(self.scheduler.timesteps)

    def configure_schedule(self, settings: dict, denoising_strength: float = 1.0) -> int:
        """`configure_scheduler` from the call's `resolve_preset` settings; returns the number of steps."""
        return self.configure_scheduler(settings["num_inference_steps"], denoising_strength, settings["sigma_shift"],
                                        settings["denoising_step_list"], settings["sampler"])

    @staticmethod
    def detect_step_distilled(lora_files: Sequence) -> bool:
        """True when a merged LoRA's file name (not its folder) announces step distillation (`STEP_DISTILL_NAME`)."""
        return any(STEP_DISTILL_NAME.search(os.path.basename(os.fspath(f))) for f in lora_files)

    # ------------------------------------------------------------------------------------------- step caches
    @staticmethod
    def step_cache_config(step_cache=None, tea_cache_l1_thresh: Optional[float] = None,
                          tea_cache_model_id: str = ""):
        """The call's step-cache config: `step_cache` (a `TeaCacheConfig`/`MagCacheConfig`), or TeaCache from the
        upstream arguments `tea_cache_l1_thresh` / `tea_cache_model_id`, or None."""
        if step_cache is not None and tea_cache_l1_thresh is not None:
            raise ValueError("pass step_cache= or tea_cache_l1_thresh=, not both")
        if tea_cache_l1_thresh is not None:
            from ..acceleration.block_cache import TeaCacheConfig  # noqa: PLC0415
            return TeaCacheConfig(tea_cache_l1_thresh, tea_cache_model_id)
        return step_cache

    def new_step_caches(self, num_inference_steps: int, config) -> List:
        """One cache per CFG branch (conditional, unconditional), or [None, None]."""
        if config is None:
            return [None, None]
        if getattr(self, "_fsdp", False) and self._cfg_parallel():
            raise ValueError("a step cache with CFG parallel and a sharded DiT (dit_fsdp) is refused: the two "
                             "branches may skip different steps, and their ranks would wait on each other's "
                             "all-gathers. Drop one of the three")
        return [config.new_cache(num_inference_steps, branch) for branch in (0, 1)]

    @torch.no_grad()
    def cache_plan(self, num_inference_steps: Optional[int] = 50, step_cache=None,
                   tea_cache_l1_thresh: Optional[float] = None, tea_cache_model_id: str = "",
                   cfg_scale: float = 5.0, sigma_shift: float = 5.0, denoising_strength: float = 1.0,
                   denoising_step_list: Optional[Sequence[int]] = None, preset: Optional[str] = None) -> dict:
        """Which steps a call with these settings will compute, before running it: both rules depend only on the
        schedule (and, for TeaCache, the DiT's timestep modulation, computed here without running any block).

        Returns {"timesteps": [...], "positive": [bool per step], "negative": [...] or None (cfg_scale 1),
        "computed": {"positive": n, "negative": n}}; True = the blocks run at that step.
        """
        settings = self.resolve_preset(preset, dict(cfg_scale=cfg_scale, sigma_shift=sigma_shift,
                                                    num_inference_steps=num_inference_steps,
                                                    denoising_step_list=denoising_step_list, sampler="euler"))
        steps = self.configure_schedule(settings, denoising_strength)
        config = self.step_cache_config(step_cache, tea_cache_l1_thresh, tea_cache_model_id)
        timesteps = [float(t) for t in self.scheduler.timesteps]
        if config is None:
            plans = [[True] * steps, [True] * steps]
        else:
            modulations = None
            if config.needs_modulation:
                dit = self.dit
                dtype = next(dit.parameters()).dtype
                device = next(dit.time_embedding.parameters()).device
                modulations = [dit.embed_timestep(torch.tensor([t], device=device).to(dtype))[1]
                               for t in self.scheduler.timesteps]
            plans = [cache.plan(modulations) for cache in self.new_step_caches(steps, config)]
        negative = plans[1] if settings["cfg_scale"] != 1.0 else None
        return {"timesteps": timesteps, "positive": plans[0], "negative": negative,
                "computed": {"positive": sum(plans[0]), "negative": None if negative is None else sum(negative)}}

    # --------------------------------------------------------------------------------------------- encoding
    def encode_prompts(self, prompt: str, negative_prompt: str, cfg_scale: float):
        """umT5 contexts for both CFG branches (the negative one only when cfg_scale != 1)."""
        text_encoder = self._onload("text_encoder")
        context = encode_prompt(self.prompter, text_encoder, prompt, self.device)
        context_neg = encode_prompt(self.prompter, text_encoder, negative_prompt, self.device) \
            if cfg_scale != 1.0 else None
        return context, context_neg

    def generate_noise(self, shape, noise: NoiseSource) -> torch.Tensor:
        """The initial latents: fp32 Gaussian noise from the call's seeded source, in the pipeline dtype."""
        return noise(shape)

    def initial_latents(self, latent_shape, noise: NoiseSource, input_video, height, width, tiled, tile_size,
                        tile_stride) -> torch.Tensor:
        """Seeded noise, or (video-to-video) the encoded input video noised to the schedule's first timestep."""
        latents = self.generate_noise(latent_shape, noise)
        if input_video is not None:
            encoded = self.encode_input_video(input_video, height, width, tiled, tile_size, tile_stride)
            latents = self.scheduler.add_noise(encoded, latents, self.scheduler.timesteps[0])
        return latents

    def encode_input_video(self, input_video, height, width, tiled, tile_size, tile_stride) -> torch.Tensor:
        """Video-to-video: the input frames as latents, encoded with the call's tiling settings (as upstream)."""
        vae = self._onload("vae")
        encoded = encode_video(vae, input_video, height, width, self.device, tiled, tile_size, tile_stride)
        return encoded.to(self.torch_dtype)

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

    # ------------------------------------------------------------------------------------------- denoising
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

    def denoise(self, dit, latents: torch.Tensor, guidance: Guidance, pose_tokens: Optional[torch.Tensor],
                caches: Sequence, noise: NoiseSource, progress_bar_cmd, timer: StageTimer) -> torch.Tensor:
        """The sampling loop of a one-window generation."""
        with timer("denoise"):
            for timestep in progress_bar_cmd(self.scheduler.timesteps):
                velocity = self.predict(dit, latents, timestep, guidance, pose_tokens, caches)
                fresh = noise(latents.shape) if self.scheduler.needs_noise(timestep) else None
                latents = self.scheduler.step(velocity, timestep, latents, fresh)
                timer.steps += 1
        if caches[0] is not None:
            logger.info("step cache skipped %d of %d steps (conditional branch)", len(caches[0].skipped_steps),
                        len(self.scheduler.timesteps))
        return latents

    # -------------------------------------------------------------------------------------------- decoding
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

    def decode_iter(self, latents, tiled, tile_size, tile_stride) -> Iterator["Image"]:
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

    def finish(self, latents, tiled, tile_size, tile_stride, timer: StageTimer, num_frames: int,
               stream: Optional[bool] = None):
        """Decode (timed, unless streamed: then the file writer's time includes it) and print the summary."""
        timer.frames = num_frames
        if not self.is_main_process:   # multi-GPU: rank 0 decodes and writes
            self.last_timings = timer.report()
            return None
        streamed = stream or (stream is None and getattr(self, "_stream_decode", False))
        if streamed:
            frames = self.decode_iter(latents, tiled, tile_size, tile_stride)
        else:
            with timer("decode"):
                frames = self.decode(latents, tiled, tile_size, tile_stride, stream=False)
        self.last_timings = timer.report()
        if self.show_summary and not streamed:
            timer.print_summary()
        self._timer = timer
        return frames

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
        if frames is None:             # multi-GPU: not rank 0, nothing to write
            return None
        timer = getattr(self, "_timer", None)
        if timer is None:
            return save_video(frames, path, fps=fps, quality=quality, progress=progress, overwrite=overwrite)
        with timer("decode+write"):
            out = save_video(frames, path, fps=fps, quality=quality, progress=progress, overwrite=overwrite)
        self.last_timings = timer.report()
        if self.show_summary:
            timer.print_summary()
        return out

    # ------------------------------------------------------------------------------------------- checking
    @staticmethod
    def check_common(prompt, negative_prompt, height, width, num_frames, cfg_scale, num_inference_steps,
                     denoising_strength) -> None:
        """The argument checks every pipeline shares; each error names the argument and the fix."""
        for name, text in (("prompt", prompt), ("negative_prompt", negative_prompt)):
            if not isinstance(text, str):
                raise ValueError(f"{name} must be a string (use \"\" for none); got {type(text).__name__}")
        for name, value in (("height", height), ("width", width), ("num_frames", num_frames)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(cfg_scale, (int, float)) or not math.isfinite(cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number (1.5 in the UniAnimate scripts); got {cfg_scale!r}")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1; got {num_inference_steps!r}")
        if not (isinstance(denoising_strength, (int, float)) and 0 < denoising_strength <= 1):
            raise ValueError(f"denoising_strength must be in (0, 1]; got {denoising_strength!r}")


def lora_files_of(model_manager) -> List:
    """The files of every LoRA merged by a ModelManager (for `detect_step_distilled`)."""
    files: List = []
    for merged in getattr(model_manager, "loras", []):
        files.extend(getattr(merged, "files", ()) or ())
        path = getattr(merged, "path", None)
        if isinstance(path, (str, bytes)) or hasattr(path, "__fspath__"):
            files.append(path)
    return files


__all__ = ["WanPipelineBase", "Guidance", "NoiseSource", "FAST_PRESET", "PRESETS", "STEP_DISTILL_NAME",
           "lora_files_of"]
