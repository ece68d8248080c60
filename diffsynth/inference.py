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
from typing import List, Optional, Sequence, Tuple, Type, Union

import torch
from tqdm import tqdm

from .data.image_file import read_image_rgb
from .acceleration.teacache import TeaCacheConfig
from .animate.generate import generate_frames, panels
from .data.pose_folder import read_pose_clip
from .data.safe_write import check_output_file
from .data.video import save_video
from .loading import ModelManager
from .pipelines import WanUniAnimateLongVideoPipeline, WanUniAnimateVideoPipeline
from .pipelines.request import UNIANIMATE_CFG_SCALE, UNIANIMATE_STEPS, GenerationRequest
from .pipelines.windows import WindowSettings

logger = logging.getLogger(__name__)

# The standard Wan2.1 negative prompt, verbatim (the UniAnimate scripts use it).
WAN_NEGATIVE_PROMPT = (
    "细节模糊不清，字幕，作品，画作，画面，静止，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，"
    "画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，杂乱的背景，三条腿，背景人很多，倒着走"
)
WAN_I2V_FILES = dict(
    image_encoder="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    dit=[f"diffusion_pytorch_model-0000{i}-of-00007.safetensors" for i in range(1, 8)],
    text_encoder="models_t5_umt5-xxl-enc-bf16.pth",
    vae="Wan2.1_VAE.pth",
)


DOWNLOAD_HINT = ("Download Wan-AI/Wan2.1-I2V-14B-720P and the UniAnimate files (ModelScope xiaolaowx/UniAnimate-DiT or "
                 "Hugging Face ZheWang123/UniAnimate-DiT) into checkpoints/, see README.md")


def _require(path: Union[str, Path], what: str, hint: str = "") -> str:
    if not Path(path).exists():
        raise FileNotFoundError(f"{what} not found at {path}" + (f". {hint}" if hint else ""))
    return str(path)


def dit_shards(wan_dir: str) -> List[str]:
    """The DiT shards of a release folder (`diffusion_pytorch_model-0000i-of-0000n.safetensors`, all n of them)."""
    shards = sorted(Path(wan_dir).glob("diffusion_pytorch_model-*-of-*.safetensors"))
    counts = {p.stem.rsplit("-of-", 1)[1] for p in shards}
    if not shards:
        raise FileNotFoundError(f"no DiT shards (diffusion_pytorch_model-*-of-*.safetensors) in {wan_dir}. "
                                f"{DOWNLOAD_HINT}")
    if len(counts) != 1 or len(shards) != int(counts.pop()):
        raise FileNotFoundError(f"the DiT shards in {wan_dir} are incomplete or mixed: "
                                f"{', '.join(p.name for p in shards)}. {DOWNLOAD_HINT}")
    return [str(p) for p in shards]


def load_unianimate_pipeline(wan_dir: str, lora_path: str, device: str = "cuda",
                             torch_dtype: torch.dtype = torch.bfloat16, long_video: bool = False,
                             cpu_offload: bool = False, vram_management: bool = False,
                             num_persistent_param_in_dit: Optional[float] = None,
                             dit_dtype: Optional[torch.dtype] = None,
                             extra_loras: Sequence = ()) -> WanUniAnimateVideoPipeline:
    """Load the Wan2.1-I2V-14B-720P release (CLIP in fp32, the rest in `torch_dtype`) and the UniAnimate checkpoint.

    Memory options (docs/memory.md): `cpu_offload` moves whole models; `vram_management` streams the DiT layers past
    `num_persistent_param_in_dit` resident parameters (None: all resident, 0: all stream; the upstream scripts use
    6e9), and umT5/CLIP; `dit_dtype=torch.float8_e4m3fn` stores the DiT's Linear weights in fp8 (compute stays in
    `torch_dtype`).

    `extra_loras`: more LoRA files (or `(path, strength)` pairs) merged after the UniAnimate one, e.g. a step-
    distillation LoRA for `preset="fast"` (recognised by its file name, see `GenerationRequest.resolved`).
    """
    files = {name: _require(os.path.join(wan_dir, spec), name, DOWNLOAD_HINT)
             for name, spec in WAN_I2V_FILES.items() if name != "dit"}
    model_manager = ModelManager(device="cpu")
    model_manager.load_models([files["image_encoder"]], torch_dtype=torch.float32)
    model_manager.load_models([dit_shards(wan_dir)], torch_dtype=dit_dtype or torch_dtype)
    model_manager.load_models([files["text_encoder"], files["vae"]], torch_dtype=torch_dtype)
    model_manager.load_lora_v2(_require(lora_path, "UniAnimate checkpoint", DOWNLOAD_HINT), lora_alpha=1.0)
    for extra in extra_loras:
        path, strength = extra if isinstance(extra, (tuple, list)) else (extra, 1.0)
        model_manager.load_lora_v2(_require(path, "LoRA", "check the path in the script's settings"),
                                   lora_alpha=strength)
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
    reference = read_image_rgb(_require(ref_image, "reference image"))   # upright, as the pose tool read it
    long_video = isinstance(pipe, WanUniAnimateLongVideoPipeline)
    step_cache = TeaCacheConfig(0.3, "Wan2.1-I2V-14B-720P") if use_teacache else None
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


def prepare_processes(ulysses_size: int = 1, cfg_parallel: bool = False, ring_size: int = 1):
    """The scripts' multi-GPU set-up under `torchrun --nproc_per_node=N` (docs/parallel.md); returns
    (ParallelState or None, device).

    - One process: (None, "cuda" if available else "cpu").
    - N processes with `ulysses_size` x `ring_size` x (2 if `cfg_parallel`) == N: every video is split across all
      of them (sequence and/or CFG parallel); give the state to `pipe.enable_parallel`.
    - N processes with the defaults (1, False, 1): item parallel; each process is a full pipeline on its own GPU and
      `run_items` gives it items r, r + N, ... (no process group needed).
    """
    from .distributed import ParallelConfig, env_world, init_parallel  # noqa: PLC0415
    from .distributed.state import default_device  # noqa: PLC0415

    _, world, local_rank = env_world()
    if world == 1 or (ulysses_size == 1 and ring_size == 1 and not cfg_parallel):
        return None, default_device(local_rank)
    state = init_parallel(ParallelConfig(ulysses_size=ulysses_size, ring_size=ring_size, cfg_parallel=cfg_parallel))
    return state, state.device


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
