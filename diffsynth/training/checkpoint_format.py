"""The trainer's checkpoint files. A release checkpoint holds exactly the trainable tensors, as a flat
`{name: tensor}` dict (no optimizer state), plus `network_alpha` (a 0-dim fp32 tensor, the training `lora_alpha`) for
LoRA training: what `ModelManager.load_lora_v2` and upstream read. A resumable checkpoint (resume.py) is Lightning's
full checkpoint whose `state_dict` holds the same trainable tensors and `RESUME_KEY` the training settings. Neither
is ever written with NaN/Inf values."""
from __future__ import annotations

from typing import Dict

import torch

from ..loading.lora import pose_guider_state_dict
from .errors import NonFiniteError, TrainingError, find_nonfinite
from .resume import RESUME_KEY
from .resume_checks import check_resume_settings

ALPHA_KEY = "network_alpha"       # the training lora_alpha in release checkpoints (0-dim fp32; no 'lora' in the name)


def release_state_dict(module) -> Dict[str, torch.Tensor]:
    """`module`'s release checkpoint: the trainable tensors, plus `network_alpha` for a LoRA (upstream's loader only
    reads keys with 'lora' or a pose marker in them, so it ignores it)."""
    state = module.trainable_state_dict()
    if module.train_architecture == "lora":
        state[ALPHA_KEY] = torch.tensor(float(module.lora_alpha), dtype=torch.float32)
    return state


def prepare_checkpoint(module, checkpoint: dict) -> None:
    """`module.on_save_checkpoint`. Release files: replace Lightning's checkpoint by the flat release dict (readable
    by `load_lora_v2` and upstream). Resumable files: keep Lightning's checkpoint, with only the trainable tensors as
    state_dict. Raises before anything is written when a tensor is NaN/Inf."""
    if module.saving_resumable:
        checkpoint["state_dict"] = module.trainable_state_dict()
        checkpoint[RESUME_KEY] = module.training_settings()
        checked = {"state_dict": checkpoint["state_dict"], "optimizer_states": checkpoint.get("optimizer_states")}
    else:
        checkpoint.clear()
        checkpoint.update(module.release_state_dict())
        checked = checkpoint
    bad = find_nonfinite(checked)          # raised before anything is written: no checkpoint of NaN weights
    if bad:
        raise NonFiniteError(f"step {module.global_step}: NaN/Inf in {', '.join(bad)}; no checkpoint written")


def check_resumed_checkpoint(module, checkpoint: dict) -> None:
    """`module.on_load_checkpoint` (resuming): the checkpoint must come from the same training setup and hold every
    trainable tensor; a pose guider of another width is rebuilt at the checkpoint's."""
    check_resume_settings(checkpoint.get(RESUME_KEY), module.training_settings(), "the checkpoint")
    state = checkpoint.get("state_dict", {})
    bad = find_nonfinite({"state_dict": state, "optimizer_states": checkpoint.get("optimizer_states", [])})
    if bad:
        raise NonFiniteError(f"the resumable checkpoint holds NaN/Inf in {', '.join(bad)}: resume from an "
                             "earlier one")
    # A run started from a --pretrained_lora_path guider of another width (that flag is ignored when resuming):
    # rebuild it at the checkpoint's width before Lightning loads the weights and the optimizer.
    module.fit_pose_guider(pose_guider_state_dict(state), "the resumable checkpoint")
    expected = set(module.trainable_state_dict())
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise TrainingError(f"the resumable checkpoint does not fit this model: {len(missing)} trainable tensors "
                            f"missing (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")


__all__ = ["ALPHA_KEY", "release_state_dict", "prepare_checkpoint", "check_resumed_checkpoint"]
