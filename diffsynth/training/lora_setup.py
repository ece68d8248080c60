"""The trainable LoRA: injected into the DiT (`add_lora`), or started from a UniAnimate checkpoint
(`load_pretrained_weights`, the files of `--pretrained_lora_path`)."""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import List, Sequence, Union

import numpy as np
import torch
import torch.nn as nn

from ..loading.files import WEIGHT_SUFFIXES, Checkpoint, CheckpointError, describe
from ..loading.lora import is_pose_key, pose_guider_state_dict, read_training_lora, strip_lora_prefix
from .encoders import PathSpec, split_paths
from .errors import TrainingError

logger = logging.getLogger(__name__)

DEFAULT_LORA_TARGETS = ("q", "k", "v", "o", "ffn.0", "ffn.2")
# DeepSpeed's zero_to_fp32 (--safe_serialization) and transformers-style shard names: model-00001-of-00003.safetensors
SHARD_NAME = re.compile(r"(?P<stem>.+)-(?P<index>\d{5})-of-(?P<total>\d{5})\.(?P<ext>safetensors|bin)")


def add_lora(dit: nn.Module, rank: int, alpha: float, target_modules: Union[str, Sequence[str]] = DEFAULT_LORA_TARGETS,
             init_lora_weights: str = "kaiming") -> nn.Module:
    """Inject a PEFT LoRA (adapter "default") into `dit` in place and upcast its parameters to fp32.

    Targets match by name suffix: "q" hits `self_attn.q` and `cross_attn.q` but not `cross_attn.k_img`.
    """
    from peft import LoraConfig, inject_adapter_in_model  # noqa: PLC0415

    if isinstance(target_modules, str):
        target_modules = [t.strip() for t in target_modules.split(",") if t.strip()]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(target_modules),
                        init_lora_weights=True if init_lora_weights == "kaiming" else "gaussian")
    inject_adapter_in_model(config, dit)
    adapted = 0
    for name, param in dit.named_parameters():
        if ".lora_" in name:
            param.data = param.data.float()
            param.requires_grad_(True)
            adapted += 1
        else:
            param.requires_grad_(False)
    if not adapted:
        raise TrainingError(f"no DiT layer matches --lora_target_modules {list(target_modules)}")
    return dit


def load_pretrained_weights(module, path: PathSpec) -> None:
    """Load a UniAnimate checkpoint into `module`'s LoRA (or its whole DiT) and pose guider, strictly.

    `path`: a file; shards (a list or comma-separated); or a folder holding exactly one checkpoint file or the
    complete shards of one export (`<name>-0000i-of-0000n.safetensors|bin`). Errors: several other checkpoint
    files in the folder (ambiguous), missing shards, a file without LoRA tensors (e.g. the base DiT), missing
    LoRA tensors of the configured targets, another rank, a missing or incomplete pose guider, and a stored
    alpha other than `lora_alpha`. A LoRA may be in any layout `load_lora_v2` reads (diffsynth/PEFT, ComfyUI,
    diffusers, kohya: the table in `loading/lora_formats.py`); a pose-guider file beside it is read too.
    """
    paths = resolve_pretrained_files(split_paths(path))
    source = describe(path)
    full = module.train_architecture == "full"
    if full:
        with Checkpoint(paths) as ckpt:
            keys = list(ckpt.infos)
            # Read only what can be used: a DeepSpeed export also holds the frozen DiT, T5 and VAE (tens of GB).
            wanted = [k for k in keys if is_pose_key(k) or k.startswith("pipe.dit.")]
            state = dict(ckpt.iter_tensors(wanted, dtype=torch.float32))
        pose = pose_guider_state_dict({k: v for k, v in state.items() if is_pose_key(k)})
        dit_state = {strip_lora_prefix(k): v for k, v in state.items() if not is_pose_key(k)}
        looks_like_base = any(k.endswith("self_attn.q.weight") and ".lora_" not in k for k in keys)
    else:
        # Any LoRA layout of the loaders' table (diffsynth/PEFT, ComfyUI, diffusers, kohya), with the pose-guider
        # file beside it; only LoRA, alpha and pose tensors are read.
        try:
            read = read_training_lora(paths, [name for name, _ in module.dit.named_modules()], source)
        except CheckpointError as error:
            raise TrainingError(str(error)) from error
        for alpha, where in read.alphas.items():
            if not np.isclose(alpha, float(module.lora_alpha), rtol=1e-6):
                raise TrainingError(f"{source} was trained with lora_alpha {alpha:g} (its {where}) but "
                                    f"--lora_alpha is {module.lora_alpha:g}: the LoRA would act "
                                    f"{module.lora_alpha / alpha:g} times as strongly. Pass --lora_alpha "
                                    f"{alpha:g} to continue from it")
        pose, dit_state, looks_like_base = read.pose, read.state, read.looks_like_base
    own = module.dit.state_dict()
    expected = sorted(name for name, p in module.dit.named_parameters() if p.requires_grad)
    unknown = sorted(k for k in dit_state if k not in own)
    if unknown:
        raise TrainingError(f"{source}: {len(unknown)} tensors fit no DiT parameter (e.g. {unknown[:3]}); "
                            "was it trained with other --lora_target_modules or another model?")
    if not dit_state:
        raise TrainingError(
            f"{source} holds no {'DiT weights (pipe.dit.*)' if full else 'LoRA tensors (*.lora_A/B.*)'}"
            + (": it looks like base model weights, not a UniAnimate checkpoint" if looks_like_base else "")
            + f". Expected {len(expected)} tensors such as {expected[0]}")
    missing = [k for k in expected if k not in dit_state]
    if missing:
        raise TrainingError(f"{source} misses {len(missing)} of the {len(expected)} trainable DiT tensors of "
                            f"--lora_target_modules {','.join(module.lora_target_modules)} (e.g. {missing[:4]}). "
                            "Was it trained with other targets, or is a shard missing?")
    bad = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in dit_state.items() if v.shape != own[k].shape]
    if bad:
        key, got, want = bad[0]
        if ".lora_A." in key or ".lora_B." in key:
            rank = got[0] if ".lora_A." in key else got[1]
            raise TrainingError(f"{source} holds a rank-{rank} LoRA but --lora_rank is {module.lora_rank}: "
                                f"pass --lora_rank {rank} (and its --lora_alpha) to continue from it")
        raise TrainingError(f"{source}: {key} has shape {got}, the DiT expects {want}")
    module.fit_pose_guider(pose, source)
    own_pose = module.pose_guider.state_dict()
    missing_pose = sorted(k for k in own_pose if k not in pose)
    if missing_pose:
        raise TrainingError(f"{source} misses {len(missing_pose)} of the {len(own_pose)} pose-guider tensors "
                            f"(e.g. {missing_pose[:3]}): a UniAnimate checkpoint holds dwpose_embedding.* and "
                            "randomref_embedding_pose.*")
    module.dit.load_state_dict(dit_state, strict=False)
    module.pose_guider.load_state_dict(pose, strict=True)
    logger.info("loaded %d DiT tensors and %d pose-guider tensors from %s", len(dit_state), len(pose), source)


def resolve_pretrained_files(spec: PathSpec) -> List[Path]:
    """The files of a `--pretrained_lora_path`: a file; a list of files (shards, as given); or a folder holding one
    checkpoint file, or only the complete shards of one export (`<stem>-0000i-of-0000n.safetensors|bin`)."""
    if not isinstance(spec, (str, os.PathLike)):
        return [Path(p) for p in spec]
    path = Path(spec).expanduser()
    if not path.is_dir():
        if not path.exists():
            raise FileNotFoundError(f"--pretrained_lora_path not found: {path}")
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
    if not files:
        if (path / "zero_to_fp32.py").is_file() or (path / "checkpoint").is_dir():
            raise TrainingError(f"{path} is a DeepSpeed ZeRO checkpoint folder: convert it first with "
                                "`python zero_to_fp32.py . OUT --safe_serialization` (docs/training.md) and pass OUT")
        raise TrainingError(f"{path} holds no checkpoint file ({', '.join(WEIGHT_SUFFIXES)})")
    if len(files) == 1:
        return files
    shards = [SHARD_NAME.fullmatch(p.name) for p in files]
    groups = {(m["stem"], m["total"], m["ext"]) for m in shards if m}
    if all(shards) and len(groups) == 1:
        total = int(next(iter(groups))[1])
        present = {int(m["index"]) for m in shards}
        missing = sorted(set(range(1, total + 1)) - present)
        if missing:
            raise TrainingError(f"{path} holds shards of a {total}-file export but shard(s) {missing} are missing")
        return files
    names = ", ".join(p.name for p in files[:8]) + (f", ... ({len(files)} files)" if len(files) > 8 else "")
    raise TrainingError(f"{path} holds several checkpoint files ({names}), which would be merged into one: pass the "
                        "one file to start from (a folder is accepted when it holds one checkpoint, or only the "
                        "shards <name>-0000i-of-0000n of one export)")


__all__ = ["add_lora", "load_pretrained_weights", "resolve_pretrained_files", "DEFAULT_LORA_TARGETS", "SHARD_NAME"]
