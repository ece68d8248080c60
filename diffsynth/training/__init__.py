"""LoRA + pose-guider training for UniAnimate on Wan2.1 (upstream spec section 7; see docs/training.md).

`UniAnimateDataset` (dataset.py) reads prepare_training_data.py samples; `UniAnimateTrainingModule` (module.py) is
the LightningModule; resume.py makes runs resumable; cache.py is `--task data_process`; `cli.main` is the
`train_unianimate_wan.py` command line. The module and CLI import Lightning
and PEFT, so they are loaded on first use rather than with the package.
"""
from __future__ import annotations

from .dataset import SampleError, UniAnimateDataset, find_sample_folders, random_crop_box, select_frames

_LAZY = {
    "UniAnimateTrainingModule": "module", "TrainingError": "module", "add_lora": "module", "FrozenEncoders": "module",
    "build_trainer": "cli", "main": "cli", "parse_args": "cli",
    "CachedDataset": "cache", "encode_dataset": "cache",
    "EpochSampler": "resume", "ResumeCheckpoint": "resume", "latest_resume_checkpoint": "resume",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib  # noqa: PLC0415

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["UniAnimateDataset", "SampleError", "find_sample_folders", "select_frames", "random_crop_box",
           *_LAZY]
