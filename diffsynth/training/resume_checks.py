"""Checks before a run resumes: the checkpoint to continue from, refused with the settings' names when it was written
by another training setup, before any model is loaded (the module checks the tensors again when it loads them)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from .errors import TrainingError

logger = logging.getLogger(__name__)


def resumable(args) -> bool:
    """Whether this strategy writes resumable checkpoints (DeepSpeed shards the optimizer: it does not)."""
    return not args.training_strategy.startswith("deepspeed")


def check_resume_settings(stored: Optional[dict], current: dict, source: str) -> None:
    """Raise when a resumable checkpoint was written by another training setup (architecture, rank, alpha,
    targets): continuing it with this one would silently train something else."""
    if not isinstance(stored, dict):
        raise TrainingError(f"{source} is not a resumable checkpoint of this trainer")
    diffs = [f"{k}: checkpoint {stored.get(k)!r}, now {v!r}" for k, v in current.items() if stored.get(k) != v]
    if diffs:
        raise TrainingError(f"{source} was written by another training setup ({'; '.join(diffs)}); pass the same "
                            "flags to resume it")


def find_resume_path(args, dataset=None) -> Optional[Path]:
    """The checkpoint to continue from (--resume_from_checkpoint, or the newest one under --output_path with
    --resume), checked against the current flags (and the number of items per epoch of `dataset`) before any model
    is loaded. Settings that cannot change (LoRA rank, alpha, targets, architecture; the items per epoch) are
    refused with their names; a changed --learning_rate is applied (module.on_train_start)."""
    from .resume import RESUME_KEY, latest_resume_checkpoint, loader_state, read_resume_checkpoint  # noqa: PLC0415

    if args.resume and args.resume_from_checkpoint:
        raise SystemExit("pass --resume or --resume_from_checkpoint, not both")
    if args.resume_from_checkpoint:
        path = Path(args.resume_from_checkpoint)
        if not path.is_file():
            raise SystemExit(f"--resume_from_checkpoint not found: {path}")
    elif args.resume:
        path = latest_resume_checkpoint(args.output_path)
        if path is None:
            logger.info("--resume: no resumable checkpoint under %s yet; starting from scratch", args.output_path)
            return None
    else:
        return None
    if not resumable(args):
        raise SystemExit(f"resuming is not supported with --training_strategy {args.training_strategy}")
    try:
        checkpoint = read_resume_checkpoint(path)
    except ValueError as error:
        raise SystemExit(str(error)) from error
    targets = [t.strip() for t in args.lora_target_modules.split(",") if t.strip()]
    check_resume_settings(checkpoint[RESUME_KEY], {
        "train_architecture": args.train_architecture, "lora_rank": args.lora_rank,
        "lora_alpha": float(args.lora_alpha), "lora_target_modules": targets}, str(path))
    stored = loader_state(checkpoint)
    if dataset is not None and stored is not None and int(stored["length"]) != len(dataset):
        raise TrainingError(f"{path} was written for {int(stored['length'])} items per epoch, the dataset now has "
                            f"{len(dataset)} (--dataset_path or --steps_per_epoch changed): the data order cannot be "
                            f"continued. Pass --steps_per_epoch {int(stored['length'])}, or start a new run in "
                            "another --output_path")
    groups = [g for o in checkpoint.get("optimizer_states", []) for g in o.get("param_groups", [])]
    old_lr = {float(g["lr"]) for g in groups if "lr" in g}
    if old_lr and old_lr != {float(args.learning_rate)}:
        logger.warning("--learning_rate %g is applied; the checkpoint was trained with %s", args.learning_rate,
                       ", ".join(f"{v:g}" for v in sorted(old_lr)))
    logger.info("resuming from %s (epoch %s, step %s)", path, checkpoint.get("epoch"), checkpoint.get("global_step"))
    if args.pretrained_lora_path:
        logger.info("--pretrained_lora_path is ignored when resuming: the checkpoint holds the weights")
    return path


__all__ = ["resumable", "check_resume_settings", "find_resume_path"]
