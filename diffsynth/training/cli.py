"""Command line of `examples/unianimate_wan/train_unianimate_wan.py` (upstream flag names; docs/training.md).

    python examples/unianimate_wan/train_unianimate_wan.py --task train --dataset_path data/training_video_pose \
        --dit_path "$WAN/diffusion_pytorch_model-00001-of-00007.safetensors,..." \
        --output_path ./models --lora_rank 64 --lora_alpha 64 --learning_rate 1e-4 --max_epochs 10 \
        --use_gradient_checkpointing --use_gradient_checkpointing_offload

The T5, VAE and CLIP files default to the files beside the DiT shards (the release's or the shipped demo model's;
`--dit_path demo` is the demo model). `--resume` continues from the newest resumable checkpoint under
`--output_path`; `--task data_process` encodes the data once for `--cached_dataset_path` training.

This file runs the tasks; the flags are parser.py's, the model files model_files.py's, the Trainer's callbacks and
logger run_setup.py's, the resume checks resume_checks.py's.
"""
from __future__ import annotations

import argparse
import logging
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

# The pieces of the command line, importable from here as they always were.
from .model_files import (ENCODER_FLAGS, check_model_paths, load_model_configs, release_folder, resolve_dit_path,
                          resolve_encoder_paths)
from .parser import STRATEGIES, build_parser, parse_args
from .resume_checks import find_resume_path, resumable
from .run_setup import EpochSetter, SaveSettings, build_logger, describe_length, resolve_max_epochs

logger = logging.getLogger(__name__)


def weight_dtype(precision: str) -> torch.dtype:
    """DiT / frozen-encoder weights follow the precision: bf16 for bf16 runs (as upstream), fp32 otherwise."""
    precision = str(precision)
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return torch.float32


def resolve_strategy(name: str):
    """Lightning strategy; DeepSpeed is imported only when asked for, and refused without CUDA."""
    if name.startswith("deepspeed"):
        if not torch.cuda.is_available():
            raise SystemExit(f"--training_strategy {name} needs CUDA GPUs and none is available here: use "
                             "--training_strategy auto (one device, CPU included) or ddp (several processes)")
        try:
            import deepspeed  # noqa: F401, PLC0415
        except ImportError as error:
            raise SystemExit(f"--training_strategy {name} needs DeepSpeed, which is not installed: "
                             f"pip install deepspeed ({error})") from error
    return name


def build_trainer(args, stop=None):
    import lightning.pytorch as pl  # noqa: PLC0415
    from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: PLC0415

    from .resume import LOSS_FILE, LossLog, ResumeCheckpoint  # noqa: PLC0415

    callbacks = [ModelCheckpoint(save_top_k=-1, every_n_train_steps=args.save_every_n_steps, save_last=True),
                 EpochSetter(), LossLog(Path(args.output_path) / LOSS_FILE), SaveSettings(vars(args))]
    if resumable(args):
        callbacks.append(ResumeCheckpoint(args.save_every_n_steps, args.keep_resume_checkpoints, stop))
    else:
        logger.warning("--training_strategy %s: resumable checkpoints are not written (DeepSpeed shards the "
                       "optimizer); the release checkpoints are", args.training_strategy)
    return pl.Trainer(
        max_epochs=resolve_max_epochs(args), max_steps=args.max_steps,
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=args.devices, num_nodes=args.num_nodes,
        precision=args.precision, strategy=resolve_strategy(args.training_strategy),
        default_root_dir=args.output_path, accumulate_grad_batches=args.accumulate_grad_batches,
        callbacks=callbacks, logger=build_logger(args), log_every_n_steps=1,
        use_distributed_sampler=False,          # the EpochSampler splits the data between processes itself
    )


def build_dataset(args):
    if args.cached_dataset_path:
        from .cache import CachedDataset  # noqa: PLC0415

        dataset = CachedDataset(args.cached_dataset_path)       # CacheError names a bad file (main: one line)
        s = dataset.settings
        logger.info("training from the cache %s: %d items per epoch, %d frames at %dx%d, %d cached epoch(s)",
                    args.cached_dataset_path, len(dataset), s["num_frames"], s["height"], s["width"],
                    dataset.manifest["epochs"])
        return dataset
    if not args.dataset_path:
        raise SystemExit("--dataset_path (or --cached_dataset_path) is required")
    from .dataset import UniAnimateDataset  # noqa: PLC0415

    paths = [p.strip() for p in args.dataset_path.split(",") if p.strip()]
    try:
        return UniAnimateDataset(paths, num_frames=args.num_frames, height=args.height, width=args.width,
                                 frame_interval=args.frame_interval, samples_per_epoch=args.steps_per_epoch,
                                 seed=args.seed)
    except (FileNotFoundError, ValueError) as error:       # no samples, a missing folder, a bad size: one line
        raise SystemExit(f"--dataset_path: {error}") from error


def build_module(args, configs=None):
    """The LightningModule; without encoders when training from --cached_dataset_path."""
    from ..loading.formats import ConfigError  # noqa: PLC0415
    from .module import UniAnimateTrainingModule  # noqa: PLC0415

    if not args.dit_path:
        raise SystemExit("--dit_path is required for training")
    if args.cached_dataset_path:
        encoders = (None, None, None)
    else:
        resolve_encoder_paths(args)
        encoders = (args.text_encoder_path, args.vae_path, args.image_encoder_path)
    check_model_paths(args)
    configs = [*(configs or []), *load_model_configs(args.model_config)] or None
    try:
        return UniAnimateTrainingModule(
            args.dit_path, *encoders,
            tokenizer_path=args.tokenizer_path, torch_dtype=weight_dtype(args.precision),
            learning_rate=args.learning_rate, train_architecture=args.train_architecture, lora_rank=args.lora_rank,
            lora_alpha=args.lora_alpha, lora_target_modules=args.lora_target_modules,
            init_lora_weights=args.init_lora_weights,
            pretrained_lora_path=None if getattr(args, "resume_path", None) else args.pretrained_lora_path,
            use_gradient_checkpointing=args.use_gradient_checkpointing,
            use_gradient_checkpointing_offload=args.use_gradient_checkpointing_offload,
            num_persistent_param_in_dit=args.num_persistent_param_in_dit, tiled=args.tiled,
            tile_size=(args.tile_size_height, args.tile_size_width),
            tile_stride=(args.tile_stride_height, args.tile_stride_width),
            pose_dropout=args.pose_dropout, reference_dropout=args.reference_dropout, configs=configs, progress=True)
    except FileNotFoundError as error:          # e.g. no tokenizer beside the T5 file: one line, no traceback
        raise SystemExit(str(error)) from error
    except ConfigError as error:
        raise SystemExit(f"{error}\nOn the command line, give that config with --model_config FILE.json, e.g. "
                         '{"image_encoder": {"image_size": 224, "patch_size": 14, "dim": 1280, "mlp_dim": 5120, '
                         '"num_heads": 16, "num_layers": 32}}') from error


# ------------------------------------------------------------------------------------------------ tasks
def train(args, configs=None):
    """Build the data, module and Trainer from parsed arguments and fit. `configs`: model configs for
    checkpoints whose shapes do not determine them (tiny test models; the CLI has --model_config). Returns the
    Trainer; `trainer.stopped_by_signal` is the signal number when SIGINT/SIGTERM stopped it."""
    import lightning.pytorch as pl  # noqa: PLC0415
    from lightning.pytorch.utilities.exceptions import SIGTERMException  # noqa: PLC0415

    from .resume import StopRequest, make_loader  # noqa: PLC0415

    if args.seed is not None:
        pl.seed_everything(args.seed, workers=True)
    resolve_strategy(args.training_strategy)   # DeepSpeed without CUDA or not installed: one line, before anything
    dataset = build_dataset(args)              # names an empty folder, a bad sample or cache file, before the models
    args.resume_path = find_resume_path(args, dataset)
    stop = StopRequest()
    trainer = build_trainer(args, stop)        # fails fast on a missing DeepSpeed/SwanLab, before loading models
    describe_length(args, len(dataset), trainer.world_size)
    module = build_module(args, configs)
    loader = make_loader(dataset, args.seed, args.dataloader_num_workers)
    with stop, warnings.catch_warnings():
        # A resumed run writes into a new version folder; Lightning warns that the old one is not reused.
        warnings.filterwarnings("ignore", message="The dirpath has changed")
        # The frozen encoders stay in eval mode on purpose (no dropout; nothing of theirs trains).
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        try:
            trainer.fit(module, loader, ckpt_path=str(args.resume_path) if args.resume_path else None,
                        weights_only=True)
        except SIGTERMException:               # Lightning's own reaction to SIGTERM, after our checkpoint
            if stop.signum is None:
                raise
    trainer.stopped_by_signal = stop.signum
    return trainer


def data_process(args, configs=None):
    """`--task data_process`: encode the dataset once into --cached_dataset_path (see cache.py)."""
    import lightning.pytorch as pl  # noqa: PLC0415

    from .cache import encode_dataset  # noqa: PLC0415
    from .module import FrozenEncoders  # noqa: PLC0415

    if not args.cached_dataset_path:
        raise SystemExit("--task data_process needs --cached_dataset_path, the folder to write")
    if args.seed is not None:
        pl.seed_everything(args.seed)
    dataset = build_dataset(argparse.Namespace(**{**vars(args), "cached_dataset_path": None}))
    resolve_encoder_paths(args)
    dtype = weight_dtype(args.precision)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    configs = [*(configs or []), *load_model_configs(args.model_config)] or None
    encoders = FrozenEncoders.load(
        args.text_encoder_path, args.vae_path, args.image_encoder_path, tokenizer_path=args.tokenizer_path,
        torch_dtype=dtype, configs=configs, progress=True, tiled=args.tiled,
        tile_size=(args.tile_size_height, args.tile_size_width),
        tile_stride=(args.tile_stride_height, args.tile_stride_width)).to(device)
    settings = {
        "dataset_path": args.dataset_path, "num_frames": args.num_frames, "height": args.height, "width": args.width,
        "frame_interval": args.frame_interval, "steps_per_epoch": args.steps_per_epoch, "seed": args.seed,
        "tiled": args.tiled, "tile_size": [args.tile_size_height, args.tile_size_width],
        "tile_stride": [args.tile_stride_height, args.tile_stride_width], "dtype": str(dtype).replace("torch.", ""),
        "text_encoder_path": args.text_encoder_path, "vae_path": args.vae_path,
        "image_encoder_path": args.image_encoder_path,
    }
    return encode_dataset(dataset, encoders, args.cached_dataset_path, settings, epochs=args.cache_epochs,
                          device=device)


def user_errors() -> tuple:
    """Errors that come from the inputs (files, data, flags), reported by `main` in one line without a traceback."""
    from .cache import CacheError  # noqa: PLC0415
    from .dataset import SampleError  # noqa: PLC0415
    from .module import TrainingError  # noqa: PLC0415
    from .resume import NonFiniteError  # noqa: PLC0415

    return TrainingError, SampleError, CacheError, NonFiniteError


def one_line(error: BaseException) -> str:
    """The message of `error` on one line. An error re-raised from a DataLoader worker carries the worker's
    traceback in its message: only its last line (the error itself) is kept."""
    text = str(error).strip()
    if "Original Traceback" in text:
        text = text.splitlines()[-1]                           # "package.module.SampleError: message"
        head, sep, rest = text.partition(": ")
        if sep and head.split(".")[-1] == type(error).__name__:
            text = rest
    return " ".join(text.split())


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    try:
        if args.task == "data_process":
            data_process(args)
            return
        trainer = train(args)
    except user_errors() as error:
        raise SystemExit(f"error: {one_line(error)}") from None
    if trainer.stopped_by_signal:
        logger.warning("stopped by signal %d at step %d; continue with --resume", trainer.stopped_by_signal,
                       trainer.global_step)
        sys.exit(128 + int(trainer.stopped_by_signal))
    say_where_the_weights_are(trainer)


def say_where_the_weights_are(trainer) -> None:
    """The last release-format checkpoint and how to use it, once, at the end of a finished run."""
    from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: PLC0415

    last = next((c.last_model_path for c in trainer.callbacks if isinstance(c, ModelCheckpoint) and c.last_model_path),
                None)
    if last and trainer.is_global_zero:
        logger.info("trained weights: %s (animate with `python -m diffsynth animate --lora %s`, or "
                    "ModelManager.load_lora_v2 it in place of the UniAnimate checkpoint)", last, last)


__all__ = ["build_parser", "parse_args", "build_trainer", "build_dataset", "build_module", "train", "data_process",
           "main", "weight_dtype", "resolve_strategy", "resolve_dit_path", "resolve_encoder_paths", "load_model_configs",
           "find_resume_path", "EpochSetter", "SaveSettings", "resolve_max_epochs", "check_model_paths",
           "describe_length", "user_errors", "one_line", "STRATEGIES", "ENCODER_FLAGS", "release_folder", "resumable",
           "build_logger"]
