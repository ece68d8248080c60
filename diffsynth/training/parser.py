"""The training command line's flags (upstream's names; docs/training.md), one function per flag group."""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

import torch

from .model_files import resolve_dit_path

STRATEGIES = ("auto", "ddp", "deepspeed_stage_1", "deepspeed_stage_2", "deepspeed_stage_3")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train the UniAnimate LoRA and pose guider on Wan2.1-I2V-14B.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", default="train", choices=["train", "data_process"],
                   help="'train', or 'data_process': encode the dataset once with T5/VAE/CLIP into "
                        "--cached_dataset_path, for training without the encoders")
    for add_group in (add_model_arguments, add_clip_arguments, add_training_arguments, add_run_arguments):
        add_group(p)
    return p


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """--dataset_path, the cache, --output_path and the model files."""
    models = parser.add_argument_group("data and models")
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


def add_clip_arguments(parser: argparse.ArgumentParser) -> None:
    """The clips drawn from the data set, and the VAE tiling."""
    data = parser.add_argument_group("clips")
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


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """Optimizer, length, LoRA and dropout settings."""
    train = parser.add_argument_group("training")
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


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Devices, precision, checkpoints, resuming and logging."""
    run = parser.add_argument_group("hardware and checkpoints")
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


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.dit_path = resolve_dit_path(args.dit_path)
    if args.precision is None:
        args.precision = "bf16-mixed" if torch.cuda.is_available() else "32-true"
    return args


__all__ = ["STRATEGIES", "build_parser", "parse_args", "add_model_arguments", "add_clip_arguments",
           "add_training_arguments", "add_run_arguments"]
