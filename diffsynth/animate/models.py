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

from .settings import VRAM_TIERS, AnimateSettings, parse_lora

logger = logging.getLogger(__name__)

WAN_FOLDER = "Wan2.1-I2V-14B-720P"
UNIANIMATE_FILE = "UniAnimate-Wan2.1-14B-Lora-12000.ckpt"


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


WAN_FILES = ("models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth", "models_t5_umt5-xxl-enc-bf16.pth",
             "Wan2.1_VAE.pth", "google/umt5-xxl/")      # besides the DiT shards (`inference.WAN_I2V_FILES`)
POSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")


def _dit_shards_missing(wan_dir: Path) -> list:
    """The DiT shards a release folder lacks (all of `diffusion_pytorch_model-0000i-of-0000n.safetensors`)."""
    shards = sorted(wan_dir.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    counts = {p.stem.rsplit("-of-", 1)[1] for p in shards}
    if not shards or len(counts) != 1:
        return ["diffusion_pytorch_model-0000{1..7}-of-00007.safetensors"]
    count = counts.pop()
    expected = [f"diffusion_pytorch_model-{i:0{len(count)}d}-of-{count}.safetensors" for i in range(1, int(count) + 1)]
    return [name for name in expected if not (wan_dir / name).is_file()]


def missing_checkpoints(settings: AnimateSettings, generate: bool = True) -> list:
    """The release files `settings` needs and its models folder lacks, as paths relative to it (the pose models as
    given): the pose models (dwpose backend), and for a generation with the release the Wan2.1 folder and the
    UniAnimate checkpoint."""
    missing = []
    if settings.pose_backend == "dwpose":
        missing += [path for path in settings.pose_model_paths() if not Path(path).is_file()]
    if generate and not settings.tiny:
        folder = Path(settings.models)
        wan_dir = folder / WAN_FOLDER
        for name in WAN_FILES:
            path = wan_dir / name
            if not (path.is_dir() if name.endswith("/") else path.is_file()):
                missing.append(str(path))
        missing += [str(wan_dir / name) for name in _dit_shards_missing(wan_dir)]
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
    pose_only = all(Path(m).name in POSE_FILES for m in missing)
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
        return TeaCacheConfig(float(settings.teacache), "Wan2.1-I2V-14B-720P")
    if settings.magcache is not None:
        return MagCacheConfig(threshold=float(settings.magcache), model_id="Wan2.1-I2V-14B-720P")
    return None


__all__ = ["missing_checkpoints", "check_checkpoints", "load_pipeline", "load_tiny_pipeline", "tiny_checkpoints",
           "step_cache", "parse_lora", "default_device",
           "WAN_FOLDER", "UNIANIMATE_FILE"]
