"""The UniAnimate pose guider a LoRA file carries: its tensors under the `PoseGuider` names, and the pose-guider file
that `python -m diffsynth.convert_lora` writes beside a converted LoRA (`X.pose_guider.safetensors`)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple, Union

import torch

from .files import PathSpec, resolve_paths
from .lora_formats import POSE_MARKERS

# `X.safetensors` converted by `python -m diffsynth.convert_lora` keeps its pose guider in `X.pose_guider.safetensors`.
POSE_SIDECAR_SUFFIX = ".pose_guider.safetensors"


def pose_guider_state_dict(collected: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Pose tensors under any prefix (`dwpose_embedding.0.weight`, `pipe.dwpose_embedding...`, ...) -> the
    `PoseGuider` names (everything before the marker dropped)."""
    out = {}
    for key, value in collected.items():
        starts = [key.find(m) for m in POSE_MARKERS if m in key]
        if starts:
            out[key[min(starts):]] = value
    return out


def is_pose_sidecar(path: Union[str, Path]) -> bool:
    return str(path).endswith(POSE_SIDECAR_SUFFIX)


def pose_sidecar_path(path: Union[str, Path]) -> Path:
    """`X.safetensors` (or `X.ckpt`, ...) -> `X.pose_guider.safetensors`, beside it."""
    path = Path(path)
    return path.with_name((path.name[: -len(path.suffix)] if path.suffix else path.name) + POSE_SIDECAR_SUFFIX)


def with_pose_sidecars(spec: PathSpec) -> Tuple[PathSpec, List[Path]]:
    """`spec` plus the pose-guider files that sit beside its files (`X.pose_guider.safetensors` next to
    `X.safetensors`) and are not part of it already; returns (spec to read, sidecars added)."""
    paths = resolve_paths(spec)
    present = {p.resolve() for p in paths}
    added = []
    for p in paths:
        sidecar = pose_sidecar_path(p)
        if not is_pose_sidecar(p) and sidecar.is_file() and sidecar.resolve() not in present:
            added.append(sidecar)
            present.add(sidecar.resolve())
    return (paths + added, added) if added else (spec, [])


__all__ = ["POSE_SIDECAR_SUFFIX", "pose_guider_state_dict", "is_pose_sidecar", "pose_sidecar_path",
           "with_pose_sidecars"]
