"""`UniAnimateDataset`: training clips from a folder of sample folders (upstream spec 7.2, made robust).

A sample folder is what `prepare_training_data.py` writes (`frames/`, `poses/`, `meta.json`; see
docs/training_data.md) or upstream's pickles (`frame_data.pkl` + `dw_pose_with_foot_wo_face.pkl`, read with a
restricted unpickler). Per item, with one seeded generator:

1. Clip: `stride = randint(1, frame_interval)`, `cover = stride * F`. A video with at least `cover` frames gives a
   clip at a random start in `[0, N - cover]` (the last frame can be used); a shorter one gives
   `range(0, min(s * F, N), s)` with `s = max(N // F, 1)`, padded by repeating its last frame.
2. Reference frame (and its pose): uniform over the whole video, not only the clip.
3. One random crop shared by every image of the sample: `x1, x2 in [0, W0 // 14]`, `y1, y2 in [0, H0 // 14]`,
   box `(x1, y1, W0 - x2, H0 - y2)`; then a bilinear stretch-resize to (height, width), no aspect preservation.

Item keys: `video` [3, F, H, W] float in [-1, 1]; `dwpose_data` [3, F, H, W] float 0..255; `first_frame` and
`random_ref_dwpose` [H, W, 3] uint8; `text`; `path`; and the draw: `frame_indices` [F], `ref_index` and `crop_box`
(left, top, right, bottom) as integer tensors.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..data.pose_folder import select_frames   # the frame-window rule shared with inference
from .sample_format import (FRAMES_DIR, LEGACY_FRAME_FILE, LEGACY_POSE_FILE, META_FILE, POSES_DIR,
                            load_legacy_pickle, open_rgb)

logger = logging.getLogger(__name__)

DEFAULT_TEXT = "a person is dancing"
CROP_DIVISOR = 14


class SampleError(RuntimeError):
    """A training sample folder that cannot be read."""


def is_sample_folder(folder: Path) -> bool:
    return (folder / META_FILE).is_file() or (folder / LEGACY_FRAME_FILE).is_file()


def find_sample_folders(roots: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]) -> List[Path]:
    """Every sample folder under `roots` (a root may itself be a sample), sorted; a sample folder is never searched
    further. Symlinked folders are followed, but every real folder is visited once: a symlink loop (`loop -> .`)
    neither hangs nor repeats samples, and a sample reachable by several paths counts once (under the first path
    in sorted walk order)."""
    roots = [roots] if isinstance(roots, (str, os.PathLike)) else list(roots)
    found: List[Path] = []
    seen = set()                                         # real paths of the folders visited so far

    def first_visit(folder) -> bool:
        real = os.path.realpath(folder)
        if real in seen:
            return False
        seen.add(real)
        return True

    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"dataset folder not found: {root}")
        if not first_visit(root):
            continue
        if is_sample_folder(root):
            found.append(root)
            continue
        for current, dirs, _ in os.walk(root, followlinks=True):
            current = Path(current)
            if is_sample_folder(current):
                found.append(current)
                dirs[:] = []
            else:
                dirs[:] = [d for d in sorted(dirs) if not d.startswith(".") and first_visit(current / d)]
    if not found:
        raise FileNotFoundError(f"no training samples (folders with {META_FILE}, or upstream {LEGACY_FRAME_FILE}) "
                                f"under {', '.join(map(str, roots))}; make them with prepare_training_data.py")
    return sorted(found)


def check_sample_folder(folder: Path) -> Optional[str]:
    """What makes a sample folder unusable, found from its listing alone (no image is decoded), or None: an
    unreadable meta.json, no frame list, a missing `frames/` or `poses/` folder or a listed file missing from one;
    for upstream pickle folders, a missing pose pickle."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        if not (folder / LEGACY_POSE_FILE).is_file():
            return f"no {LEGACY_POSE_FILE} beside {LEGACY_FRAME_FILE}"
        return None
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        return f"{META_FILE} is unreadable ({type(error).__name__}: {error})"
    names = meta.get("files") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return f"{META_FILE} lists no frames (its \"files\")"
    for sub in (FRAMES_DIR, POSES_DIR):
        if not (folder / sub).is_dir():
            return f"no {sub}/ folder ({META_FILE} lists {len(names)} frames)"
        present = set(os.listdir(folder / sub))
        missing = [n for n in names if n not in present]
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            return f"{sub}/{missing[0]}{more} missing ({META_FILE} lists {len(names)} frames)"
    return None


def sample_content_hash(folder: Path) -> str:
    """sha256 of a sample's content: meta.json and every listed frame and pose file (name and bytes), or upstream's
    two pickles. A data_process cache records it, to notice data that changed after it was encoded."""
    folder = Path(folder)
    digest = hashlib.sha256()

    def add(path: Path, name: str) -> None:
        digest.update(name.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)

    meta_path = folder / META_FILE
    if meta_path.is_file():
        add(meta_path, META_FILE)
        for name in json.loads(meta_path.read_text()).get("files", []):
            for sub in (FRAMES_DIR, POSES_DIR):
                add(folder / sub / name, f"{sub}/{name}")
    else:
        for name in (LEGACY_FRAME_FILE, LEGACY_POSE_FILE):
            add(folder / name, name)
    return digest.hexdigest()


def random_crop_box(width: int, height: int, rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """(left, top, right, bottom) with up to 1/14 of each side cut independently."""
    x1, x2 = (int(v) for v in rng.integers(0, width // CROP_DIVISOR + 1, size=2))
    y1, y2 = (int(v) for v in rng.integers(0, height // CROP_DIVISOR + 1, size=2))
    return x1, y1, width - x2, height - y2


class UniAnimateDataset(Dataset):
    """Clips, poses and a reference frame from sample folders.

    Args:
        dataset_path: a folder of sample folders (searched recursively), one sample folder, or a list of them.
        num_frames, height, width: clip size after selection and resizing (4k+1 frames, multiples of 16).
        frame_interval: the stride is drawn from 1..frame_interval (upstream uses 1).
        samples_per_epoch: dataset length (item i uses video i mod #videos); default one item per video.
        seed: with a seed, item i of epoch e is always the same (see `set_epoch`); None draws fresh randomness.
        text: caption for samples whose meta.json has no "text" (upstream always uses "a person is dancing").
        max_retries: on an unreadable sample, log a warning and try this many other videos before raising
            (default 0: the first unreadable sample stops with an error naming its folder; a bad sample is never
            replaced silently).

    Every sample folder is checked when the dataset is made (`check_sample_folder`: meta.json, `frames/`,
    `poses/`, every listed file), so a broken one is named before any model loads.
    """

    def __init__(self, dataset_path, num_frames: int = 81, height: int = 832, width: int = 480,
                 frame_interval: int = 1, samples_per_epoch: Optional[int] = None, seed: Optional[int] = None,
                 text: str = DEFAULT_TEXT, max_retries: int = 0):
        if num_frames < 1 or (num_frames - 1) % 4:
            raise ValueError(f"num_frames must be 4k+1 (e.g. 81); got {num_frames}")
        if height % 16 or width % 16:
            raise ValueError(f"height x width must be multiples of 16; got {height}x{width}")
        if frame_interval < 1:
            raise ValueError(f"frame_interval must be >= 1; got {frame_interval}")
        self.folders = find_sample_folders(dataset_path)
        problems = [(f, problem) for f in self.folders for problem in [check_sample_folder(f)] if problem]
        if problems:
            listed = "; ".join(f"{folder}: {problem}" for folder, problem in problems[:3])
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise SampleError(f"{len(problems)} of {len(self.folders)} training samples cannot be used: {listed}"
                              f"{more}. Redo them with prepare_training_data.py --overwrite, or move them out of the "
                              "dataset folder")
        if samples_per_epoch is not None and samples_per_epoch < 1:
            raise ValueError(f"--steps_per_epoch must be >= 1; got {samples_per_epoch}")
        self.num_frames, self.height, self.width = num_frames, height, width
        self.frame_interval = frame_interval
        self.samples_per_epoch = samples_per_epoch
        self.seed, self.epoch = seed, 0
        self.text = text
        self.max_retries = max_retries

    def __len__(self) -> int:
        return self.samples_per_epoch or len(self.folders)

    def set_epoch(self, epoch: int) -> None:
        """Seeded datasets draw other clips/crops each epoch (call before the epoch's workers start)."""
        self.epoch = epoch

    def rng(self, index: int, attempt: int = 0) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        return np.random.default_rng([self.seed, self.epoch, index, attempt])

    def __getitem__(self, index: int) -> dict:
        errors = []
        for attempt in range(self.max_retries + 1):
            rng = self.rng(index, attempt)
            folder = self.folders[index % len(self.folders) if attempt == 0 else int(rng.integers(len(self.folders)))]
            try:
                return self.load_sample(folder, rng)
            except Exception as error:  # noqa: BLE001 - reported below with the folder's name
                errors.append(f"{folder}: {type(error).__name__}: {error}")
                if attempt < self.max_retries:
                    logger.warning("skipping unreadable training sample %s (%s); trying another", folder, error)
        if len(errors) == 1:
            raise SampleError(f"training sample {errors[0]}. Fix or remove that sample folder (then --resume needs "
                              "--steps_per_epoch with the old number of items per epoch)")
        raise SampleError(f"could not read {len(errors)} training samples: " + "; ".join(errors))

    def content_hashes(self) -> dict:
        """{sample folder: `sample_content_hash`}, computed once."""
        if getattr(self, "_hashes", None) is None:
            self._hashes = {str(folder): sample_content_hash(folder) for folder in self.folders}
        return self._hashes

    # --------------------------------------------------------------------------------------------- one sample
    def load_sample(self, folder: Path, rng: np.random.Generator) -> dict:
        count, text, read = self._open(folder)
        stride = int(rng.integers(1, self.frame_interval + 1))
        indices = select_frames(count, self.num_frames, stride, rng)
        ref_index = int(rng.integers(0, count))
        needed = sorted(set(indices) | {ref_index})
        images = dict(zip(needed, read(needed)))            # index -> (frame, pose)
        ref_frame, ref_pose = images[ref_index]
        box = random_crop_box(*ref_frame.size, rng)
        for i, (frame, pose) in images.items():
            if frame.size != ref_frame.size or pose.size != ref_frame.size:
                raise SampleError(f"frame {i} is {frame.size} with pose {pose.size}, but frame {ref_index} is "
                                  f"{ref_frame.size}: all frames and poses of a sample must have one size")
        resized = {i: (self._resize(f, box), self._resize(p, box)) for i, (f, p) in images.items()}
        frames = np.stack([resized[i][0] for i in indices])       # [F, H, W, 3] uint8
        poses = np.stack([resized[i][1] for i in indices])
        video = torch.from_numpy(frames).permute(3, 0, 1, 2).float()
        return {
            "text": text,
            "video": (video / 255 - 0.5) / 0.5,
            "dwpose_data": torch.from_numpy(poses).permute(3, 0, 1, 2).float(),
            "first_frame": torch.from_numpy(resized[ref_index][0]),
            "random_ref_dwpose": torch.from_numpy(resized[ref_index][1]),
            "path": str(folder),
            # how the item was drawn (recorded by `--task data_process`)
            "frame_indices": torch.tensor(indices), "ref_index": torch.tensor(ref_index), "crop_box": torch.tensor(box),
        }

    def _resize(self, image: Image.Image, box) -> np.ndarray:
        """Crop, then stretch to (height, width) with PIL bilinear (what torchvision's Resize does on PIL)."""
        return np.asarray(image.crop(box).resize((self.width, self.height), Image.BILINEAR), dtype=np.uint8).copy()

    def _open(self, folder: Path):
        """(frame count, caption, read(indices) -> [(frame, pose)]) for a sample folder of either format."""
        meta_path = folder / META_FILE
        if meta_path.is_file():
            meta = json.loads(meta_path.read_text())
            names = meta["files"]

            def read(indices):
                return [(open_rgb(folder / FRAMES_DIR / names[i]), open_rgb(folder / POSES_DIR / names[i]))
                        for i in indices]
            return len(names), meta.get("text") or self.text, read
        frame_bytes = load_legacy_pickle(folder / LEGACY_FRAME_FILE)
        pose_bytes = load_legacy_pickle(folder / LEGACY_POSE_FILE)
        keys = list(frame_bytes)                               # insertion order is frame order, as upstream

        def read_legacy(indices):
            missing = [keys[i] for i in indices if keys[i] not in pose_bytes]
            if missing:
                raise SampleError(f"{LEGACY_POSE_FILE} has no pose for {missing[0]}")
            return [(open_rgb(io.BytesIO(frame_bytes[keys[i]])), open_rgb(io.BytesIO(pose_bytes[keys[i]])))
                    for i in indices]
        return len(keys), self.text, read_legacy


__all__ = ["UniAnimateDataset", "SampleError", "find_sample_folders", "select_frames", "random_crop_box",
           "check_sample_folder", "sample_content_hash", "DEFAULT_TEXT"]
