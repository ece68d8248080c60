"""The process: `python -m diffsynth.app` flags (`build_parser`, `config_from_args`) and `main`, which starts the
server."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from ..animate.run import error_line
from ..animate.settings import TINY, VRAM_TIERS, AnimateSettings
from ..data.safe_write import make_folder
from ..pose.backends import BACKENDS
from .controls import TINY_RESOLUTION, TINY_STEPS, AppConfig
from .page import build_app


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m diffsynth.app", description="The UniAnimate-DiT web UI (gradio): photo + driving video -> "
                                                    "clip, with pose preview, progress and a job queue.")
    parser.add_argument("--models", default="checkpoints", metavar="tiny|DIR",
                        help="the checkpoints folder (default checkpoints/), or tiny: the tiny demo model on the CPU")
    parser.add_argument("--vram", choices=list(VRAM_TIERS), default="all", help="GPU memory tier in GB (see "
                        "docs/animate.md)")
    parser.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                        help="an extra LoRA (repeatable; the fast preset needs a step-distillation one)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--outputs", default="outputs/app", help="where the job folders go (default outputs/app)")
    parser.add_argument("--pose-root", help="where to look for pose folders (default: the parent of --outputs)")
    parser.add_argument("--pose-backend", choices=BACKENDS, default="auto",
                        help="auto (default): DWPose when its two ONNX files are in the models folder (or named), "
                             "else the offline MediaPipe backend, saying so; dwpose; mediapipe")
    parser.add_argument("--det-model", metavar="ONNX", help="YOLOX detector (default <models>/yolox_l.onnx)")
    parser.add_argument("--pose-model", metavar="ONNX", help="DWPose model (default <models>/dw-ll_ucoco_384.onnx)")
    return parser


def config_from_args(args) -> AppConfig:
    tiny = args.models == TINY
    config = AppConfig(models=args.models, vram=args.vram, loras=tuple(args.lora), outputs=Path(args.outputs),
                       pose_root=Path(args.pose_root) if args.pose_root else None, pose_backend=args.pose_backend,
                       det_model=args.det_model, pose_model=args.pose_model,
                       resolution=TINY_RESOLUTION if tiny else "480p", steps=TINY_STEPS if tiny else 50)
    AnimateSettings(models=config.models, vram=config.vram, loras=config.loras,
                    pose_backend=config.pose_backend).validate()        # a missing --lora is refused at start
    return config


def main(argv: Optional[Sequence[str]] = None, *, block: bool = True):
    """Start the server (blocking unless `block=False`, which returns the launched Blocks). A bad flag or a missing
    gradio is one line on stderr and exit status 2 / 1."""
    args = build_parser().parse_args(argv)
    try:
        config = config_from_args(args)
        import gradio  # noqa: F401, PLC0415
    except ImportError:
        print("error: the web UI needs gradio: pip install -e '.[app]'", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error_line(error)}", file=sys.stderr)
        return 1
    app = build_app(config)
    make_folder(config.outputs)
    print(f"outputs go to {config.outputs}/<job>/; models: {config.models} (loaded at the first generation)")
    app.launch(server_name=args.host, server_port=args.port, share=args.share, prevent_thread_lock=not block,
               allowed_paths=[str(Path(config.outputs).resolve()), str(config.pose_search_root.resolve())])
    return app if not block else 0

