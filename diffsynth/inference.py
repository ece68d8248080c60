"""What the example inference scripts do, as functions: load the release, pick pose frames, generate, save.

    pipe = load_unianimate_pipeline("checkpoints/Wan2.1-I2V-14B-720P", "checkpoints/UniAnimate-Wan2.1-14B-Lora-12000.ckpt")
    animate_item(pipe, "data/images/ref.jpg", "data/saved_pose/ref", "outputs/ref.mp4", height=832, width=480)

Differences from the upstream scripts: the 81-frame window of a longer pose video is chosen with a seeded RNG
(upstream: unseeded `random.randint`) by the rule training uses too (`diffsynth.data.pose_folder.select_frames`),
pose frames are ordered numerically (upstream sorts names as text, which breaks at 10000 frames), the reference
image is decoded once, and missing files raise errors naming the path.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Type

import torch
from tqdm import tqdm

from .data.image_file import read_image_rgb
from .acceleration.teacache import TeaCacheConfig
from .animate.generate import generate_frames, panels
from .data.pose_folder import read_pose_clip
from .data.safe_write import check_output_file
from .data.video import save_video
from .distributed.state import prepare_processes
from .loading.release import STEP_CACHE_MODEL_ID, dit_shards, find_model_files, load_model_files
from .pipelines import WanUniAnimateLongVideoPipeline, WanUniAnimateVideoPipeline
from .pipelines.request import UNIANIMATE_CFG_SCALE, UNIANIMATE_STEPS, WAN_NEGATIVE_PROMPT, GenerationRequest
from .pipelines.windows import WindowSettings

logger = logging.getLogger(__name__)

def load_unianimate_pipeline(wan_dir: str, lora_path: Optional[str], device: str = "cuda",
                             torch_dtype: torch.dtype = torch.bfloat16, long_video: bool = False,
                             cpu_offload: bool = False, vram_management: bool = False,
                             num_persistent_param_in_dit: Optional[float] = None,
                             dit_dtype: Optional[torch.dtype] = None,
                             extra_loras: Sequence = ()) -> WanUniAnimateVideoPipeline:
    """Load the Wan2.1-I2V-14B-720P release in `wan_dir` (CLIP in fp32, the rest in `torch_dtype`) and the
    UniAnimate checkpoint `lora_path`; `wan_dir="demo"` loads the shipped tiny demo model instead (its own LoRA
    unless `lora_path` is given), which runs on a CPU.

    Memory options (docs/memory.md): `cpu_offload` moves whole models; `vram_management` streams the DiT layers past
    `num_persistent_param_in_dit` resident parameters (None: all resident, 0: all stream; the upstream scripts use
    6e9), and umT5/CLIP; `dit_dtype=torch.float8_e4m3fn` stores the DiT's Linear weights in fp8 (compute stays in
    `torch_dtype`).

    `extra_loras`: more LoRA files (or `(path, strength)` pairs) merged after the UniAnimate one, e.g. a step-
    distillation LoRA for `preset="fast"` (recognised by its file name, see `GenerationRequest.resolved`).
    """
    files = find_model_files(wan_dir, unianimate=lora_path)
    for extra in extra_loras:
        path, strength = extra if isinstance(extra, (tuple, list)) else (extra, 1.0)
        if not Path(path).is_file():
            raise FileNotFoundError(f"LoRA not found at {path}: check the path in the script's settings")
        files.loras.append((str(path), strength))
    model_manager = load_model_files(files, torch_dtype, dit_dtype)
    cls: Type[WanUniAnimateVideoPipeline] = WanUniAnimateLongVideoPipeline if long_video else WanUniAnimateVideoPipeline
    pipe = cls.from_model_manager(model_manager, torch_dtype=torch_dtype, device=device)
    if vram_management:
        pipe.enable_vram_management(num_persistent_param_in_dit=num_persistent_param_in_dit)
    elif cpu_offload:
        pipe.enable_cpu_offload()
    return pipe


def animate_item(pipe: WanUniAnimateVideoPipeline, ref_image: str, pose_dir: str, out_path: str, height: int = 832,
                 width: int = 480, max_frames: Optional[int] = 81, frame_interval: int = 1, seed: int = 0,
                 prompt: str = "a person is dancing", negative_prompt: str = WAN_NEGATIVE_PROMPT,
                 cfg_scale: float = UNIANIMATE_CFG_SCALE, num_inference_steps: int = UNIANIMATE_STEPS,
                 use_teacache: bool = False, tiled: bool = True, overwrite: bool = False,
                 context_size: int = 21, context_overlap: int = 4, **request_fields) -> str:
    """Generate one video and save [reference | pose | generated] side by side at 15 fps.

    A `WanUniAnimateLongVideoPipeline` runs the long-video window schedule (`context_size`, `context_overlap`) and
    `max_frames=None` animates every `frame_interval`-th pose frame; otherwise a seeded window of `max_frames` pose
    frames is picked (`select_frames`). `request_fields`: further `GenerationRequest` settings (e.g.
    `preset="fast"`). An existing `out_path` is refused before any generation unless `overwrite`.
    """
    check_output_file(out_path, overwrite=overwrite, inputs=[ref_image], flag="OVERWRITE = True (overwrite=True)")
    clip = read_pose_clip(pose_dir, height, width, max_frames, frame_interval, seed)
    reference = read_image_rgb(ref_image)   # upright, as the pose tool read it; a missing file is named
    long_video = isinstance(pipe, WanUniAnimateLongVideoPipeline)
    step_cache = TeaCacheConfig(0.3, STEP_CACHE_MODEL_ID) if use_teacache else None
    request = GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, seed=seed, cfg_scale=cfg_scale,
                                num_inference_steps=num_inference_steps, tiled=tiled, step_cache=step_cache,
                                **request_fields)
    # The long schedule decodes and writes chunk by chunk: memory does not grow with the number of frames.
    generated = generate_frames(pipe, reference, clip.dwpose_data, clip.random_ref_dwpose, request,
                                windows=WindowSettings(context_size, context_overlap) if long_video else None,
                                progress_bar_cmd=tqdm, output="iterator" if long_video else "pil")
    if generated is None:   # multi-GPU, not rank 0: rank 0 writes the video
        return out_path
    path = save_video(panels(reference, clip.dwpose_data, generated), out_path, fps=15, quality=5,
                      overwrite=overwrite)
    logger.info("saved %s (%s)", path, "long video" if long_video else f"{clip.dwpose_data.shape[1]} frames")
    return path


def output_name(prefix: str, ref_image: str, pose_dir: str) -> str:
    """Upstream naming: outputs/{prefix}_{reference file name}_{pose folder name}.mp4."""
    return os.path.join("outputs", f"{prefix}_{os.path.basename(ref_image)}_{os.path.basename(os.path.normpath(pose_dir))}.mp4")


def run_items(pipe, items: Sequence[Tuple[int, str, str]], prefix: str, **kwargs) -> List[str]:
    """Animate every (frame_interval, reference image, pose folder) item; one failure does not stop the others.

    Under torchrun without `pipe.enable_parallel` (item parallel) this process takes items r, r + N, ...; with it,
    every process works on every item and rank 0 writes the videos."""
    from .distributed import item_shard  # noqa: PLC0415

    if getattr(pipe, "parallel", None) is None:
        items = item_shard(items)
    done, failed = [], []
    for frame_interval, ref_image, pose_dir in items:
        try:
            done.append(animate_item(pipe, ref_image, pose_dir, output_name(prefix, ref_image, pose_dir),
                                     frame_interval=frame_interval, **kwargs))
        except (FileNotFoundError, FileExistsError, ValueError) as exc:
            logger.error("skipped %s with %s: %s", ref_image, pose_dir, exc)
            failed.append(ref_image)
    if failed:
        logger.error("%d of %d items failed", len(failed), len(items))
    return done


__all__ = ["WAN_NEGATIVE_PROMPT", "load_unianimate_pipeline", "animate_item",
           "output_name", "run_items", "dit_shards", "prepare_processes"]
