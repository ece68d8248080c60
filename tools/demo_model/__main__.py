"""`python -m tools.demo_model`: train the tiny demo model (CPU) and write its files (scripts/train_demo_model.sh)."""
from __future__ import annotations

import argparse
import json
import logging


from diffsynth.demo.model import ASSET_DIR, BYSTANDER_EVERY
from .train import train


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Train the tiny demo model (CPU) and write its files.")
    parser.add_argument("--work_dir", default="outputs/demo_model_training")
    parser.add_argument("--out_dir", default=str(ASSET_DIR))
    parser.add_argument("--num_clips", type=int, default=1000)
    parser.add_argument("--vae_steps", type=int, default=2000)
    parser.add_argument("--full_steps", type=int, default=5000)
    parser.add_argument("--lora_steps", type=int, default=150)
    parser.add_argument("--full_lr", type=float, default=4e-4)
    parser.add_argument("--full_accumulate", type=int, default=4,
                        help="clips per optimizer step of the full stage (trainer --accumulate_grad_batches)")
    parser.add_argument("--vae_from", default=None,
                        help="use this trained demo VAE (safetensors) instead of training one, e.g. the shipped "
                             "diffsynth/assets/demo_model/Wan2.1_VAE.safetensors")
    parser.add_argument("--vae_init", default=None,
                        help="fine-tune this demo VAE (safetensors) for --vae_steps instead of training a new one")
    parser.add_argument("--vae_lr", type=float, default=3e-3)
    parser.add_argument("--cache_epochs", type=int, default=2,
                        help="encode this many random clip/reference draws per clip (trainer --cache_epochs)")
    parser.add_argument("--bystander_every", type=int, default=BYSTANDER_EVERY,
                        help="every Nth training clip has a second, still figure (0: none)")
    parser.add_argument("--init_from", default=None,
                        help="fine-tune the DiT and pose guider of this demo model folder (e.g. a copy of the "
                             "shipped one) instead of training them from scratch; its VAE is reused")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.vae_from and args.vae_init:
        parser.error("--vae_from (use this VAE as is) and --vae_init (fine-tune it) exclude each other")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    record = train(args.work_dir, args.out_dir, num_clips=args.num_clips, vae_steps=args.vae_steps,
                   full_steps=args.full_steps, lora_steps=args.lora_steps, full_lr=args.full_lr,
                   cache_epochs=args.cache_epochs, vae_from=args.vae_from, seed=args.seed,
                   full_accumulate=args.full_accumulate, vae_init=args.vae_init, vae_lr=args.vae_lr,
                   bystander_every=args.bystander_every, init_from=args.init_from)
    print(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
