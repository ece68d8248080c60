"""Turn a folder of training videos into training samples: frames, drawn poses and meta.json per video.

    python prepare_training_data.py --video_dir data/my_videos
    # -> data/my_videos/training_video_pose/<video_stem>/{frames/000000.jpg, poses/000000.jpg, meta.json}

See docs/training_data.md for the format and the differences from the upstream script.
"""
from __future__ import annotations

import argparse
import logging
import sys

from tqdm.contrib.logging import logging_redirect_tqdm

from diffsynth.training.samples import prepare_training_data
from diffsynth.pose.backends import BACKENDS
from diffsynth.pose.onnx_runtime import DEFAULT_DET_MODEL, DEFAULT_POSE_MODEL


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video_dir", required=True, help="folder of videos (mp4/mov/avi/mkv/webm)")
    parser.add_argument("--out_dir", default=None,
                        help="where the sample folders go (default: <video_dir>/training_video_pose); not "
                             "<video_dir> itself or a folder containing it")
    parser.add_argument("--backend", choices=BACKENDS, default="dwpose",
                        help="dwpose (ONNX models below) or mediapipe (offline; requirements/pose-offline.txt)")
    parser.add_argument("--det_model", default=str(DEFAULT_DET_MODEL), help="YOLOX ONNX file (dwpose backend)")
    parser.add_argument("--pose_model", default=str(DEFAULT_POSE_MODEL), help="DWPose ONNX file (dwpose backend)")
    parser.add_argument("--max_frames", type=int, default=None,
                        help="skip (with a message) videos with more frames than this; default: no limit")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo videos whose sample folder exists, deleting first only the files listed in its "
                             ".prepare_training_data.json (what this tool wrote there; never other files)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars, warnings and errors only")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s: %(message)s")
    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            summary = prepare_training_data(
                args.video_dir, args.out_dir, backend=args.backend, det_model=args.det_model,
                pose_model=args.pose_model, max_frames=args.max_frames, overwrite=args.overwrite,
                progress=not args.quiet,
            )
    except (FileNotFoundError, NotADirectoryError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(summary)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
