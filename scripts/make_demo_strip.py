"""Write docs/demo_strip.png (the README's first picture) from the shipped demo model: for held-out synthetic clips,
a row of driving poses, the generated frames, the ground truth and the frames generated from the next clip's
reference with these poses, with the reference image (or reference pose) on the left. By default one clip: the
one the Quickstart demo animates.

    .venv/bin/python scripts/make_demo_strip.py [--out docs/demo_strip.png]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffsynth.demo.model import HELD_OUT_SEED  # noqa: E402
from tools.demo_model.evaluate import write_strip  # noqa: E402

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="docs/demo_strip.png")
    parser.add_argument("--scale", type=int, default=2, help="nearest-neighbour upscaling of the 64x48 frames")
    parser.add_argument("--examples", type=int, default=1, help="held-out clips drawn (the README shows one)")
    parser.add_argument("--example", type=int, default=1,
                        help="first held-out clip (seed HELD_OUT_SEED + N; 1 is the Quickstart demo's clip)")
    args = parser.parse_args()
    seeds = [HELD_OUT_SEED + args.example + i for i in range(max(args.examples, 2))]
    print(write_strip(args.out, seeds=seeds, scale=args.scale, shown=args.examples))
