"""From a photo and a driving video to a finished clip: `animate()` for one pair, `animate_batch()` for every pair
of two folders, `Animator` to keep the models loaded between calls (the web UI holds one).

    from diffsynth.animate import AnimateSettings, animate
    result = animate("photo.jpg", "dance.mp4", "outputs/dance.mp4", AnimateSettings(resolution="480p"))
    print("\\n".join(result.lines()))

Per pair: the generation size follows the photo (`resolution` as an area, the photo's aspect, multiples of 16);
poses are extracted and aligned on a canvas of that size into `<out stem>.poses/` (reused while the inputs are
unchanged); up to 81 frames run the short pipeline, longer videos the long-video one; the clip (with the driving
video's audio) and `<out stem>_comparison.mp4` ([reference | pose | generated]) are written atomically.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from ..data.pose_folder import frames_at_stride, list_pose_frames, read_pose_frames, select_frames
from ..data.safe_write import check_output_file
from .checks import check_inputs
from .names import batch_clip_names, clip_name
from .poses import PoseFolder, prepare_poses, write_pose_preview
from .settings import AnimateSettings, ProgressCallback, ProgressEvent

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".gif")


class ModelLoadError(RuntimeError):
    """The models could not be loaded: no pair can run (a batch stops instead of failing every pair)."""


@dataclass
class OutputPaths:
    """Where one pair's files go, all derived from the clip's path."""

    video: Path
    comparison: Path
    poses: Path
    preview: Path

    @classmethod
    def for_clip(cls, out) -> "OutputPaths":
        out = Path(out).expanduser()
        if out.suffix.lower() != ".mp4":
            raise ValueError(f"the output {out} must be an .mp4 file name (a folder only for a batch)")
        return cls(out, out.with_name(f"{out.stem}_comparison.mp4"), out.with_name(f"{out.stem}.poses"),
                   out.with_name(f"{out.stem}_pose_preview.mp4"))


@dataclass
class AnimateResult:
    """What one `animate` call did and wrote."""

    reference: Path
    driving: Path
    pose_dir: Path
    size: Tuple[int, int]              # (width, height) of the generation
    fps: float
    poses_reused: bool
    frames: int = 0                    # generated frames (0 with preview_only)
    pipeline: Optional[str] = None     # "short" or "long"
    video: Optional[Path] = None
    comparison: Optional[Path] = None
    preview: Optional[Path] = None
    audio: bool = False
    seconds: float = 0.0

    def lines(self) -> List[str]:
        """A human-readable account, one fact per line (what the CLI prints)."""
        lines = [f"poses:      {self.pose_dir}/ ({'reused' if self.poses_reused else 'extracted'}, "
                 f"canvas {self.size[0]}x{self.size[1]})"]
        if self.preview is not None:
            lines.append(f"preview:    {self.preview}  [driving + raw pose | reference + aligned pose]")
        if self.video is not None:
            lines.append(f"video:      {self.video}  ({self.frames} frames, {self.size[0]}x{self.size[1]}, "
                         f"{self.fps:g} fps, {self.pipeline} pipeline, "
                         f"{'audio copied from the driving video' if self.audio else 'no audio'})")
            lines.append(f"comparison: {self.comparison}  [reference | pose | generated]")
        lines.append(f"time:       {self.seconds:.1f} s")
        return lines


@dataclass
class BatchResult:
    """Every pair of a batch: the results, and the failures as (reference, driving, one-line reason)."""

    done: List[AnimateResult] = field(default_factory=list)
    failed: List[Tuple[Path, Path, str]] = field(default_factory=list)

    def lines(self) -> List[str]:
        lines = [f"{len(self.done)} of {len(self.done) + len(self.failed)} pairs done"]
        lines += [f"  ok      {r.reference.name} x {r.driving.name} -> {r.video or r.preview}" for r in self.done]
        lines += [f"  FAILED  {ref.name} x {drv.name}: {why}" for ref, drv, why in self.failed]
        return lines


def generation_size(image_width: int, image_height: int, settings: AnimateSettings) -> Tuple[int, int]:
    """(width, height) of the generation: `settings.size`, else the photo's aspect at the resolution's area in
    multiples of 16 (`WanVideoPipeline`'s I2V rule, `size_for_reference`)."""
    from ..data.framing import parse_size  # noqa: PLC0415
    from ..pipelines.wan_video import size_for_reference  # noqa: PLC0415

    if settings.size is not None:
        return parse_size(settings.size) if isinstance(settings.size, str) else tuple(settings.size)
    height, width = size_for_reference(image_width, image_height, settings.area())
    return width, height


def error_line(error: BaseException) -> str:
    """An exception as one line: its message, prefixed by its kind when that adds something."""
    message = " ".join(str(error).split()) or type(error).__name__
    from ..download import DownloadError  # noqa: PLC0415

    known = (FileNotFoundError, FileExistsError, ValueError, NotADirectoryError, IsADirectoryError, PermissionError,
             ModelLoadError, ImportError, DownloadError)
    return message if isinstance(error, known) else f"{type(error).__name__}: {message}"


class Animator:
    """Animates pairs with one set of loaded models (loaded at the first generation, or given as `pipeline`).

    `progress(ProgressEvent)` is called at every stage and denoising step; `loader(settings)` makes the pipeline
    (default `load_pipeline`: the release, or the tiny models)."""

    def __init__(self, settings: AnimateSettings = None, progress: Optional[ProgressCallback] = None,
                 pipeline=None, loader: Optional[Callable] = None):
        self.settings = (settings or AnimateSettings()).validate()
        self.progress = progress
        self._pipeline = pipeline
        self._loader = loader
        self._item = (1, 1)

    # ------------------------------------------------------------------------------------------------ helpers
    def emit(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None:
        """Send a `ProgressEvent` to the progress callback (if any)."""
        if self.progress is not None:
            self.progress(ProgressEvent(stage, done, total, message, *self._item))

    @property
    def pipeline(self):
        """The loaded pipeline (loading it on first use)."""
        if self._pipeline is None:
            from .models import load_pipeline  # noqa: PLC0415

            self.emit("load", message="loading the tiny models" if self.settings.tiny
                       else f"loading the models from {self.settings.models}")
            try:
                self._pipeline = (self._loader or load_pipeline)(self.settings)
            except (FileNotFoundError, ValueError, ImportError, OSError, RuntimeError) as error:
                raise ModelLoadError(error_line(error)) from error
            for line in getattr(self._pipeline, "loaded", ()):     # what was merged, where the pose guider came from
                self.emit("load", 1, 1, line)
            state = getattr(self._pipeline, "parallel", None)
            if state is not None:
                self.emit("load", 1, 1, f"rank {state.rank} of {state.world_size}: every video split (ulysses "
                                         f"{state.config.ulysses_size}, ring {state.config.ring_size}, cfg "
                                         f"parallel {'on' if state.config.cfg_parallel else 'off'})")
        return self._pipeline

    def _runs_on_cpu(self) -> bool:
        import torch  # noqa: PLC0415

        from .models import default_device  # noqa: PLC0415

        device = self._pipeline.device if self._pipeline is not None else self.settings.device or default_device()
        return torch.device(device).type == "cpu"

    def _steps(self, timesteps):
        total = len(timesteps)
        self.emit("generate", 0, total, "denoising")
        for i, timestep in enumerate(timesteps):
            yield timestep
            self.emit("generate", i + 1, total, f"step {i + 1}/{total}")
        self.emit("decode", message="decoding the frames")   # runs right after the last step (streamed: while writing)

    # ----------------------------------------------------------------------------------------------- one pair
    def animate(self, reference, driving, out=None, *, preview_only: bool = False) -> AnimateResult:
        """Animate the person in `reference` (an image file) along `driving` (a video, or a folder of frames),
        writing `out` (default `outputs/<photo>_<video>.mp4`), `<out stem>_comparison.mp4` and the pose folder
        `<out stem>.poses/`. With `preview_only`, stop after the poses and write `<out stem>_pose_preview.mp4`
        (no models are loaded)."""
        from ..pose.sources import read_image  # noqa: PLC0415

        start = time.perf_counter()
        settings = self.settings
        reference, driving = Path(reference).expanduser(), Path(driving).expanduser()
        if not reference.is_file():
            raise FileNotFoundError(f"reference photo {reference} not found")
        if not driving.exists():
            raise FileNotFoundError(f"driving video {driving} not found")
        paths = OutputPaths.for_clip(out or Path("outputs") / clip_name(reference, driving))
        for path in ([paths.preview] if preview_only else [paths.video, paths.comparison]):
            check_output_file(path, overwrite=settings.overwrite, inputs=[reference, driving], flag="--overwrite")
        check_inputs(settings, reference, driving, preview_only, models_loaded=self._pipeline is not None)
        photo = read_image(reference)
        width, height = generation_size(photo.shape[1], photo.shape[0], settings)

        # Every video split over the processes: rank 0 extracts the poses, the others then reuse its pose folder
        # (never two writers in one folder). Joining the process group means loading the models first.
        state = getattr(self.pipeline, "parallel", None) if settings.splits_each_video and not preview_only \
            else None
        if state is not None and not state.is_main:
            _barrier()
        self.emit("poses", message=f"extracting and aligning poses -> {paths.poses}")
        det_model, pose_model = settings.pose_model_paths()
        try:
            poses = prepare_poses(reference, driving, paths.poses, (width, height), settings.resize,
                                  settings.pose_backend, det_model, pose_model, settings.smooth)
        finally:   # also on failure: the other ranks then fail on the same input instead of waiting forever
            if state is not None and state.is_main:
                _barrier()
        self.emit("poses", 1, 1, f"{poses.frames} pose frames ({'reused' if poses.reused else 'extracted'})")
        result = AnimateResult(reference, driving, poses.path, (width, height),
                               poses.fps / settings.stride, poses.reused)
        if preview_only:
            self.emit("write", message=f"writing {paths.preview}")
            result.preview = write_pose_preview(poses, driving, paths.preview, overwrite=settings.overwrite)
        else:
            self.generate_along_poses(poses, result, paths)
        result.seconds = time.perf_counter() - start
        self.emit("done", 1, 1, f"done in {result.seconds:.1f} s")
        return result

    def generate_along_poses(self, poses: PoseFolder, result: AnimateResult, paths: OutputPaths) -> None:
        """Generate `result`'s clip and comparison into `paths` along an aligned pose folder (`prepare_poses`, or a
        run_align_pose folder wrapped in a `PoseFolder`); `result` gets the output paths and figures."""
        from ..data.image_file import read_image_rgb  # noqa: PLC0415
        from ..pipelines.request import WAN_NEGATIVE_PROMPT  # noqa: PLC0415
        from ..pipelines.request import GenerationRequest  # noqa: PLC0415
        from .generate import LONG_VIDEO_WINDOWS, generate_frames  # noqa: PLC0415
        from .media import write_outputs  # noqa: PLC0415
        from .models import step_cache  # noqa: PLC0415

        settings = self.settings
        width, height = result.size
        pose_files = list_pose_frames(poses.path)
        count = frames_at_stride(len(pose_files), settings.stride, settings.max_frames)
        long_video = count > settings.max_short_frames
        count = count if long_video else (count - 1) // 4 * 4 + 1      # the short pipeline takes 4k + 1 frames
        chosen = [pose_files[i] for i in select_frames(len(pose_files), count, settings.stride)]
        clip = read_pose_frames(poses.path, chosen, height, width)
        dwpose_data, random_ref_dwpose = clip.dwpose_data, clip.random_ref_dwpose
        reference = read_image_rgb(poses.reference_image)   # the pose tool's reader: photo and poses agree
        request = GenerationRequest(
            prompt=settings.prompt, seed=settings.seed, cfg_scale=settings.cfg, num_inference_steps=settings.steps,
            negative_prompt=WAN_NEGATIVE_PROMPT if settings.negative_prompt is None else settings.negative_prompt,
            tiled=not settings.tiny if settings.tiled is None else settings.tiled, step_cache=step_cache(settings),
            preset="fast" if settings.fast else None, **settings.extra)
        if not settings.tiny and self._runs_on_cpu():     # say it before minutes of loading and hours of steps
            from .cpu_estimate import cpu_estimate_line  # noqa: PLC0415

            planned = request.resolved(step_distilled=True)
            self.emit("load", message=cpu_estimate_line(count, height, width, planned.num_inference_steps,
                                                        planned.cfg_scale, LONG_VIDEO_WINDOWS if long_video else None))
        pipeline = self.pipeline
        self.emit("encode", message=f"encoding the prompt, the reference and {count} pose frames")
        frames = generate_frames(pipeline, reference, dwpose_data, random_ref_dwpose, request,
                                 windows=LONG_VIDEO_WINDOWS if long_video else None, progress_bar_cmd=self._steps,
                                 output="iterator" if long_video else "pil")
        result.pipeline = "long" if long_video else "short"
        if frames is None:   # multi-GPU sequence parallel, not rank 0: rank 0 writes
            return
        expected = (count - 1) // 4 * 4 + 1
        self.emit("write", 0, expected, f"writing {paths.video}")
        result.audio = write_outputs(
            frames, reference, dwpose_data, paths.video, paths.comparison, result.fps,
            poses_driving_audio(result.driving) if settings.audio else None, overwrite=settings.overwrite,
            on_frame=lambda i: self.emit("write", i, expected, f"frame {i}/{expected}"))
        result.frames = expected
        result.video, result.comparison = paths.video, paths.comparison

    # ---------------------------------------------------------------------------------------------- many pairs
    def animate_batch(self, pairs: Sequence[Tuple[Path, Path]], out_dir, *, preview_only: bool = False,
                      shard: Optional[bool] = None) -> BatchResult:
        """Animate every (reference, driving) pair into `out_dir/<photo>_<video>.mp4`; a failing pair is recorded
        and the next one runs. Under torchrun (`shard`; default: unless the settings split every video over the
        processes) this process takes pairs r, r + N, … (item parallel)."""
        from ..distributed import item_shard  # noqa: PLC0415

        if shard is None:
            shard = not self.settings.splits_each_video
        pairs = list(pairs)
        outs = batch_clip_names(pairs)        # every pair's own name, checked before any work (and before sharding)
        jobs = list(zip(pairs, outs))
        jobs = item_shard(jobs) if shard else jobs
        batch = BatchResult()
        for index, ((reference, driving), name) in enumerate(jobs, 1):
            self._item = (index, len(jobs))
            out = Path(out_dir) / name
            try:
                batch.done.append(self.animate(reference, driving, out, preview_only=preview_only))
            except ModelLoadError:
                raise
            except Exception as error:  # noqa: BLE001 - one pair's failure must not stop the others
                logger.debug("pair %s x %s failed", reference, driving, exc_info=True)
                batch.failed.append((Path(reference), Path(driving), error_line(error)))
                self.emit("failed", message=f"{Path(reference).name} x {Path(driving).name}: {error_line(error)}")
        self._item = (1, 1)
        return batch


def _barrier() -> None:
    import torch.distributed as dist  # noqa: PLC0415

    dist.barrier()


def poses_driving_audio(driving: Path) -> Optional[Path]:
    """The file whose audio goes into the clip: the driving video itself (a folder of frames has none)."""
    return driving if driving.is_file() and driving.suffix.lower() in VIDEO_SUFFIXES else None


def find_pairs(references, drivings) -> List[Tuple[Path, Path]]:
    """Every (photo, video) pair: each of `references` / `drivings` is a file or a folder (of images / of videos,
    in name order). A driving folder that holds only images is one driving clip (an image sequence)."""
    def listing(path: Path, suffixes, what: str) -> List[Path]:
        path = Path(path).expanduser()
        if path.is_file():
            return [path]
        if not path.is_dir():
            raise FileNotFoundError(f"{what} {path} not found")
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
                       and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{what} folder {path} holds no {'/'.join(s[1:] for s in suffixes[:4])} files")
        return files

    refs = listing(references, IMAGE_SUFFIXES, "reference")
    drivings = Path(drivings).expanduser()
    if drivings.is_dir() and not any(p.suffix.lower() in VIDEO_SUFFIXES for p in drivings.iterdir()) and \
            any(p.suffix.lower() in IMAGE_SUFFIXES for p in drivings.iterdir()):
        videos = [drivings]        # an image sequence
    else:
        videos = listing(drivings, VIDEO_SUFFIXES, "driving video")
    return [(ref, video) for ref in refs for video in videos]


def animate(reference, driving, out=None, settings: AnimateSettings = None,
            progress: Optional[ProgressCallback] = None, *, preview_only: bool = False) -> AnimateResult:
    """One photo + one driving video -> a clip; see the module docstring and `Animator.animate`."""
    return Animator(settings, progress).animate(reference, driving, out, preview_only=preview_only)


def animate_batch(references, drivings, out_dir="outputs", settings: AnimateSettings = None,
                  progress: Optional[ProgressCallback] = None, *, preview_only: bool = False) -> BatchResult:
    """Every photo of `references` x every video of `drivings` (files or folders, see `find_pairs`) into
    `out_dir`; failures are collected, not raised (except a model that cannot load)."""
    return Animator(settings, progress).animate_batch(find_pairs(references, drivings), out_dir,
                                                      preview_only=preview_only)


__all__ = ["Animator", "AnimateResult", "BatchResult", "OutputPaths", "ModelLoadError", "animate",
           "animate_batch", "find_pairs", "generation_size", "error_line"]
