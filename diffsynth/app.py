"""The web UI: `python -m diffsynth.app [--models tiny|DIR] [--host H] [--port P] [--share]` (gradio, the `app` extra).

Upload a photo and a driving video (or pick an existing pose folder), check the aligned poses with "Preview poses",
choose the resolution, steps, guidance, step cache, fast preset and seed, and "Generate": a progress bar with an ETA
follows the denoising steps, and the clip and its [reference | pose | generated] comparison appear ready to play and
download. Jobs queue (one runs at a time, the others wait with their position shown). Everything runs through
`diffsynth.animate.Animator`, the CLI's engine; the models are loaded once per process (`ModelCache`). Each job
writes into a new folder `outputs/app/<time>-<id>/`, so no file is ever replaced. See docs/app.md.

The module imports gradio only in `build_app` / `main`: the helpers below (controls -> `AnimateSettings`, progress
with ETA, the job functions) work, and are tested, without it.
"""
from __future__ import annotations

import argparse
import json
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

from .animate.names import clip_name, output_label
from .animate.run import AnimateResult, Animator, OutputPaths, error_line, generation_size
from .animate.settings import DEFAULT_PROMPT, TINY, VRAM_TIERS, AnimateSettings, ProgressEvent
from .data.safe_write import check_output_file, make_folder
from .configs import DEMO_HEIGHT, DEMO_INFERENCE, DEMO_WIDTH
from .pose.backends import BACKENDS

CACHES = ("none", "TeaCache", "MagCache")
DEFAULT_THRESHOLDS = {"TeaCache": 0.2, "MagCache": 0.12}
RESOLUTIONS = ("480p", "720p")
# Defaults with --models tiny: the demo model's own size and steps (a clip in seconds on a CPU).
TINY_RESOLUTION, TINY_STEPS = str(DEMO_HEIGHT * DEMO_WIDTH), DEMO_INFERENCE["num_inference_steps"]
# Where each stage sits on the overall progress bar (start, end).
# Decoding (a third of a job's time at 480p) has its own span: after the steps for short clips, inside "write" when
# long videos are decoded while they are written.
STAGE_SPANS = {"poses": (0.0, 0.1), "load": (0.1, 0.15), "encode": (0.15, 0.2), "generate": (0.2, 0.75),
               "decode": (0.75, 0.8), "write": (0.8, 1.0), "done": (1.0, 1.0)}


@dataclass
class AppConfig:
    """What the process is started with (the command-line flags); the per-job controls come from the page."""

    models: str = "checkpoints"
    vram: str = "all"
    loras: Tuple[str, ...] = ()
    outputs: Path = Path("outputs/app")
    pose_root: Optional[Path] = None               # where "pick a pose folder" looks (default: `outputs`'s parent)
    pose_backend: str = "auto"
    det_model: Optional[str] = None
    pose_model: Optional[str] = None
    resolution: str = "480p"                       # the controls' initial values
    steps: int = 50

    @property
    def pose_search_root(self) -> Path:
        return Path(self.pose_root) if self.pose_root is not None else Path(self.outputs).parent


# ---------------------------------------------------------------------------------------------------- settings
def settings_from_controls(config: AppConfig, resolution: str, steps, cfg, cache: str, threshold, fast: bool,
                           seed, prompt: str = "") -> AnimateSettings:
    """The page's controls as validated `AnimateSettings` (ValueError naming the control otherwise).

    `cache` is one of CACHES, with `threshold` its threshold; `steps` and `seed` arrive as floats from number
    boxes and must be whole numbers."""
    def whole(name: str, value) -> int:
        if value is None or float(value) != int(float(value)):
            raise ValueError(f"{name} must be a whole number; got {value!r}")
        return int(float(value))

    if cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}; got {cache!r}")
    thresh = None if cache == "none" else (DEFAULT_THRESHOLDS[cache] if threshold is None else float(threshold))
    return AnimateSettings(
        models=config.models, vram=config.vram, loras=tuple(config.loras), resolution=str(resolution).strip(),
        steps=whole("steps", steps), cfg=float(cfg), seed=whole("seed", seed), fast=bool(fast),
        teacache=thresh if cache == "TeaCache" else None, magcache=thresh if cache == "MagCache" else None,
        prompt=(prompt or "").strip() or DEFAULT_PROMPT, pose_backend=config.pose_backend,
        det_model=config.det_model, pose_model=config.pose_model).validate()


# ------------------------------------------------------------------------------------------------------ models
class ModelCache:
    """The loaded pipeline, kept for the life of the process: each (models, vram, loras, device) loads once.
    Loading another set first drops the one held (two 14B models would not fit). Thread-safe."""

    def __init__(self, loader: Optional[Callable] = None):
        self._loader = loader
        self._pipes: dict = {}
        self._lock = threading.Lock()

    @staticmethod
    def key(settings: AnimateSettings) -> tuple:
        return settings.models, settings.vram, tuple(settings.loras), settings.device

    def cached(self, settings: AnimateSettings):
        """The pipeline for `settings` if it is loaded, else None."""
        return self._pipes.get(self.key(settings))

    def get(self, settings: AnimateSettings):
        """The pipeline for `settings`, loading it on first use (the `loader` an `Animator` calls)."""
        with self._lock:
            key = self.key(settings)
            if key not in self._pipes:
                from .animate.models import load_pipeline  # noqa: PLC0415

                self._pipes.clear()
                self._pipes[key] = (self._loader or load_pipeline)(settings)
            return self._pipes[key]


# ---------------------------------------------------------------------------------------------------- progress
def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressReporter:
    """`ProgressEvent`s -> `report(overall fraction, text)`: one bar across the stages (STAGE_SPANS), and during
    the denoising steps an ETA from the time per step measured so far."""

    def __init__(self, report: Callable[[float, str], None], clock: Callable[[], float] = time.monotonic):
        self.report, self.clock = report, clock
        self._started: Optional[float] = None

    def __call__(self, event: ProgressEvent) -> None:
        start, end = STAGE_SPANS.get(event.stage, (0.0, 0.0))
        overall = start + (end - start) * (event.fraction or 0.0)
        text = f"{event.stage}: {event.message}" if event.message else event.stage
        if event.stage == "generate" and event.total:
            if event.done == 0 or self._started is None:
                self._started = self.clock()
                text = f"denoising: step 0/{event.total}"
            else:
                per_step = (self.clock() - self._started) / event.done
                text = (f"denoising: step {event.done}/{event.total}, {per_step:.1f} s/step, "
                        f"ETA {format_seconds(per_step * (event.total - event.done))}")
        self.report(overall, text)


# -------------------------------------------------------------------------------------------------------- jobs
def new_job_folder(outputs) -> Path:
    """A new, empty folder `outputs/<YYYYmmdd-HHMMSS>-<random>` (never an existing one)."""
    root = make_folder(outputs)
    for _ in range(100):
        folder = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new job folder in {root}")


def find_pose_folders(root, limit: int = 200) -> List[str]:
    """Pose folders (run_align_pose outputs: pose.jpg and poses.json) under `root`, newest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.rglob("poses.json") if (p.parent / "pose.jpg").is_file()]
    return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)[:limit]]


@dataclass
class JobResult:
    """What a job hands back to the page."""

    video: Optional[Path] = None
    comparison: Optional[Path] = None
    preview: Optional[Path] = None
    folder: Optional[Path] = None
    lines: List[str] = field(default_factory=list)
    result: Optional[AnimateResult] = None


class Jobs:
    """The page's two actions, without gradio: `preview` (poses only) and `generate`, each into a new job folder.

    A generation reuses the poses of the last preview or generation of the same inputs (the pose folder is copied
    and `prepare_poses` checks its record, so a stale copy is simply recomputed)."""

    def __init__(self, config: AppConfig, models: Optional[ModelCache] = None):
        self.config = config
        self.models = models or ModelCache()
        self._last_poses: dict = {}             # (photo, driving) -> the last pose folder made for them

    def _animator(self, settings: AnimateSettings, progress) -> Animator:
        return Animator(settings, progress=progress, pipeline=self.models.cached(settings), loader=self.models.get)

    @staticmethod
    def _clip_name(photo: Path, driving: Path) -> str:
        """`<photo>_<video>.mp4`; an upload's long name is shortened (with a hash of it), so that the job's file
        names stay within the file system's 255 bytes."""
        return clip_name(photo, driving)

    def preview(self, photo, driving, settings: AnimateSettings, progress=None) -> JobResult:
        """Extract and align the poses of `driving` to `photo` and write the check video."""
        photo, driving = self._inputs(photo, driving)
        folder = new_job_folder(self.config.outputs)
        result = self._animator(settings, progress).animate(photo, driving, folder / self._clip_name(photo, driving),
                                                            preview_only=True)
        self._last_poses[(photo, driving)] = result.pose_dir
        return JobResult(preview=result.preview, folder=folder, lines=result.lines(), result=result)

    def generate(self, photo, driving, settings: AnimateSettings, progress=None, pose_folder=None) -> JobResult:
        """The clip and its comparison, from a photo and a driving video, or from an existing pose folder."""
        if pose_folder:
            return self._generate_from_poses(photo, Path(pose_folder), settings, progress)
        photo, driving = self._inputs(photo, driving)
        folder = new_job_folder(self.config.outputs)
        out = folder / self._clip_name(photo, driving)
        previous = self._last_poses.get((photo, driving))
        if previous is not None and previous.is_dir():
            shutil.copytree(previous, OutputPaths.for_clip(out).poses, symlinks=True)
        result = self._animator(settings, progress).animate(photo, driving, out)
        self._last_poses[(photo, driving)] = result.pose_dir
        return JobResult(video=result.video, comparison=result.comparison, folder=folder, lines=result.lines(),
                         result=result)

    @staticmethod
    def _inputs(photo, driving) -> Tuple[Path, Path]:
        if not photo:
            raise ValueError("upload a photo of the person first")
        if not driving:
            raise ValueError("upload a driving video (or pick a pose folder) first")
        return Path(photo), Path(driving)

    def _generate_from_poses(self, photo, pose_dir: Path, settings: AnimateSettings, progress) -> JobResult:
        """Generate along an existing run_align_pose folder (its poses are already aligned to its reference: the
        folder's reference.png, else the uploaded photo). The generation size is the folder's canvas."""
        from .animate.media import check_photo  # noqa: PLC0415
        from .animate.poses import PoseFolder  # noqa: PLC0415
        from .data.pose_folder import POSES_FILE, REFERENCE_IMAGE_FILE, list_pose_frames  # noqa: PLC0415
        from .pose.sources import read_image  # noqa: PLC0415

        start = time.perf_counter()
        if not pose_dir.is_dir():
            raise FileNotFoundError(f"pose folder {pose_dir} not found; refresh the list")
        try:
            document = json.loads((pose_dir / POSES_FILE).read_text(encoding="utf-8"))
            fps = float(document["source"]["fps"])
            canvas = tuple(int(v) for v in document["canvas"]) if document.get("canvas") else None
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"cannot read {pose_dir / POSES_FILE} ({type(error).__name__}: "
                             f"{' '.join(str(error).split())[:200]}): pick another pose folder, or make this one "
                             f"again with run_align_pose.py --overwrite") from None
        reference = pose_dir / REFERENCE_IMAGE_FILE
        if not reference.is_file():
            if not photo:
                raise ValueError(f"pose folder {pose_dir} has no {REFERENCE_IMAGE_FILE}: upload the photo its "
                                 f"poses were aligned to")
            reference = Path(photo)
        check_photo(reference, settings.max_photo_pixels)     # an unreadable or huge upload, before decoding it
        image = read_image(reference)
        size = canvas if canvas and not (canvas[0] % 16 or canvas[1] % 16) else \
            generation_size(image.shape[1], image.shape[0], settings)
        settings = settings.with_(size=size)
        frames = list_pose_frames(pose_dir)       # names an unreadable, missing or changed frame before any work
        folder = new_job_folder(self.config.outputs)
        paths = OutputPaths.for_clip(folder / f"{output_label(pose_dir, with_suffix=True)}.mp4")
        for path in (paths.video, paths.comparison):
            check_output_file(path, inputs=[reference])
        poses = PoseFolder(pose_dir, reference, len(frames), fps, size, True)
        result = AnimateResult(reference, pose_dir, pose_dir, size, fps / settings.stride, True)
        animator = self._animator(settings, progress)
        animator.generate_along_poses(poses, result, paths)
        result.seconds = time.perf_counter() - start
        animator.emit("done", 1, 1, f"done in {result.seconds:.1f} s")
        return JobResult(video=result.video, comparison=result.comparison, folder=folder, lines=result.lines(),
                         result=result)


# ------------------------------------------------------------------------------------------------------ the UI
def build_app(config: AppConfig, jobs: Optional[Jobs] = None):
    """The gradio Blocks of the page (not launched). `jobs` defaults to a `Jobs(config)` holding its own models."""
    import gradio as gr  # noqa: PLC0415

    jobs = jobs or Jobs(config)

    def run(action: str, photo, driving, pose_folder, resolution, steps, cfg, cache, threshold, fast, seed, prompt,
            progress):
        bar = ProgressReporter(lambda fraction, text: progress(fraction, desc=text))
        try:
            settings = settings_from_controls(config, resolution, steps, cfg, cache, threshold, fast, seed, prompt)
            if action == "preview":
                if pose_folder:
                    raise ValueError("the preview aligns a driving video; a pose folder is already aligned")
                return jobs.preview(photo, driving, settings, bar)
            return jobs.generate(photo, driving, settings, bar, pose_folder=pose_folder or None)
        except Exception as error:  # noqa: BLE001 - every failure is one line on the page
            raise gr.Error(error_line(error), print_exception=False) from error

    def on_preview(photo, driving, pose_folder, *controls, progress=gr.Progress()):
        job = run("preview", photo, driving, pose_folder, *controls, progress)
        return str(job.preview), "\n".join(job.lines)

    def on_generate(photo, driving, pose_folder, *controls, progress=gr.Progress()):
        job = run("generate", photo, driving, pose_folder, *controls, progress)
        return str(job.video), str(job.comparison), [str(job.video), str(job.comparison)], "\n".join(job.lines)

    with gr.Blocks(title="UniAnimate-DiT") as app:
        gr.Markdown("# UniAnimate-DiT: animate a photo\nA photo of a person + a driving video -> a video of that "
                    f"person doing the motion. Models: `{config.models}`"
                    + (" (the tiny demo model, trained on synthetic mannequins: a smoke test, not an animation of "
                       "people)" if config.models == TINY else "")
                    + ". Jobs run one at a time; others wait in the queue.")
        with gr.Row():
            with gr.Column():
                photo = gr.Image(label="Photo of the person", type="filepath", sources=["upload"],
                                 height=260, elem_id="photo")
                driving = gr.Video(label="Driving video", sources=["upload"], height=260, elem_id="driving")
                with gr.Row():
                    pose_folder = gr.Dropdown(
                        label=f"...or an existing pose folder (under {config.pose_search_root})",
                        choices=[""] + find_pose_folders(config.pose_search_root), value="", elem_id="pose_folder")
                    refresh = gr.Button("Refresh list", size="sm")
            with gr.Column():
                with gr.Row():
                    resolution = gr.Dropdown(label="Resolution (area; shape follows the photo)",
                                             choices=list(dict.fromkeys([config.resolution, *RESOLUTIONS])),
                                             value=config.resolution, allow_custom_value=True)
                    steps = gr.Number(label="Steps", value=config.steps, precision=0, minimum=1, elem_id="steps")
                    cfg = gr.Number(label="Guidance (cfg)", value=1.5, minimum=1, step=0.1)
                with gr.Row():
                    cache = gr.Radio(label="Step cache", choices=list(CACHES), value="none")
                    threshold = gr.Number(label="Cache threshold", value=0.2, minimum=0, step=0.01)
                with gr.Row():
                    fast = gr.Checkbox(label="Fast (4 steps; needs a step-distillation LoRA, --lora)")
                    seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                prompt = gr.Textbox(label="Prompt", value=DEFAULT_PROMPT)
                with gr.Row():
                    preview_button = gr.Button("Preview poses", elem_id="preview")
                    generate_button = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row():
            preview = gr.Video(label="Aligned poses [driving + raw pose | photo + aligned pose]", height=300,
                               elem_id="preview_video")
            video = gr.Video(label="Result", height=300, elem_id="result_video")
            comparison = gr.Video(label="[reference | pose | generated]", height=300, elem_id="comparison_video")
        downloads = gr.File(label="Downloads", file_count="multiple")
        info = gr.Textbox(label="Details", lines=5, interactive=False, elem_id="info")

        controls = [photo, driving, pose_folder, resolution, steps, cfg, cache, threshold, fast, seed, prompt]
        preview_button.click(on_preview, controls, [preview, info])
        generate_button.click(on_generate, controls, [video, comparison, downloads, info])
        cache.change(lambda c: DEFAULT_THRESHOLDS.get(c, 0.2), cache, threshold)
        refresh.click(lambda: gr.Dropdown(choices=[""] + find_pose_folders(config.pose_search_root)), None,
                      pose_folder)
    app.queue(default_concurrency_limit=1)
    return app


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


if __name__ == "__main__":
    raise SystemExit(main())
