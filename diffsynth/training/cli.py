"""Command line of `examples/unianimate_wan/train_unianimate_wan.py` (upstream flag names; docs/training.md).

    python examples/unianimate_wan/train_unianimate_wan.py --task train --dataset_path data/training_video_pose \
        --dit_path "$WAN/diffusion_pytorch_model-00001-of-00007.safetensors,..." \
        --text_encoder_path "$WAN/models_t5_umt5-xxl-enc-bf16.pth" --vae_path "$WAN/Wan2.1_VAE.pth" \
        --image_encoder_path "$WAN/models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth" \
        --output_path ./models --lora_rank 64 --lora_alpha 64 --learning_rate 1e-4 --max_epochs 10 \
        --use_gradient_checkpointing --use_gradient_checkpointing_offload
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

import torch
from lightning.pytorch.callbacks import Callback

logger = logging.getLogger(__name__)

STRATEGIES = ("auto", "ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the UniAnimate LoRA and pose guider on Wan2.1-I2V-14B.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="train", choices=["train"],
                   help="only 'train' (upstream's 'data_process' pre-encoding path is not needed: encoding runs "
                        "inside the training step)")
    models = p.add_argument_group("data and models")
    models.add_argument("--dataset_path", required=True,
                        help="folder of prepare_training_data.py sample folders (or upstream pickle folders); "
                             "comma-separate several folders")
    models.add_argument("--output_path", default="./", help="Lightning default_root_dir (logs and checkpoints)")
    models.add_argument("--dit_path", required=True, help="DiT file, folder, or comma-separated shards")
    models.add_argument("--text_encoder_path", required=True, help="models_t5_umt5-xxl-enc-bf16.pth "
                        "(the google/umt5-xxl tokenizer folder must be beside it, or see --tokenizer_path)")
    models.add_argument("--tokenizer_path", default=None, help="umT5 tokenizer folder, if not beside the T5 file")
    models.add_argument("--vae_path", required=True, help="Wan2.1_VAE.pth")
    models.add_argument("--image_encoder_path", required=True,
                        help="models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth")
    models.add_argument("--pretrained_lora_path", default=None,
                        help="start from a UniAnimate checkpoint (weights only; --lora_rank must match)")

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
    train.add_argument("--max_epochs", type=int, default=1)
    train.add_argument("--max_steps", type=int, default=-1, help="stop after this many optimizer steps (-1: off)")
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
    train.add_argument("--seed", type=int, default=None, help="seed everything (data, noise, dropout)")

    run = p.add_argument_group("hardware and checkpoints")
    run.add_argument("--training_strategy", default="auto", choices=STRATEGIES)
    run.add_argument("--precision", default=None,
                     help="Lightning precision; default bf16-mixed on GPU (bf16 weights), 32-true on CPU (fp32)")
    run.add_argument("--devices", default="auto", help="Lightning devices (e.g. 'auto', 1, '0,1')")
    run.add_argument("--save_every_n_steps", type=int, default=100, help="checkpoint every N optimizer steps")
    run.add_argument("--use_swanlab", action="store_true", help="log to SwanLab (pip install swanlab)")
    run.add_argument("--swanlab_mode", default=None, help="SwanLab mode, e.g. 'local' or 'cloud'")
    return p


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
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
    """Lightning strategy; DeepSpeed is imported only when asked for."""
    if name.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401, PLC0415
        except ImportError as error:
            raise SystemExit(f"--training_strategy {name} needs DeepSpeed, which is not installed: "
                             f"pip install deepspeed ({error})") from error
    return name


def build_logger(args):
    if not args.use_swanlab:
        return True            # Lightning's default logger under output_path/lightning_logs
    try:
        from swanlab.integration.pytorch_lightning import SwanLabLogger  # noqa: PLC0415
    except ImportError as error:
        raise SystemExit(f"--use_swanlab needs SwanLab: pip install swanlab ({error})") from error
    return SwanLabLogger(project="wan", name="wan", config=vars(args), mode=args.swanlab_mode,
                         logdir=os.path.join(args.output_path, "swanlog"))


def build_trainer(args):
    import lightning.pytorch as pl  # noqa: PLC0415
    from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: PLC0415

    return pl.Trainer(
        max_epochs=args.max_epochs, max_steps=args.max_steps,
        accelerator="gpu" if torch.cuda.is_available() else "cpu", devices=args.devices,
        precision=args.precision, strategy=resolve_strategy(args.training_strategy),
        default_root_dir=args.output_path, accumulate_grad_batches=args.accumulate_grad_batches,
        callbacks=[ModelCheckpoint(save_top_k=-1, every_n_train_steps=args.save_every_n_steps, save_last=True),
                   EpochSetter()],
        logger=build_logger(args),
    )


class EpochSetter(Callback):
    """Tells a seeded dataset the epoch, so each epoch draws other clips and crops."""

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        loader = trainer.train_dataloader
        dataset = getattr(loader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(trainer.current_epoch)


def build_dataset(args):
    from .dataset import UniAnimateDataset  # noqa: PLC0415

    paths = [p.strip() for p in args.dataset_path.split(",") if p.strip()]
    return UniAnimateDataset(paths, num_frames=args.num_frames, height=args.height, width=args.width,
                             frame_interval=args.frame_interval, samples_per_epoch=args.steps_per_epoch,
                             seed=args.seed)


def build_module(args, configs=None):
    from .module import UniAnimateTrainingModule  # noqa: PLC0415

    return UniAnimateTrainingModule(
        args.dit_path, args.text_encoder_path, args.vae_path, args.image_encoder_path,
        tokenizer_path=args.tokenizer_path, torch_dtype=weight_dtype(args.precision),
        learning_rate=args.learning_rate, train_architecture=args.train_architecture, lora_rank=args.lora_rank,
        lora_alpha=args.lora_alpha, lora_target_modules=args.lora_target_modules,
        init_lora_weights=args.init_lora_weights, pretrained_lora_path=args.pretrained_lora_path,
        use_gradient_checkpointing=args.use_gradient_checkpointing,
        use_gradient_checkpointing_offload=args.use_gradient_checkpointing_offload, tiled=args.tiled,
        tile_size=(args.tile_size_height, args.tile_size_width),
        tile_stride=(args.tile_stride_height, args.tile_stride_width),
        pose_dropout=args.pose_dropout, reference_dropout=args.reference_dropout, configs=configs, progress=True)


def train(args, configs=None):
    """Build the data, module and Trainer from parsed arguments and fit. `configs`: model configs for
    checkpoints whose shapes do not determine them (tiny test models). Returns the Trainer."""
    import lightning.pytorch as pl  # noqa: PLC0415
    from torch.utils.data import DataLoader  # noqa: PLC0415

    if args.seed is not None:
        pl.seed_everything(args.seed, workers=True)
    dataset = build_dataset(args)
    trainer = build_trainer(args)              # fails fast on a missing DeepSpeed/SwanLab, before loading models
    module = build_module(args, configs)
    loader = DataLoader(dataset, batch_size=1, shuffle=True, num_workers=args.dataloader_num_workers,
                        persistent_workers=False)
    trainer.fit(module, loader)
    return trainer


def main(argv: Optional[Sequence[str]] = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    train(parse_args(argv))


__all__ = ["build_parser", "parse_args", "build_trainer", "build_dataset", "build_module", "train", "main",
           "weight_dtype", "resolve_strategy", "EpochSetter"]
