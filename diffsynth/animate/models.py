"""Loading the pipeline `animate` runs: the released checkpoints (with a `--vram` tier) or the tiny models.

One UniAnimate pipeline serves both lengths: `animate.generate.generate_frames` runs the whole clip at once, or the
long-video window schedule for longer pose videos. Release file names come from `loading/release.py`.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import torch

from ..loading.release import (DWPOSE_FILES, STEP_CACHE_MODEL_ID, TOKENIZER_FOLDER, UNIANIMATE_FILE, WAN_I2V_FILES,
                               WAN_I2V_FOLDER, missing_dit_shards)
from .settings import VRAM_TIERS, AnimateSettings, parse_lora

logger = logging.getLogger(__name__)

def load_tiny_pipeline(device: str = "cpu", torch_dtype: torch.dtype = torch.float32, loras=(), checkpoints=None,
                       trained: bool = True, stack_loras: bool = False):
    """The tiny models as a long-video pipeline, read through the release's loaders (`from_pretrained`): the shipped
    demo model (trained on synthetic mannequin clips at 64x48, `diffsynth/assets/demo_model/`), the given
    `checkpoints` (`diffsynth.tiny.TinyCheckpoints`), or with `trained=False` seeded random tiny models. The one
    place that decides which tiny weights `--models tiny` uses. A UniAnimate LoRA in `loras` replaces the shipped
    one unless `stack_loras`."""
    from ..loading.release import ModelFiles, describe_loaded, load_model_files  # noqa: PLC0415
    from ..pipelines import WanUniAnimateLongVideoPipeline  # noqa: PLC0415

    lora_list = [parse_lora(spec) for spec in loras]
    if checkpoints is None and trained:
        return WanUniAnimateLongVideoPipeline.from_pretrained("demo", torch_dtype=torch_dtype, device=device,
                                                              loras=lora_list, progress=False,
                                                              stack_loras=stack_loras)
    with tempfile.TemporaryDirectory(prefix="diffsynth-tiny-") as folder:
        if checkpoints is None:
            from ..tiny import build_tiny_models, save_tiny_checkpoints  # noqa: PLC0415

            checkpoints = save_tiny_checkpoints(build_tiny_models(os.path.join(folder, "tokenizer"), seed=0),
                                                os.path.join(folder, "checkpoints"), seed=0)
        files = ModelFiles(list(checkpoints.dit_shards), checkpoints.text_encoder, checkpoints.vae,
                           checkpoints.image_encoder, checkpoints.unianimate)
        notes = [files.add_lora(path, strength, stack=stack_loras) for path, strength in lora_list]
        manager = load_model_files(files, torch_dtype, progress=False)
        pipe = WanUniAnimateLongVideoPipeline.from_model_manager(manager, torch_dtype=torch_dtype, device=device)
        pipe.loaded = ["models: tiny random", *notes, *describe_loaded(manager)]
        return pipe


def default_device() -> str:
    """This process's GPU (torchrun: LOCAL_RANK), else the CPU."""
    from ..distributed.state import prepare_processes  # noqa: PLC0415

    _, device = prepare_processes()
    return str(device)


def load_pipeline(settings: AnimateSettings, device: Optional[str] = None):
    """The pipeline for `settings`: `--models tiny` on the CPU, or the release in `settings.models`
    (`Wan2.1-I2V-14B-720P/` and `UniAnimate-Wan2.1-14B-Lora-12000.ckpt`) with the `--vram` tier applied on a GPU."""
    from ..distributed.state import prepare_processes  # noqa: PLC0415
    from ..pipelines import WanUniAnimateLongVideoPipeline  # noqa: PLC0415

    parallel, process_device = prepare_processes(settings.ulysses_size, settings.cfg_parallel, settings.ring_size)
    device = device or settings.device or str(process_device)
    if settings.tiny:
        pipe = load_tiny_pipeline("cpu" if settings.device is None else device, loras=settings.loras,
                                  stack_loras=settings.stack_loras)
        if parallel is not None:
            pipe.enable_parallel(parallel)
        return pipe

    tier = VRAM_TIERS[settings.vram]
    on_gpu = torch.device(device).type == "cuda"
    if not on_gpu and settings.vram != "all":
        logger.warning("--vram %s applies to GPUs; running on %s with everything in memory", settings.vram, device)
    stream = on_gpu and tier.resident_dit_params is not None
    pipe = WanUniAnimateLongVideoPipeline.from_pretrained(
        settings.models, torch_dtype=torch.bfloat16, device=device,
        loras=[parse_lora(spec) for spec in settings.loras], stack_loras=settings.stack_loras,
        dit_dtype=torch.float8_e4m3fn if (on_gpu and tier.fp8) else None)
    if stream:
        pipe.enable_vram_management(num_persistent_param_in_dit=tier.resident_dit_params)
    if parallel is not None:
        pipe.enable_parallel(parallel)
    return pipe


WAN_FILES = (*WAN_I2V_FILES.values(), TOKENIZER_FOLDER + "/")    # besides the DiT shards


def missing_checkpoints(settings: AnimateSettings, generate: bool = True) -> list:
    """The release files `settings` needs and its models folder lacks, as paths relative to it (the pose models as
    given): the pose models (dwpose backend), and for a generation with the release the Wan2.1 folder and the
    UniAnimate checkpoint."""
    missing = []
    if settings.pose_backend == "dwpose":
        missing += [path for path in settings.pose_model_paths() if not Path(path).is_file()]
    if generate and not settings.tiny:
        folder = Path(settings.models)
        wan_dir = folder / WAN_I2V_FOLDER
        for name in WAN_FILES:
            path = wan_dir / name
            if not (path.is_dir() if name.endswith("/") else path.is_file()):
                missing.append(str(path))
        missing += [str(wan_dir / name) for name in missing_dit_shards(wan_dir)]
        if not (folder / UNIANIMATE_FILE).is_file():
            missing.append(str(folder / UNIANIMATE_FILE))
    return missing


def check_checkpoints(settings: AnimateSettings, generate: bool = True) -> None:
    """FileNotFoundError naming the missing release files (see `missing_checkpoints`) and the command that
    downloads them; run before any pose extraction or model loading."""
    missing = missing_checkpoints(settings, generate)
    if not missing:
        return
    folder = "checkpoints" if settings.tiny else settings.models
    pose_only = all(Path(m).name in DWPOSE_FILES for m in missing)
    shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
    command = f"python -m diffsynth download{' --only dwpose' if pose_only else ''} --dir {folder}"
    alternative = ("or give --det-model / --pose-model" if pose_only else
                   "or try the tiny demo model with --models tiny")
    raise FileNotFoundError(f"missing release file{'s' if len(missing) > 1 else ''} {shown}: download with "
                            f"`{command}`, {alternative}")


def step_cache(settings: AnimateSettings):
    """The TeaCache / MagCache config of `settings` (calibrated for the 720P I2V model the release is), or None."""
    from ..acceleration import MagCacheConfig, TeaCacheConfig  # noqa: PLC0415

    if settings.teacache is not None:
        return TeaCacheConfig(float(settings.teacache), STEP_CACHE_MODEL_ID)
    if settings.magcache is not None:
        return MagCacheConfig(threshold=float(settings.magcache), model_id=STEP_CACHE_MODEL_ID)
    return None


__all__ = ["missing_checkpoints", "check_checkpoints", "load_pipeline", "load_tiny_pipeline", "step_cache",
           "parse_lora", "default_device"]
