"""Train the UniAnimate LoRA + pose guider on Wan2.1-I2V-14B (commands for 1 GPU and DeepSpeed in docs/training.md):

    python examples/unianimate_wan/train_unianimate_wan.py --help
    python examples/unianimate_wan/train_unianimate_wan.py --task train --dataset_path DATA --dit_path SHARDS \
        --output_path ./models --resume          # continue after a crash, Ctrl-C or preemption

All logic lives in `diffsynth.training`; this script only runs its command line.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from diffsynth.training.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
