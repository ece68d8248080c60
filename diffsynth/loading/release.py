"""The released files in one place: their names and folders, the dtype each model runs in, and finding and loading
them (the release, or the shipped demo model) into a `ModelManager`. The downloader, the loaders, the up-front
checks, the trainer and `from_pretrained` all read this table.

    checkpoints/                                      (the default models folder)
        Wan2.1-I2V-14B-720P/                          WAN_I2V_FOLDER: 7 DiT shards, umT5 (+ google/umt5-xxl/),
                                                      the VAE and CLIP
        UniAnimate-Wan2.1-14B-Lora-12000.ckpt         UNIANIMATE_FILE: the LoRA and the pose guider
        yolox_l.onnx, dw-ll_ucoco_384.onnx            DWPOSE_FILES
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch

from ..configs import DEMO_HEIGHT, DEMO_INFERENCE, DEMO_WIDTH

WAN_I2V_FOLDER = "Wan2.1-I2V-14B-720P"
WAN_I2V_FILES = dict(
    image_encoder="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    text_encoder="models_t5_umt5-xxl-enc-bf16.pth",
    vae="Wan2.1_VAE.pth",
)
TOKENIZER_FOLDER = "google/umt5-xxl"
DIT_SHARD_GLOB = "diffusion_pytorch_model-*-of-*.safetensors"
UNIANIMATE_FILE = "UniAnimate-Wan2.1-14B-Lora-12000.ckpt"
DWPOSE_FILES = ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
# The step-cache tables calibrated for the model the release is.
STEP_CACHE_MODEL_ID = "Wan2.1-I2V-14B-720P"

DEMO_NAME = "demo"
DEMO_FOLDER = Path(__file__).resolve().parents[1] / "assets" / "demo_model"
DEMO_FILES = dict(
    dit=["diffusion_pytorch_model-00001-of-00002.safetensors", "diffusion_pytorch_model-00002-of-00002.safetensors"],
    text_encoder="models_t5_umt5-xxl-enc.safetensors",
    vae="Wan2.1_VAE.safetensors",
    image_encoder="models_clip_open-clip-xlm-roberta-large-vit-huge-14.safetensors",
    unianimate="UniAnimate-Wan2.1-demo-lora.safetensors",
)

# The dtype each model runs in: a fixed one, or None for the pipeline's dtype (bf16 on a GPU). CLIP runs in fp32 as
# upstream loads it; the pose guider's small CNNs run in fp32 and their output is cast to the DiT dtype.
MODEL_DTYPES: Dict[str, Optional[torch.dtype]] = dict(
    image_encoder=torch.float32, pose_guider=torch.float32, text_encoder=None, vae=None, dit=None)


def model_dtype(name: str, torch_dtype: torch.dtype) -> torch.dtype:
    """The dtype model `name` ("dit", "vae", "text_encoder", "image_encoder", "pose_guider") runs in when the
    pipeline runs in `torch_dtype` (`MODEL_DTYPES`)."""
    return MODEL_DTYPES[name] or torch_dtype


DOWNLOAD_HINT = (f"fetch the release with `python -m diffsynth download` ({WAN_I2V_FOLDER}/ and {UNIANIMATE_FILE}, "
                 "~80 GB, into checkpoints/), or run the shipped demo model with `--models tiny` / "
                 "from_pretrained(\"demo\")")


@dataclass
class ModelFiles:
    """The weight files of one pipeline: the DiT (shards), umT5, VAE, CLIP, and the UniAnimate LoRA + pose guider
    (None for the plain Wan pipeline)."""

    dit: List[str]
    text_encoder: str
    vae: str
    image_encoder: str
    unianimate: Optional[str] = None
    loras: List[Tuple[str, float]] = field(default_factory=list)   # further LoRAs, merged after the UniAnimate one
    unianimate_strength: float = 1.0

    def add_lora(self, path: Union[str, os.PathLike], strength: float = 1.0, stack: bool = False) -> str:
        """Merge `path` after the UniAnimate checkpoint. A UniAnimate LoRA (one carrying the pose guider, e.g. one
        you trained) *replaces* `unianimate` (its LoRA and its pose guider) unless `stack`; returns what was done,
        as a line for the user."""
        path = str(path)
        if self.unianimate and not stack and carries_pose_guider(path):
            replaced, self.unianimate, self.unianimate_strength = self.unianimate, path, strength
            return f"{path} (strength {strength:g}) replaces the UniAnimate checkpoint {replaced}"
        self.loras.append((path, strength))
        return f"{path} (strength {strength:g}) merged after the UniAnimate checkpoint"

    def all_files(self) -> List[str]:
        return [*self.dit, self.text_encoder, self.vae, self.image_encoder, *([self.unianimate] if self.unianimate
                                                                              else []), *(p for p, _ in self.loras)]


def missing_dit_shards(wan_dir: Union[str, os.PathLike]) -> List[str]:
    """The DiT shard names a release folder lacks (all n of `diffusion_pytorch_model-0000i-of-0000n.safetensors`;
    the released 7 when there are none, or shards of several counts)."""
    wan_dir = Path(wan_dir)
    counts = {p.stem.rsplit("-of-", 1)[1] for p in wan_dir.glob(DIT_SHARD_GLOB)}
    if len(counts) != 1:
        return ["diffusion_pytorch_model-0000{1..7}-of-00007.safetensors"]
    count = counts.pop()
    expected = [f"diffusion_pytorch_model-{i:0{len(count)}d}-of-{count}.safetensors" for i in range(1, int(count) + 1)]
    return [name for name in expected if not (wan_dir / name).is_file()]


def dit_shards(wan_dir: Union[str, os.PathLike]) -> List[str]:
    """The DiT shards of a release folder (`diffusion_pytorch_model-0000i-of-0000n.safetensors`, all n of them)."""
    shards = sorted(Path(wan_dir).glob(DIT_SHARD_GLOB))
    if not shards:
        raise FileNotFoundError(f"no DiT shards ({DIT_SHARD_GLOB}) in {wan_dir}: {DOWNLOAD_HINT}")
    if missing_dit_shards(wan_dir) or len(shards) != int(shards[0].stem.rsplit("-of-", 1)[1]):
        raise FileNotFoundError(f"the DiT shards in {wan_dir} are incomplete or mixed: "
                                f"{', '.join(p.name for p in shards)}: {DOWNLOAD_HINT}")
    return [str(p) for p in shards]


def _require(path: Path, what: str) -> str:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found at {path}: {DOWNLOAD_HINT}")
    return str(path)


def release_files(folder: Union[str, os.PathLike] = "checkpoints", unianimate: Union[str, os.PathLike, None] = None,
                  with_unianimate: bool = True) -> ModelFiles:
    """The release's files in `folder`: a models folder holding `WAN_I2V_FOLDER/` and `UNIANIMATE_FILE`, or the Wan
    folder itself (then give `unianimate` unless `with_unianimate=False`). Missing files are named with the fix."""
    folder = Path(folder).expanduser()
    wan_dir = folder / WAN_I2V_FOLDER if (folder / WAN_I2V_FOLDER).is_dir() else folder
    if not wan_dir.is_dir():
        raise FileNotFoundError(f"models folder {folder} not found: {DOWNLOAD_HINT}")
    files = {name: _require(wan_dir / file, name) for name, file in WAN_I2V_FILES.items()}
    lora = None
    if with_unianimate:   # beside the Wan folder unless given
        lora = _require(Path(unianimate) if unianimate else wan_dir.parent / UNIANIMATE_FILE,
                        "the UniAnimate checkpoint")
    return ModelFiles(dit_shards(wan_dir), files["text_encoder"], files["vae"], files["image_encoder"], lora)


def demo_files(folder: Union[str, os.PathLike] = DEMO_FOLDER) -> ModelFiles:
    """The shipped demo model's files (the release layouts, all safetensors; its CLIP's configuration beside it)."""
    folder = Path(folder)
    paths = {k: [str(folder / n) for n in v] if isinstance(v, list) else str(folder / v) for k, v in DEMO_FILES.items()}
    missing = [p for v in paths.values() for p in (v if isinstance(v, list) else [v]) if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(f"demo model files missing: {missing}; retrain with bash scripts/train_demo_model.sh")
    return ModelFiles(paths["dit"], paths["text_encoder"], paths["vae"], paths["image_encoder"], paths["unianimate"])


def find_model_files(source: Union[str, os.PathLike] = "checkpoints", with_unianimate: bool = True,
                     unianimate: Union[str, os.PathLike, None] = None) -> ModelFiles:
    """`"demo"`: the shipped demo model; a folder: the release in it (`release_files`) or, when it holds the demo
    layout (`DEMO_FILES`, e.g. a retrained demo model), that. `unianimate`: the UniAnimate checkpoint to use
    instead of the one found there."""
    folder = Path(source).expanduser()
    if str(source) == DEMO_NAME or (folder.is_dir() and (folder / DEMO_FILES["text_encoder"]).is_file()):
        files = demo_files() if str(source) == DEMO_NAME else demo_files(folder)
        if not with_unianimate:
            files.unianimate = None
        elif unianimate:
            files.unianimate = _require(Path(unianimate), "the UniAnimate checkpoint")
        return files
    return release_files(folder, unianimate=unianimate, with_unianimate=with_unianimate)


def carries_pose_guider(path: Union[str, os.PathLike]) -> bool:
    """Whether a LoRA file holds UniAnimate pose-guider tensors (read from its header, or a pose file beside it)."""
    from .files import Checkpoint  # noqa: PLC0415
    from .lora import pose_sidecar_path  # noqa: PLC0415
    from .lora_formats import POSE_MARKERS  # noqa: PLC0415

    if pose_sidecar_path(path).is_file():
        return True
    checkpoint = Checkpoint(str(path))
    try:
        return any(marker in key for key in checkpoint.shapes for marker in POSE_MARKERS)
    finally:
        checkpoint.close()


def describe_loaded(manager) -> List[str]:
    """What a load merged, for the user: each LoRA with its strength, and where the pose guider came from."""
    lines = [f"LoRA merged: {merged.path} (strength {merged.strength:g})" for merged in manager.loras]
    if manager.pose_source:
        lines.append(f"pose guider from: {manager.pose_source}")
    return lines


def load_model_files(files: ModelFiles, torch_dtype: torch.dtype = torch.bfloat16,
                     dit_dtype: Optional[torch.dtype] = None, progress: bool = True):
    """A `ModelManager` holding `files`' models in their dtypes (`MODEL_DTYPES`; `dit_dtype` e.g. float8_e4m3fn
    stores the DiT's Linear weights in fp8) with the UniAnimate LoRA (and `files.loras`) merged."""
    from .manager import ModelManager  # noqa: PLC0415

    manager = ModelManager(device="cpu", progress=progress)
    manager.load_models([files.image_encoder], torch_dtype=model_dtype("image_encoder", torch_dtype))
    manager.load_models([files.dit], torch_dtype=dit_dtype or model_dtype("dit", torch_dtype))
    manager.load_models([files.text_encoder, files.vae], torch_dtype=model_dtype("vae", torch_dtype))
    if files.unianimate:
        manager.load_lora_v2(files.unianimate, lora_alpha=files.unianimate_strength)
    for path, strength in files.loras:
        manager.load_lora_v2(path, lora_alpha=strength)
    return manager


__all__ = ["WAN_I2V_FOLDER", "WAN_I2V_FILES", "TOKENIZER_FOLDER", "DIT_SHARD_GLOB", "UNIANIMATE_FILE", "DWPOSE_FILES",
           "STEP_CACHE_MODEL_ID", "DEMO_NAME", "DEMO_FOLDER", "DEMO_FILES", "DEMO_HEIGHT", "DEMO_WIDTH", "DEMO_INFERENCE", "MODEL_DTYPES",
           "model_dtype", "DOWNLOAD_HINT", "ModelFiles", "dit_shards", "missing_dit_shards", "release_files", "demo_files",
           "find_model_files", "load_model_files", "carries_pose_guider", "describe_loaded"]
