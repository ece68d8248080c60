"""What the Trainer is built with besides the module: the epoch-setting and settings-writing callbacks, the logger,
and the run's length (--max_epochs / --max_steps)."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

from lightning.pytorch.callbacks import Callback

logger = logging.getLogger(__name__)


class EpochSetter(Callback):
    """Tells a seeded dataset the epoch, so each epoch draws other clips and crops."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)


class SaveSettings(Callback):
    """Writes the run's settings as `args.json` in --output_path (the latest run) and in the run's version folder."""

    def __init__(self, settings: dict):
        self.settings = settings

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        import datetime  # noqa: PLC0415

        data = {**self.settings, "start_step": trainer.global_step, "start_epoch": trainer.current_epoch,
                "started": datetime.datetime.now().isoformat(timespec="seconds")}
        folders = [Path(trainer.default_root_dir)]
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            data["checkpoint_dir"] = str(trainer.checkpoint_callback.dirpath)
            folders.append(Path(trainer.checkpoint_callback.dirpath).parent)
        from ..data.safe_write import atomic_write_text  # noqa: PLC0415

        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_text(folder / "args.json", json.dumps(data, indent=1, default=str))


def build_logger(args):
    """SwanLab when asked for; else TensorBoard when installed; else Lightning's CSV logger. All of them log under
    <output_path>/lightning_logs/version_N, where the checkpoints go too."""
    if args.use_swanlab:
        try:
            from swanlab.integration.pytorch_lightning import SwanLabLogger  # noqa: PLC0415
        except ImportError as error:
            raise SystemExit(f"--use_swanlab needs SwanLab: pip install swanlab ({error})") from error
        return SwanLabLogger(project="wan", name="wan", config=vars(args), mode=args.swanlab_mode,
                             logdir=os.path.join(args.output_path, "swanlog"))
    import importlib.util  # noqa: PLC0415

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger  # noqa: PLC0415

    if any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX")):
        return TensorBoardLogger(save_dir=args.output_path, name="lightning_logs")
    return CSVLogger(save_dir=args.output_path, name="lightning_logs")


def resolve_max_epochs(args) -> int:
    """--max_epochs as given; by default 1, or no epoch limit (-1) when --max_steps is given, so that --max_steps is
    not cut short by the default single epoch."""
    if args.max_epochs is not None:
        return args.max_epochs
    return -1 if args.max_steps is not None and args.max_steps >= 0 else 1


def describe_length(args, items_per_epoch: int, world_size: int = 1) -> str:
    """How long the run trains, stated before it starts; a --max_steps that --max_epochs cuts short is a warning."""
    per_epoch = max(math.ceil(math.ceil(items_per_epoch / max(world_size, 1)) / max(args.accumulate_grad_batches, 1)),
                    1)
    max_epochs, max_steps = resolve_max_epochs(args), args.max_steps
    epoch_steps = max_epochs * per_epoch if max_epochs >= 0 else None
    if max_steps >= 0 and epoch_steps is not None and epoch_steps < max_steps:
        logger.warning("--max_steps %d will not be reached: --max_epochs %d ends the run after %d optimizer steps "
                       "(%d per epoch); raise --max_epochs or leave it out", max_steps, max_epochs, epoch_steps,
                       per_epoch)
    limits = [n for n in (max_steps if max_steps >= 0 else None, epoch_steps) if n is not None]
    text = (f"training until optimizer step {min(limits)}" if limits else "training without a step limit") + \
        f" ({per_epoch} steps per epoch)"
    logger.info(text)
    return text


__all__ = ["EpochSetter", "SaveSettings", "build_logger", "resolve_max_epochs", "describe_length"]
