"""Extract poses from a reference image and a driving video, retarget them to the reference, and draw them.

    python run_align_pose.py --ref_name data/images/IMG_20240514_104337.jpg \
        --source_video_paths data/videos/source_video.mp4 --saved_pose_dir data/saved_pose/IMG_20240514_104337

See docs/pose.md for the models, the offline MediaPipe backend and the differences from the upstream script.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from diffsynth.data.framing import RESIZE_MODES
from diffsynth.pose.backends import BACKENDS
from diffsynth.pose.extract import SmoothingOptions, run_align_pose
from diffsynth.pose.onnx_runtime import DEFAULT_DET_MODEL, DEFAULT_POSE_MODEL


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ref_name", default="data/images/IMG_20240514_104337.jpg", help="reference image")
    parser.add_argument("--source_video_paths", default="data/videos/source_video.mp4",
                        help="driving video, or a folder of videos (concatenated in sorted order) or of images")
    parser.add_argument("--saved_pose_dir", default="data/saved_pose/IMG_20240514_104337", help="output folder")
    parser.add_argument("--backend", choices=BACKENDS, default="auto",
                        help="auto (default: dwpose when both ONNX files below are there, else the offline "
                             "mediapipe backend, said in one line), dwpose or mediapipe (requirements/pose-offline.txt)")
    parser.add_argument("--det_model", default=str(DEFAULT_DET_MODEL), help="YOLOX ONNX file (dwpose backend)")
    parser.add_argument("--pose_model", default=str(DEFAULT_POSE_MODEL), help="DWPose ONNX file (dwpose backend)")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow a non-empty output folder, deleting only the files a previous run listed in its "
                             ".run_align_pose.json (never other files), and replace an existing --preview file")
    parser.add_argument("--preview", default=None, metavar="OUT.mp4",
                        help="also write [frame + raw pose | reference + aligned pose] as a video (an existing file "
                             "is refused unless --overwrite)")
    parser.add_argument("--canvas", default="512x768", metavar="auto|WxH",
                        help="pose image size: WxH (default 512x768, as upstream) or auto (the reference's aspect at "
                             "the same area, multiples of 16)")
    parser.add_argument("--resize", choices=RESIZE_MODES, default="stretch",
                        help="how the reference meets the canvas's aspect: stretch (default, upstream: a photo of "
                             "another aspect is distorted), pad (border colour) or crop (centre); pad and crop "
                             "write the prepared reference as reference.png in the output folder: use it as the "
                             "reference image when generating")
    parser.add_argument("--smooth", action="store_true", help="One-Euro temporal smoothing (off by default)")
    parser.add_argument("--smooth_min_cutoff", type=float, default=SmoothingOptions.min_cutoff)
    parser.add_argument("--smooth_beta", type=float, default=SmoothingOptions.beta)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    smoothing = SmoothingOptions(args.smooth_min_cutoff, args.smooth_beta) if args.smooth else None
    format_warning = warnings.formatwarning
    warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"  # no source lines
    try:
        summary = run_align_pose(
            args.ref_name, args.source_video_paths, args.saved_pose_dir, backend=args.backend,
            det_model=args.det_model, pose_model=args.pose_model, overwrite=args.overwrite, preview=args.preview,
            smoothing=smoothing, progress=not args.quiet, canvas=args.canvas, resize=args.resize,
        )
    except (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError,
            ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        warnings.formatwarning = format_warning
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
