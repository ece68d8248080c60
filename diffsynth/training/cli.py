"""Command line of `examples/unianimate_wan/train_unianimate_wan.py` (upstream flag names; docs/training.md).

    python examples/unianimate_wan/train_unianimate_wan.py --task train --dataset_path data/training_video_pose \
        --dit_path "$WAN/diffusion_pytorch_model-00001-of-00007.safetensors,..." \
        --output_path ./models --lora_rank 64 --lora_alpha 64 --learning_rate 1e-4 --max_epochs 10 \
        --use_gradient_checkpointing --use_gradient_checkpointing_offload

The T5, VAE and CLIP files default to the release files beside the DiT shards. `--resume` continues from the
newest resumable checkpoint under `--output_path`; `--task data_process` encodes the data once for
`--cached_dataset_path` training.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch
from lightning.pytorch.callbacks import Callback

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")
ENCODER_FLAGS = ("text_encoder", "vae", "image_encoder")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the UniAnimate LoRA and pose guider on Wan2.1-I2V-14B.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="train", choices=["train", "data_process"],
                   help="'train', or 'data_process': encode the dataset once with T5/VAE/CLIP into "
                        "--cached_dataset_path, for training without the encoders")
    models = p.add_argument_group("data and models")
    models.add_argument("--dataset_path", default=None,
                        help="folder of prepare_training_data.py sample folders (or upstream pickle folders); "
                             "comma-separate several folders")
    models.add_argument("--cached_dataset_path", default=None,
                        help="data_process: the folder to write the encoded items to; train: train from that folder "
                             "(T5, VAE and CLIP are not loaded)")
    models.add_argument("--cache_epochs", type=int, default=1,
                        help="data_process: encode this many epochs of random clip/crop draws (epoch e of the "
                             "training reads cached epoch e %% cache_epochs)")
    models.add_argument("--output_path", default="./", help="Lightning default_root_dir (logs and checkpoints)")
    models.add_argument("--dit_path", default=None,
                        help="DiT file, folder, or comma-separated shards; 'demo': the shipped demo model's")
    models.add_argument("--text_encoder_path", default=None, help="default: models_t5_umt5-xxl-enc-bf16.pth beside "
                        "the DiT (the google/umt5-xxl tokenizer folder must be beside it, or see --tokenizer_path)")
    models.add_argument("--tokenizer_path", default=None, help="umT5 tokenizer folder, if not beside the T5 file")
    models.add_argument("--vae_path", default=None, help="default: Wan2.1_VAE.pth beside the DiT")
    models.add_argument("--image_encoder_path", default=None,
                        help="default: models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth beside the DiT")
    models.add_argument("--model_config", default=None,
                        help="JSON file with model configs for checkpoints whose shapes do not determine them, e.g. "
                             '{"image_encoder": {"dim": 32, "num_heads": 4, ...}} (keys: dit, text_encoder, vae, '
                             "image_encoder; values: the fields of the config dataclasses in diffsynth/configs.py)")
    models.add_argument("--pretrained_lora_path", default=None,
                        help="start from a UniAnimate checkpoint: a file, or a folder with one checkpoint or the "
                             "shards of one export (weights only; --lora_rank/--lora_alpha must match)")

    data = p.add_argument_group("clips")
    data.add_argument("--num_frames", type=int, default=81, help="frames per clip (4k+1)")
    data.add_argument("--height", type=int, default=832)
    data.add_argument("--width", type=int, default=480)
    data.add_argument("--frame_interval", type=int, default=1, help="frame stride drawn from 1..frame_interval")
    data.add_argument("--steps_per_epoch", type=int, default=None,
                      help="samples per epoch (videos are cycled); default: one per video")
    data.add_argument("--dataloader_num_workers", type=int, default=1)
    data.add_argument("--tiled", action=argparse.BooleanOptionalAction, default=True, help="tiled VAE encode")
    data.add_argument("--tile_size_height", type=int, default=34)
    data.add_argument("--tile_size_width", type=int, default=34)
    data.add_argument("--tile_stride_height", type=int, default=18)
    data.add_argument("--tile_stride_width", type=int, default=16)

    train = p.add_argument_group("training")
    train.add_argument("--learning_rate", type=float, default=1e-5)
    train.add_argument("--accumulate_grad_batches", type=int, default=1)
    train.add_argument("--max_epochs", type=int, default=None,
                       help="stop after this many epochs (default: 1, or no epoch limit when --max_steps is given)")
    train.add_argument("--max_steps", type=int, default=-1,
                       help="stop after this many optimizer steps (-1: off); wins over the default --max_epochs")
    train.add_argument("--train_architecture", default="lora", choices=["lora", "full"])
    train.add_argument("--lora_rank", type=int, default=4)
    train.add_argument("--lora_alpha", type=float, default=4.0)
    train.add_argument("--lora_target_modules", default="q,k,v,o,ffn.0,ffn.2")
    train.add_argument("--init_lora_weights", default="kaiming", choices=["gaussian", "kaiming"])
    train.add_argument("--pose_dropout", type=float, default=0.05, help="probability of dropping the pose inputs")
    train.add_argument("--reference_dropout", type=float, default=0.1,
                       help="probability of dropping the CLIP tokens and the reference latent y")
    train.add_argument("--use_gradient_checkpointing", action="store_true")
    train.add_argument("--use_gradient_checkpointing_offload", action="store_true")
    train.add_argument("--num_persistent_param_in_dit", type=float, default=None,
                       help="stream the frozen DiT weights past this many resident parameters from CPU memory "
                            "(e.g. 0 or 6e9; default: all resident). Use with --use_gradient_checkpointing "
                            "and the default or a DDP strategy (not DeepSpeed stage 3 / offload)")
    train.add_argument("--seed", type=int, default=None, help="seed everything (data, noise, dropout)")

    run = p.add_argument_group("hardware and checkpoints")
    run.add_argument("--training_strategy", default="auto", choices=STRATEGIES)
    run.add_argument("--precision", default=None,
                     help="Lightning precision; default bf16-mixed on GPU (bf16 weights), 32-true on CPU (fp32)")
    run.add_argument("--devices", default="auto", help="Lightning devices (e.g. 'auto', 1, '0,1')")
    run.add_argument("--num_nodes", type=int, default=1,
                     help="machines (Lightning num_nodes; launch one process per GPU with torchrun or SLURM, "
                          "docs/parallel.md)")
    run.add_argument("--save_every_n_steps", type=int, default=100,
                     help="write a release checkpoint and a resumable one every N optimizer steps")
    run.add_argument("--keep_resume_checkpoints", type=int, default=2,
                     help="resumable checkpoints of this run to keep (the newest; 0 keeps all)")
    run.add_argument("--resume", action="store_true",
                     help="continue from the newest resumable checkpoint under --output_path (start fresh if none)")
    run.add_argument("--resume_from_checkpoint", default=None, help="continue from this resumable checkpoint")
    run.add_argument("--use_swanlab", action="store_true", help="log to SwanLab (pip install swanlab)")
    run.add_argument("--swanlab_mode", default=None, help="SwanLab mode, e.g. 'local' or 'cloud'")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.dit_path = resolve_dit_path(args.dit_path)
    if args.precision is None:
        args.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    return args


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


# ------------------------------------------------------------------------------------------------ model files
def release_folder(dit_path: Optional[str]) -> Optional[Path]:
    """The folder of the DiT (its first shard's folder, or the folder given)."""
    if not dit_path:
        return None
    first = Path(dit_path.split(",")[0].strip()).expanduser()
    return first if first.is_dir() else first.parent


def resolve_dit_path(dit_path: Optional[str]) -> Optional[str]:
    """`--dit_path demo` (`loading.release.DEMO_NAME`): the shipped demo model's DiT shards; anything else as given."""
    from ..loading.release import DEMO_NAME, demo_files  # noqa: PLC0415

    if dit_path is None or dit_path.strip() != DEMO_NAME:
        return dit_path
    try:
        return ",".join(demo_files().dit)
    except FileNotFoundError as error:
        raise SystemExit(f"--dit_path {DEMO_NAME}: {error}") from error


def resolve_encoder_paths(args) -> None:
    """Fill --text_encoder_path, --vae_path and --image_encoder_path with the files beside the DiT shards when they
    are not given: the Wan2.1 release's names (`WAN_I2V_FILES`), or the demo model's (`DEMO_FILES`, safetensors with
    their config sidecars). A missing file is an error that names it."""
    from ..loading.release import DEMO_FILES, WAN_I2V_FILES  # noqa: PLC0415

    folder = release_folder(args.dit_path)
    for name in ENCODER_FLAGS:
        flag = f"{name}_path"
        if getattr(args, flag):
            continue
        expected = WAN_I2V_FILES[name]
        if folder is None:
            raise SystemExit(f"--{flag} is needed ({expected}), or --dit_path to find it beside the DiT")
        found = [folder / layout[name] for layout in (WAN_I2V_FILES, DEMO_FILES) if (folder / layout[name]).is_file()]
        if not found:
            raise SystemExit(f"--{flag} not given and {expected} is not beside the DiT in {folder} (nor the demo "
                             f"model's {DEMO_FILES[name]}): download the Wan2.1-I2V release there or pass --{flag}")
        setattr(args, flag, str(found[0]))


def load_model_configs(path: Optional[str]) -> list:
    """`--model_config` JSON -> config dataclasses (JSON lists become tuples)."""
    if not path:
        return []
    from ..configs import ClipVisionConfig, UMT5Config, WanDiTConfig, WanVAEConfig  # noqa: PLC0415

    types = {"dit": WanDiTConfig, "text_encoder": UMT5Config, "vae": WanVAEConfig, "image_encoder": ClipVisionConfig}
    data = json.loads(Path(path).read_text())
    unknown = sorted(set(data) - set(types))
    if unknown:
        raise SystemExit(f"--model_config {path}: unknown models {unknown}; use {sorted(types)}")
    configs = []
    for name, fields in data.items():
        try:
            configs.append(types[name](**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}))
        except TypeError as error:
            raise SystemExit(f"--model_config {path}: {name}: {error}") from error
    return configs


# ------------------------------------------------------------------------------------------------ pieces
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


def resumable(args) -> bool:
    return not args.training_strategy.startswith("deepspeed")


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


def check_model_paths(args) -> None:
    """Every model file named on the command line exists, checked before the first (large) one is loaded."""
    flags = ["dit_path"] + ([] if args.cached_dataset_path else [f"{name}_path" for name in ENCODER_FLAGS])
    for flag in flags:
        for path in (p.strip() for p in str(getattr(args, flag) or "").split(",") if p.strip()):
            if not Path(path).expanduser().exists():
                raise SystemExit(f"--{flag}: {path} not found")


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


# ------------------------------------------------------------------------------------------------ resume
def find_resume_path(args, dataset=None) -> Optional[Path]:
    """The checkpoint to continue from (--resume_from_checkpoint, or the newest one under --output_path with
    --resume), checked against the current flags (and the number of items per epoch of `dataset`) before any model
    is loaded. Settings that cannot change (LoRA rank, alpha, targets, architecture; the items per epoch) are
    refused with their names; a changed --learning_rate is applied (module.on_train_start)."""
    from .module import check_resume_settings  # noqa: PLC0415
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
        from .module import TrainingError  # noqa: PLC0415

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


__all__ = ["build_parser", "parse_args", "build_trainer", "build_dataset", "build_module", "train", "data_process",
           "main", "weight_dtype", "resolve_strategy", "resolve_dit_path", "resolve_encoder_paths", "load_model_configs",
           "find_resume_path", "EpochSetter", "SaveSettings", "resolve_max_epochs", "check_model_paths",
           "describe_length", "user_errors", "one_line"]
