"""What one animation needs to know besides its inputs: `AnimateSettings` (the CLI flags and the UI's controls),
the GPU-memory tiers behind `--vram`, and the progress events a caller (CLI, web UI) receives."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Tuple

from ..data.framing import RESIZE_MODES, parse_area, parse_size
from ..pose.backends import BACKENDS

TINY = "tiny"
DEFAULT_PROMPT = "a person is dancing"
MAX_SHORT_FRAMES = 81        # longer pose videos go to the long-video pipeline (overlapping 81-frame windows)
MIN_CLIP_FRAMES = 5          # the shortest clip (4k + 1 frames, k >= 1): fewer driving frames are refused
MAX_PHOTO_PIXELS = 100_000_000   # a larger photo is refused before it is decoded (432 MP took 8.9 GB and 194 s)


@dataclass(frozen=True)
class VramTier:
    """How the models are placed for one `--vram` choice (see docs/memory.md and the README's tier table)."""

    resident_dit_params: Optional[float]   # None: everything resident, no streaming
    fp8: bool                              # DiT Linear weights stored in float8_e4m3fn
    note: str


# GPU memory in GB -> tier. Peaks simulated at full size by benchmarks/simulate.py (81 frames, cfg 1.5, CFG branches
# one at a time, without the allowance for the CUDA context and workspaces); none is measured on a GPU yet.
VRAM_TIERS = {
    "all": VramTier(None, False, "everything resident (simulated 34 GiB at 480p, 39 GiB at 720p)"),
    "24": VramTier(6e9, False, "6e9 DiT parameters resident, the rest streamed (the upstream scripts' budget; "
                               "below the 7B tier's simulated 18/23 GiB at 480p/720p)"),
    "16": VramTier(0, False, "DiT fully streamed from CPU memory (simulated 5.3 GiB at 480p, 11 GiB at 720p; "
                             "44 GiB host RAM)"),
    "12": VramTier(0, True, "fp8 DiT, fully streamed (simulated 4.8 GiB at 480p, 11 GiB at 720p; 29 GiB host RAM)"),
}


@dataclass
class AnimateSettings:
    """Everything `animate()` can be told, with the CLI's defaults. `validate()` checks it (errors name the field).

    Size: `resolution` ("480p", "720p" or a pixel area) with the reference's aspect, in multiples of 16; or an
    explicit `size` (width, height), into which the reference is fitted by `resize` ("pad", "crop", "stretch").
    Frames: every `stride`-th driving frame, at most `max_frames`; up to `max_short_frames` (81) use the short
    pipeline (rounded down to 4k+1), more use the long-video one.
    """

    models: str = "checkpoints"          # "tiny" (the tiny demo model, CPU) or the checkpoints folder
    resolution: Optional[str] = None     # None: "480p", or the demo model's own 64x48 area with --models tiny
    size: Optional[Tuple[int, int]] = None
    resize: str = "pad"
    steps: Optional[int] = None          # None: 50, or the demo model's 10 with --models tiny
    cfg: Optional[float] = None          # None: 1.5 as upstream, or the demo model's 1.0 with --models tiny
    seed: int = 0
    fast: bool = False                   # the 4-step preset; needs a step-distillation LoRA in `loras`
    teacache: Optional[float] = None     # TeaCache threshold (0.1-0.3)
    magcache: Optional[float] = None     # MagCache threshold (e.g. 0.12)
    vram: str = "all"                    # a key of VRAM_TIERS
    loras: Tuple[str, ...] = ()          # extra LoRAs, "path" or "path:strength"
    stack_loras: bool = False            # a UniAnimate LoRA in `loras` stacks on the shipped one instead of replacing it
    prompt: str = DEFAULT_PROMPT
    negative_prompt: Optional[str] = None   # None: the standard Wan negative prompt
    stride: int = 1
    max_frames: Optional[int] = None
    max_short_frames: int = MAX_SHORT_FRAMES
    pose_backend: str = "auto"           # auto: DWPose when its two ONNX files are there, else offline MediaPipe
    det_model: Optional[str] = None      # default: <models>/yolox_l.onnx (checkpoints/ for the tiny models)
    pose_model: Optional[str] = None     # default: <models>/dw-ll_ucoco_384.onnx
    smooth: bool = False
    audio: bool = True
    overwrite: bool = False
    device: Optional[str] = None         # default: the process's GPU (torchrun: LOCAL_RANK), else the CPU
    ulysses_size: int = 1                # torchrun: split every video's tokens over this many processes
    cfg_parallel: bool = False           # torchrun: the two guidance branches on two groups of processes
    ring_size: int = 1                   # torchrun: ring attention over this many groups (yunchang)
    tiled: Optional[bool] = None         # VAE tiling; None: on, except for the tiny models
    max_photo_pixels: int = MAX_PHOTO_PIXELS   # larger photos are refused up front (downscale them)
    extra: dict = field(default_factory=dict)   # further GenerationRequest fields (pipelines/request.py)

    def __post_init__(self):
        # Defaults that fit the models: the release runs at 480p, 50 steps, cfg 1.5 (upstream's scripts); the tiny
        # demo model at its own size and schedule (what it was trained and evaluated at).
        from ..configs import DEMO_HEIGHT, DEMO_INFERENCE, DEMO_WIDTH  # noqa: PLC0415

        tiny = self.models == TINY
        if self.resolution is None:
            self.resolution = str(DEMO_HEIGHT * DEMO_WIDTH) if tiny and self.size is None else "480p"
        if self.steps is None:
            self.steps = DEMO_INFERENCE["num_inference_steps"] if tiny else 50
        if self.cfg is None:
            self.cfg = DEMO_INFERENCE["cfg_scale"] if tiny else 1.5
        # "auto" (the default) is resolved where the poses are made (`prepare_poses`); a named --det-model /
        # --pose-model means DWPose, strictly (a missing file is refused before any work).
        if self.pose_backend == "auto" and (self.det_model is not None or self.pose_model is not None):
            self.pose_backend = "dwpose"

    def resolved_pose_backend(self) -> Tuple[str, Optional[str]]:
        """(backend that will run, the one-line notice when the offline backend stands in for DWPose, else None)."""
        from ..pose.backends import resolve_backend  # noqa: PLC0415

        return resolve_backend(self.pose_backend, *self.pose_model_paths())

    def validate(self) -> "AnimateSettings":
        """Raise ValueError naming the first bad field and what it accepts; returns self."""
        parse_area(self.resolution)
        if self.size is not None:
            width, height = parse_size(self.size) if isinstance(self.size, str) else self.size
            if width % 16 or height % 16:
                raise ValueError(f"size must be multiples of 16 (e.g. 480x832); got {width}x{height}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {self.resize!r}")
        _check_int("steps", self.steps, 1)
        _check_int("stride", self.stride, 1)
        _check_int("max_short_frames", self.max_short_frames, 1)
        if self.max_frames is not None:
            _check_int("max_frames", self.max_frames, 1)
        if not isinstance(self.cfg, (int, float)) or not math.isfinite(self.cfg) or self.cfg < 1:
            raise ValueError(f"cfg must be a number >= 1 (1.5 as upstream, 1 skips the negative branch); "
                             f"got {self.cfg!r}")
        _check_int("seed", self.seed, 0)
        if self.teacache is not None and self.magcache is not None:
            raise ValueError("choose one step cache: --teacache or --magcache, not both")
        for name in ("teacache", "magcache"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value < 10):
                raise ValueError(f"{name} threshold must be a number in [0, 10), e.g. 0.2; got {value!r}")
        for name in ("ulysses_size", "ring_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")
        _check_int("max_photo_pixels", self.max_photo_pixels, 1)
        self._check_parallel()
        self._check_loras()
        if self.vram not in VRAM_TIERS:
            raise ValueError(f"vram must be one of {', '.join(VRAM_TIERS)} (GB of GPU memory); got {self.vram!r}")
        if self.pose_backend not in BACKENDS:
            raise ValueError(f"pose_backend must be one of {', '.join(BACKENDS)}; got {self.pose_backend!r}")
        if self.models != TINY and not Path(self.models).is_dir():
            raise FileNotFoundError(f"models folder {self.models} not found: download the release with "
                                    f"`python -m diffsynth download --dir {self.models}`, or use --models tiny")
        return self

    def _check_parallel(self) -> None:
        """The sequence / CFG parallel flags split every video over the processes torchrun starts: refused in a
        single process (where they would do nothing) and when the process count does not fit the layout."""
        if not self.splits_each_video:
            return
        flags = ", ".join(flag for flag, on in (("--ulysses-size", self.ulysses_size > 1),
                                                ("--ring-size", self.ring_size > 1),
                                                ("--cfg-parallel", self.cfg_parallel)) if on)
        needed = self.ulysses_size * self.ring_size * (2 if self.cfg_parallel else 1)
        world = os.environ.get("WORLD_SIZE", "1")
        if world != str(needed):
            where = "this is a single process" if world == "1" else f"torchrun started {world} processes"
            raise ValueError(f"{flags} split every video over {needed} processes, but {where}: start it with "
                             f"`torchrun --nproc_per_node={needed} -m diffsynth animate ...` (or drop {flags})")

    def _check_loras(self) -> None:
        """Every --lora file exists; --fast has a step-distillation LoRA to run with (recognised by its file name,
        as the pipeline does: `STEP_DISTILL_NAME`)."""
        paths = [parse_lora(spec)[0] for spec in self.loras]
        for path in paths:
            if not Path(path).expanduser().is_file():
                raise FileNotFoundError(f"LoRA file {path} not found (--lora PATH[:STRENGTH])")
        if self.fast:
            from ..pipelines.request import STEP_DISTILL_NAME  # noqa: PLC0415

            if not any(STEP_DISTILL_NAME.search(Path(p).name) for p in paths):
                raise ValueError(
                    "--fast (4 steps, cfg 1) needs a step-distillation LoRA, e.g. LightX2V's "
                    "Wan21_I2V_14B_lightx2v_cfg_step_distill_lora_rank64.safetensors: give it with --lora PATH "
                    f"(recognised by its file name: {STEP_DISTILL_NAME.pattern}); without --fast all steps run")

    @property
    def tiny(self) -> bool:
        return self.models == TINY

    @property
    def splits_each_video(self) -> bool:
        """Under torchrun: True when all processes work on every video (sequence / CFG parallel); False when each
        process animates its own share of the pairs (item parallel)."""
        return self.ulysses_size > 1 or self.ring_size > 1 or self.cfg_parallel

    def area(self) -> int:
        return parse_area(self.resolution)

    def pose_model_paths(self) -> Tuple[str, str]:
        """(detector, pose model) ONNX files: the given ones, else the release names in the models folder."""
        folder = Path("checkpoints" if self.tiny else self.models)
        return (self.det_model or str(folder / "yolox_l.onnx"), self.pose_model or str(folder / "dw-ll_ucoco_384.onnx"))

    def with_(self, **changes) -> "AnimateSettings":
        """A copy with some fields changed."""
        return replace(self, **changes)


def parse_lora(spec: str) -> Tuple[str, float]:
    """"path" or "path:strength" -> (path, strength)."""
    path, sep, strength = str(spec).rpartition(":")
    if sep and path and not os.path.exists(spec):
        try:
            return path, float(strength)
        except ValueError:
            pass
    return str(spec), 1.0


def _check_int(name: str, value, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")


@dataclass
class ProgressEvent:
    """One progress report: `stage` ("poses", "load", "generate", "write", "done"), `done` of `total` units
    (steps for "generate"; 0 of 0 when unknown) and a human-readable `message`. `item` / `items`: which pair of a
    batch (1-based)."""

    stage: str
    done: int = 0
    total: int = 0
    message: str = ""
    item: int = 1
    items: int = 1

    @property
    def fraction(self) -> Optional[float]:
        """done / total, or None when the total is unknown."""
        return self.done / self.total if self.total else None


ProgressCallback = Callable[[ProgressEvent], None]


__all__ = ["AnimateSettings", "parse_lora", "VramTier", "VRAM_TIERS", "ProgressEvent", "ProgressCallback", "TINY",
           "DEFAULT_PROMPT", "MAX_SHORT_FRAMES", "MIN_CLIP_FRAMES", "MAX_PHOTO_PIXELS"]
