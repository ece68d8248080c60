"""The `diffsynth` command (also `python -m diffsynth`): `animate` a photo along a driving video, `download` the
release files. Every failure ends with one line on stderr and exit status 1 (`--debug` shows the traceback)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from typing import List, Optional

ANIMATE_EXAMPLES = """\
examples:
  diffsynth animate --ref photo.jpg --driving dance.mp4
  diffsynth animate --ref photo.jpg --driving dance.mp4 --out outputs/me.mp4 --resolution 720p --vram 24
  diffsynth animate --ref photos/ --driving dances/ --out outputs/      # every photo x every video
  diffsynth animate --ref photo.jpg --driving dance.mp4 --preview       # check the aligned poses first
  diffsynth animate --ref photo.jpg --driving dance.mp4 --models tiny --resolution 4096 --steps 2   # CPU smoke test

Writes OUT (the clip, with the driving video's audio), OUT_comparison.mp4 ([reference | pose | generated]) and
OUT.poses/ (the aligned poses; reused while the photo, the video and the settings are unchanged).
--vram tiers (GB of GPU memory): all = everything resident; 24 = 6e9 DiT parameters resident, the rest streamed;
16 = the DiT fully streamed; 12 = fp8 DiT, fully streamed. See docs/animate.md and docs/memory.md.
"""

DOWNLOAD_EXAMPLES = """\
examples:
  diffsynth download                          # everything (~80 GB) into checkpoints/
  diffsynth download --only dwpose            # just the two pose models
  diffsynth download --source modelscope --dir /data/checkpoints

Needs `pip install huggingface_hub` (or modelscope). Interrupted downloads resume; complete files are skipped;
every file is checked against the size and SHA-256 the hub publishes.
"""


def _add_animate(commands) -> None:
    from .animate.settings import MAX_SHORT_FRAMES, VRAM_TIERS  # noqa: PLC0415
    from .data.framing import RESIZE_MODES  # noqa: PLC0415
    from .pose.backends import BACKENDS  # noqa: PLC0415

    parser = commands.add_parser(
        "animate", help="animate a photo along a driving video",
        description="Animate the person in a photo along the motion of a driving video: extract and align the poses, "
                    "generate with UniAnimate-DiT, write the clip and a side-by-side comparison.",
        epilog=ANIMATE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    io = parser.add_argument_group("inputs and outputs")
    io.add_argument("--ref", required=True, metavar="PHOTO", help="the photo of the person (or a folder of photos)")
    io.add_argument("--driving", required=True, metavar="VIDEO",
                    help="the driving video (or a folder of videos, or a folder of frames)")
    io.add_argument("--out", metavar="OUT.mp4",
                    help="the clip to write (default outputs/<photo>_<video>.mp4); a folder for a batch "
                         "(default outputs/)")
    io.add_argument("--overwrite", action="store_true", help="replace existing output files")
    io.add_argument("--preview", action="store_true",
                    help="only extract and align the poses and write OUT_pose_preview.mp4 "
                         "([driving + raw pose | reference + aligned pose]); no models are loaded")
    io.add_argument("--no-audio", dest="audio", action="store_false",
                    help="do not copy the driving video's audio track into the clip")

    look = parser.add_argument_group("size and framing")
    look.add_argument("--resolution", default=None, metavar="480p|720p",
                      help="pixel area of the generation (480p = 832*480, 720p = 1280*720, or a number of pixels); "
                           "the shape follows the photo (portrait, landscape, square), in multiples of 16 "
                           "(default 480p; with --models tiny the demo model's own 64x48 area)")
    look.add_argument("--size", metavar="WxH", help="an exact generation size instead (multiples of 16)")
    look.add_argument("--resize", choices=RESIZE_MODES, default="pad",
                      help="how the photo meets the generation's shape: pad (default, border colour), crop "
                           "(centre) or stretch (upstream: distorts a photo of another shape)")

    gen = parser.add_argument_group("generation")
    gen.add_argument("--models", default="checkpoints", metavar="tiny|DIR",
                     help="the checkpoints folder (default checkpoints/, see `diffsynth download`), or tiny: the tiny "
                          "demo model (trained on synthetic mannequins) on the CPU, to test the whole path in seconds")
    gen.add_argument("--steps", type=int, default=None, help="denoising steps (default 50; --models tiny: 10)")
    gen.add_argument("--cfg", type=float, default=None,
                     help="guidance scale (default 1.5, 1.0 is 2x faster; --models tiny: 1.0)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    gen.add_argument("--prompt", default="a person is dancing", help="text prompt (default: a person is dancing)")
    gen.add_argument("--fast", action="store_true",
                     help="4 steps, cfg 1 (needs a step-distillation LoRA such as LightX2V's, given with --lora)")
    gen.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]",
                     help="an extra LoRA merged after UniAnimate's (repeatable); a UniAnimate LoRA you trained "
                          "(it carries a pose guider) replaces the shipped one")
    gen.add_argument("--stack-loras", action="store_true",
                     help="merge a UniAnimate LoRA given with --lora on top of the shipped one instead")
    cache = gen.add_mutually_exclusive_group()
    cache.add_argument("--teacache", type=float, metavar="THRESH", help="TeaCache step skipping (0.1-0.3)")
    cache.add_argument("--magcache", type=float, metavar="THRESH", help="MagCache step skipping (e.g. 0.12)")
    gen.add_argument("--vram", choices=list(VRAM_TIERS), default="all",
                     help="GPU memory tier in GB: all (default) = everything resident; 24, 16, 12 stream the DiT "
                          "(see below)")
    gen.add_argument("--ulysses-size", type=int, default=1, metavar="N",
                     help="under torchrun: split every video's tokens over N processes (a divisor of the DiT's 40 "
                          "heads); default 1 = each process animates its own share of the pairs")
    gen.add_argument("--ring-size", type=int, default=1, metavar="N",
                     help="under torchrun: ring attention over N groups of processes (needs yunchang); processes = "
                          "ulysses size x ring size (x 2 with --cfg-parallel)")
    gen.add_argument("--cfg-parallel", action="store_true",
                     help="under torchrun: the two guidance branches on two groups of processes "
                          "(processes = ulysses size x 2)")
    gen.add_argument("--stride", type=int, default=1, help="use every N-th driving frame (default 1)")
    gen.add_argument("--max-frames", type=int, help="animate at most this many frames from the start")
    gen.add_argument("--long-after", type=int, default=MAX_SHORT_FRAMES, metavar="N",
                     help=f"more frames than this use the long-video pipeline (default {MAX_SHORT_FRAMES})")

    pose = parser.add_argument_group("poses")
    pose.add_argument("--pose-backend", choices=BACKENDS, default="auto",
                      help="auto (default): DWPose when its two ONNX files are in the models folder (or named), "
                           "else the offline MediaPipe backend, saying so; dwpose; mediapipe")
    pose.add_argument("--det-model", metavar="ONNX", help="YOLOX detector (default <models>/yolox_l.onnx)")
    pose.add_argument("--pose-model", metavar="ONNX", help="DWPose model (default <models>/dw-ll_ucoco_384.onnx)")
    pose.add_argument("--smooth", action="store_true", help="One-Euro temporal smoothing of the keypoints")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")


def _add_download(commands) -> None:
    from .download import GROUPS, SOURCES  # noqa: PLC0415

    parser = commands.add_parser(
        "download", help="download the release checkpoints",
        description="Fetch the Wan2.1-I2V-14B-720P, UniAnimate-DiT and DWPose release files into a checkpoints "
                    "folder, resumably, verifying the sizes and hashes the hub publishes.",
        epilog=DOWNLOAD_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=SOURCES, default="huggingface", help="the hub (default huggingface)")
    parser.add_argument("--only", choices=list(GROUPS), action="append",
                        help="one group (repeatable; default all): wan = the base model, unianimate = the LoRA + "
                             "pose guider, dwpose = the pose models")
    parser.add_argument("--dir", default="checkpoints", help="target folder (default checkpoints/)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffsynth", description="UniAnimate-DiT on Wan2.1: animate a photo along a driving video.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_animate(commands)
    _add_download(commands)
    return parser


def settings_from_args(args):
    """The `AnimateSettings` of parsed `animate` arguments."""
    from .animate import AnimateSettings  # noqa: PLC0415

    return AnimateSettings(
        models=args.models, resolution=args.resolution, size=args.size, resize=args.resize, steps=args.steps,
        cfg=args.cfg, seed=args.seed, fast=args.fast, teacache=args.teacache, magcache=args.magcache,
        vram=args.vram, loras=tuple(args.lora), stack_loras=args.stack_loras, prompt=args.prompt, stride=args.stride,
        max_frames=args.max_frames,
        max_short_frames=args.long_after, pose_backend=args.pose_backend, det_model=args.det_model,
        pose_model=args.pose_model, smooth=args.smooth, audio=args.audio, overwrite=args.overwrite,
        ulysses_size=args.ulysses_size, ring_size=args.ring_size, cfg_parallel=args.cfg_parallel).validate()


class _Printer:
    """Progress on stderr: one line per stage; the denoising steps and written frames with s/step (s/frame) and an
    ETA, on one rewritten line in a terminal, one line per step (at most ~20 lines for frames) when piped."""

    def __init__(self, stream=sys.stderr, clock=time.monotonic):
        self.stream, self.clock, self.open = stream, clock, False
        self._started: dict = {}

    def _counted(self, event) -> str:
        if event.done == 0 or event.stage not in self._started:
            self._started[event.stage] = self.clock()
            return f"{event.stage}: 0/{event.total}"
        per = (self.clock() - self._started[event.stage]) / event.done
        unit = "step" if event.stage == "generate" else "frame"
        return (f"{event.stage}: {event.done}/{event.total}, {per:.2f} s/{unit}, "
                f"ETA {per * (event.total - event.done):.0f} s")

    def __call__(self, event) -> None:
        prefix = f"[{event.item}/{event.items}] " if event.items > 1 else ""
        counting = event.stage in ("generate", "write") and event.total
        if counting:
            line = self._counted(event)
            if self.stream.isatty():
                self.stream.write(f"\r{prefix}{line}")
                self.open = event.done < event.total
                if not self.open:
                    self.stream.write("\n")
            elif event.stage == "generate" or event.done in (0, event.total) or \
                    event.done % -(-event.total // 20) == 0:     # every ceil(total / 20)-th frame
                self.stream.write(f"{prefix}{line}\n")
        else:
            if self.open:
                self.stream.write("\n")
                self.open = False
            if event.message:
                self.stream.write(f"{prefix}{event.stage}: {event.message}\n")
        self.stream.flush()


def run_animate(args) -> int:
    from pathlib import Path  # noqa: PLC0415

    from .animate import Animator, find_pairs  # noqa: PLC0415

    settings = settings_from_args(args)
    pairs = find_pairs(args.ref, args.driving)
    animator = Animator(settings, progress=_Printer())
    single = Path(args.ref).is_file() and len(pairs) == 1 and not (args.out and Path(args.out).is_dir())
    if single:
        result = animator.animate(*pairs[0], args.out, preview_only=args.preview)
        print("\n".join(result.lines()))
        return 0
    batch = animator.animate_batch(pairs, args.out or "outputs", preview_only=args.preview)
    for result in batch.done:
        print("\n".join(result.lines()))
    print("\n".join(batch.lines()))
    return 1 if batch.failed else 0


def run_download(args) -> int:
    from .download import download  # noqa: PLC0415

    report = download(args.dir, source=args.source, only=args.only)
    print("\n".join(report.lines()))
    return 1 if report.failed else 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `diffsynth` console script and of `python -m diffsynth`."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s: %(message)s")
    if not args.debug:
        import warnings  # noqa: PLC0415

        warnings.formatwarning = lambda message, category, *rest, **kw: f"warning: {message}\n"
    try:
        return (run_animate if args.command == "animate" else run_download)(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure is one line unless --debug
        if args.debug:
            raise
        from .animate.run import error_line  # noqa: PLC0415

        print(f"error: {error_line(error)}", file=sys.stderr)
        return 1


__all__ = ["main", "build_parser", "settings_from_args"]
