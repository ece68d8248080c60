"""What one generation is asked to do, apart from its images: `GenerationRequest` (frozen), with every default in one
place and `preset=` resolved here.

The pipelines' upstream keyword calls (`pipe(prompt=..., cfg_scale=1.5, tea_cache_l1_thresh=0.3, ...)`) are thin
adapters that build one; `pipe.generate(request, ...)` takes one directly.

    request = GenerationRequest(prompt="a person is dancing", cfg_scale=1.5, seed=0, height=832, width=480)
    frames = pipe.generate(request, UniAnimateInputs(image, dwpose_data, random_ref_dwpose))
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields, replace
from typing import Any, Dict, Optional, Sequence, Tuple

# The LightX2V Wan2.1 step-distill settings (their configs/distill/*.json): 4 steps on the shifted 1000-step grid,
# shift 5, cfg 1 (the LoRA distils guidance too), and their re-noising sampler.
FAST_PRESET = dict(denoising_step_list=(1000, 750, 500, 250), sigma_shift=5.0, cfg_scale=1.0, sampler="renoise")
PRESETS = ("default", "fast")
# LoRA file names that announce a step-distillation LoRA (LightX2V, Lightning, CausVid, "4step" exports).
STEP_DISTILL_NAME = re.compile(r"distill|lightx2v|lightning|causvid|4[-_]?steps?|cfg[-_]step", re.IGNORECASE)
# The standard Wan2.1 negative prompt, verbatim (the UniAnimate scripts use it).
WAN_NEGATIVE_PROMPT = (
    "细节模糊不清，字幕，作品，画作，画面，静止，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，"
    "画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，杂乱的背景，三条腿，背景人很多，倒着走"
)
# What the UniAnimate scripts run (the upstream README's call): guidance 1.5, 50 steps, shift 5.
UNIANIMATE_CFG_SCALE = 1.5
UNIANIMATE_STEPS = 50


@dataclass(frozen=True)
class GenerationRequest:
    """One generation's prompt, size, schedule, guidance, step cache and decode settings (defaults: Wan2.1's)."""

    prompt: str = ""
    negative_prompt: str = ""
    seed: Optional[int] = None
    rand_device: str = "cpu"               # where the seeded noise is drawn (CPU: the same video on any GPU)
    height: Optional[int] = None           # None: the pipeline's rule (480x832, or the reference's aspect for I2V)
    width: Optional[int] = None
    num_frames: int = 81
    cfg_scale: float = 5.0                 # 1.0 skips the negative branch
    num_inference_steps: int = 50
    sigma_shift: float = 5.0
    denoising_strength: float = 1.0        # < 1: video-to-video, starting part-way
    denoising_step_list: Optional[Tuple[int, ...]] = None   # an explicit step-distill schedule
    sampler: str = "euler"                 # "euler" or "renoise"
    step_cache: Any = None                 # a TeaCacheConfig / MagCacheConfig, or None
    cfg_batch: Optional[bool] = None       # both CFG branches as one batch: True, False, or None (when memory allows)
    tiled: bool = True
    tile_size: Tuple[int, int] = (30, 52)
    tile_stride: Tuple[int, int] = (15, 26)
    preset: Optional[str] = None           # "fast": FAST_PRESET (needs a step-distillation LoRA)

    @classmethod
    def from_call(cls, tea_cache_l1_thresh: Optional[float] = None, tea_cache_model_id: str = "",
                  **arguments) -> "GenerationRequest":
        """From an upstream-style keyword call: TeaCache's two arguments become `step_cache`."""
        if tea_cache_l1_thresh is not None:
            if arguments.get("step_cache") is not None:
                raise ValueError("pass step_cache= or tea_cache_l1_thresh=, not both")
            from ..acceleration.teacache import TeaCacheConfig  # noqa: PLC0415
            arguments["step_cache"] = TeaCacheConfig(tea_cache_l1_thresh, tea_cache_model_id)
        if arguments.get("denoising_step_list") is not None:
            arguments["denoising_step_list"] = tuple(arguments["denoising_step_list"])
        return cls(**arguments)

    def resolved(self, step_distilled: bool) -> "GenerationRequest":
        """The request with its preset applied. "fast" needs a step-distillation LoRA (see `FAST_PRESET`): it is
        refused without one instead of producing a blurry video."""
        if self.preset in (None, "default"):
            return self
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}; got {self.preset!r}")
        if not step_distilled:
            raise ValueError(
                "preset='fast' needs a step-distillation LoRA (4 steps, cfg 1), e.g. LightX2V's "
                "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors, merged with "
                "model_manager.load_lora_v2 before from_model_manager(). None of the loaded LoRAs is named like one "
                f"({STEP_DISTILL_NAME.pattern}). If the DiT is distilled another way, set pipe.step_distilled = True.")
        return replace(self, **FAST_PRESET, num_inference_steps=len(FAST_PRESET["denoising_step_list"]),
                       preset=None)

    def latent_shape(self) -> Tuple[int, int, int, int, int]:
        return (1, 16, (self.num_frames - 1) // 4 + 1, self.height // 8, self.width // 8)

    def check(self) -> None:
        """The checks every pipeline shares; each error names the argument and the fix."""
        for name, text in (("prompt", self.prompt), ("negative_prompt", self.negative_prompt)):
            if not isinstance(text, str):
                raise ValueError(f"{name} must be a string (use \"\" for none); got {type(text).__name__}")
        for name, value in (("height", self.height), ("width", self.width), ("num_frames", self.num_frames)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name} must be a positive integer; got {value!r}")
        if not isinstance(self.cfg_scale, (int, float)) or not math.isfinite(self.cfg_scale):
            raise ValueError(f"cfg_scale must be a finite number (1.5 in the UniAnimate scripts); got "
                             f"{self.cfg_scale!r}")
        if not isinstance(self.num_inference_steps, int) or self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1; got {self.num_inference_steps!r}")
        if not (isinstance(self.denoising_strength, (int, float)) and 0 < self.denoising_strength <= 1):
            raise ValueError(f"denoising_strength must be in (0, 1]; got {self.denoising_strength!r}")


REQUEST_FIELDS = frozenset(f.name for f in fields(GenerationRequest)) | {"tea_cache_l1_thresh", "tea_cache_model_id"}


def split_call(arguments: Dict[str, Any]) -> Tuple[GenerationRequest, Dict[str, Any]]:
    """An upstream keyword call -> (its `GenerationRequest`, the other arguments: images, progress, windows)."""
    request = GenerationRequest.from_call(**{k: v for k, v in arguments.items() if k in REQUEST_FIELDS})
    return request, {k: v for k, v in arguments.items() if k not in REQUEST_FIELDS}


def detect_step_distilled(lora_files: Sequence) -> bool:
    """True when a merged LoRA's file name (not its folder) announces step distillation (`STEP_DISTILL_NAME`)."""
    return any(STEP_DISTILL_NAME.search(os.path.basename(os.fspath(f))) for f in lora_files)


__all__ = ["GenerationRequest", "WAN_NEGATIVE_PROMPT", "split_call", "detect_step_distilled", "FAST_PRESET", "PRESETS",
           "STEP_DISTILL_NAME", "UNIANIMATE_CFG_SCALE", "UNIANIMATE_STEPS"]
