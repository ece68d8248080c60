"""The page's two actions without gradio (`Jobs`: preview poses, generate), the models they share (`ModelCache`)
and their job folders."""
from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from ..animate.names import clip_name, output_label
from ..animate.run import AnimateResult, Animator, OutputPaths, generation_size
from ..animate.settings import AnimateSettings
from ..data.safe_write import check_output_file, make_folder
from .controls import AppConfig


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
                from ..animate.models import load_pipeline  # noqa: PLC0415

                self._pipes.clear()
                self._pipes[key] = (self._loader or load_pipeline)(settings)
            return self._pipes[key]


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
        from ..animate.media import check_photo  # noqa: PLC0415
        from ..animate.poses import PoseFolder  # noqa: PLC0415
        from ..data.pose_folder import POSES_FILE, REFERENCE_IMAGE_FILE, list_pose_frames  # noqa: PLC0415
        from ..pose.sources import read_image  # noqa: PLC0415

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

