"""Loading the pipeline `animate` runs: the released checkpoints (with a `--vram` tier) or the tiny models.

Always a `WanUniAnimateLongVideoPipeline`: it is a `WanUniAnimateVideoPipeline` too, so one set of loaded models
serves both lengths (`generate` calls the short pipeline's algorithm for clips of up to 81 frames).
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import torch

from .settings import VRAM_TIERS, AnimateSettings

logger = logging.getLogger(__name__)

WAN_FOLDER = "Wan2.1-I2V-14B-720P"
UNIANIMATE_FILE = "UniAnimate-Wan2.1-14B-Lora-12000.ckpt"


def parse_lora(spec: str) -> Tuple[str, float]:
    """"path" or "path:strength" -> (path, strength)."""
    path, sep, strength = str(spec).rpartition(":")
    if sep and path and not os.path.exists(spec):
        try:
            return path, float(strength)
        except ValueError:
            pass
    return str(spec), 1.0


def tiny_checkpoints(folder: str, trained: bool = True):
    """The `TinyCheckpoints` that `--models tiny` loads: the shipped demo model (trained on synthetic mannequin
    clips at 64x48, `diffsynth/assets/demo_model/`), or with `trained=False` seeded random tiny models written in
    the released layouts into `folder`. The one place that decides which tiny weights `--models tiny` uses."""
    if trained:
        from ..demo_model import demo_checkpoints  # noqa: PLC0415

        return demo_checkpoints()
    from ..tiny import build_tiny_models, save_tiny_checkpoints  # noqa: PLC0415

    models = build_tiny_models(os.path.join(folder, "tokenizer"), seed=0)
    return save_tiny_checkpoints(models, os.path.join(folder, "checkpoints"), seed=0)


def load_tiny_pipeline(device: str = "cpu", torch_dtype: torch.dtype = torch.float32, loras=(), checkpoints=None):
    """The tiny models read back through `ModelManager` exactly as the release is, as a long-video pipeline."""
    from ..loading import ModelManager  # noqa: PLC0415
    from ..pipelines import WanUniAnimateLongVideoPipeline  # noqa: PLC0415
    from ..tiny import TINY_CLIP, TINY_T5  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="diffsynth-tiny-") as folder:
        files = checkpoints or tiny_checkpoints(folder)
        manager = ModelManager(device="cpu", progress=False)
        manager.load_models([files.image_encoder], torch_dtype=torch.float32, config=TINY_CLIP)
        manager.load_models([files.dit_shards, files.text_encoder, files.vae], torch_dtype=torch_dtype,
                            config=TINY_T5)   # the VAE width is read from its shapes
        manager.load_lora_v2(files.unianimate, lora_alpha=1.0)
        for path, strength in map(parse_lora, loras):
            manager.load_lora_v2(path, lora_alpha=strength)
        return WanUniAnimateLongVideoPipeline.from_model_manager(manager, torch_dtype=torch_dtype, device=device)


def default_device() -> str:
    """This process's GPU (torchrun: LOCAL_RANK), else the CPU."""
    from ..inference import prepare_processes  # noqa: PLC0415

    _, device = prepare_processes()
    return str(device)


def load_pipeline(settings: AnimateSettings, device: Optional[str] = None):
    """The pipeline for `settings`: `--models tiny` on the CPU, or the release in `settings.models`
    (`Wan2.1-I2V-14B-720P/` and `UniAnimate-Wan2.1-14B-Lora-12000.ckpt`) with the `--vram` tier applied on a GPU."""
    from ..inference import load_unianimate_pipeline, prepare_processes  # noqa: PLC0415

    parallel, process_device = prepare_processes(settings.ulysses_size, settings.cfg_parallel, settings.ring_size)
    device = device or settings.device or str(process_device)
    if settings.tiny:
        pipe = load_tiny_pipeline("cpu" if settings.device is None else device, loras=settings.loras)
        if parallel is not None:
            pipe.enable_parallel(parallel)
        return pipe

    tier = VRAM_TIERS[settings.vram]
    on_gpu = torch.device(device).type == "cuda"
    if not on_gpu and settings.vram != "all":
        logger.warning("--vram %s applies to GPUs; running on %s with everything in memory", settings.vram, device)
    stream = on_gpu and tier.resident_dit_params is not None
    pipe = load_unianimate_pipeline(
        str(Path(settings.models) / WAN_FOLDER), str(Path(settings.models) / UNIANIMATE_FILE), device=device,
        long_video=True, vram_management=stream, num_persistent_param_in_dit=tier.resident_dit_params,
        dit_dtype=torch.float8_e4m3fn if (on_gpu and tier.fp8) else None,
        extra_loras=[parse_lora(spec) for spec in settings.loras])
    if parallel is not None:
        pipe.enable_parallel(parallel)
    return pipe


def step_cache(settings: AnimateSettings):
    """The TeaCache / MagCache config of `settings` (calibrated for the 720P I2V model the release is), or None."""
    from ..acceleration.block_cache import MagCacheConfig, TeaCacheConfig  # noqa: PLC0415

    if settings.teacache is not None:
        return TeaCacheConfig(float(settings.teacache), "Wan2.1-I2V-14B-720P")
    if settings.magcache is not None:
        return MagCacheConfig(threshold=float(settings.magcache), model_id="Wan2.1-I2V-14B-720P")
    return None


__all__ = ["load_pipeline", "load_tiny_pipeline", "tiny_checkpoints", "step_cache", "parse_lora", "default_device",
           "WAN_FOLDER", "UNIANIMATE_FILE"]
