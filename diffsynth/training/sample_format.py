"""A training sample folder read back (`read_training_sample`: the layout samples.py writes, `frames/`, `poses/`,
`meta.json`) and upstream's pickle samples read safely (`read_legacy_pickle_sample`: `frame_data.pkl` +
`dw_pose_with_foot_wo_face.pkl`, loaded by an unpickler that builds only dicts, strings and bytes)."""
from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Sequence

from PIL import Image

FRAMES_DIR, POSES_DIR, META_FILE = "frames", "poses", "meta.json"
FORMAT = "diffsynth.training_sample/1"
LEGACY_FRAME_FILE = "frame_data.pkl"
LEGACY_POSE_FILE = "dw_pose_with_foot_wo_face.pkl"


def open_rgb(source) -> Image.Image:
    """An image file (or file-like object) as an RGB PIL image, with the file closed."""
    with Image.open(source) as image:
        return image.convert("RGB")


def read_training_sample(folder: str | Path, indices: Sequence[int] | None = None
                         ) -> tuple[list[Image.Image], list[Image.Image], dict]:
    """(frames, poses, meta) of a sample folder: PIL RGB images in frame order (only `indices` if given).

    Poses come back exactly as the pose JPEGs decode with PIL, i.e. in the colours training has always used.
    """
    folder = Path(folder)
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: not a training sample, or an incomplete one")
    meta = json.loads(meta_path.read_text())
    names = meta["files"]
    chosen = [names[i] for i in (range(len(names)) if indices is None else indices)]
    frames = [open_rgb(folder / FRAMES_DIR / name) for name in chosen]
    poses = [open_rgb(folder / POSES_DIR / name) for name in chosen]
    return frames, poses, meta


class UnsafePickleError(pickle.UnpicklingError):
    """A legacy pickle asked for something other than dict/str/bytes."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only dicts, strings and bytes. Protocols 3+ need no global for those; protocols 0-2 encode bytes as
    `_codecs.encode(str, 'latin1')` (and empty bytes as `bytes()`), so those two callables are allowed too."""

    ALLOWED = {
        ("builtins", "dict"), ("builtins", "str"), ("builtins", "bytes"),
        ("__builtin__", "dict"), ("__builtin__", "str"), ("__builtin__", "bytes"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise UnsafePickleError(
                f"refusing to load {module}.{name}: legacy training pickles may only contain a dict of str -> "
                f"bytes; this file asks for code and may be malicious")
        return super().find_class(module, name)

    def persistent_load(self, pid):
        raise UnsafePickleError("refusing a persistent id in a legacy training pickle")


def load_legacy_pickle(path: str | Path) -> dict[str, bytes]:
    """Upstream's `{"000000.jpg": jpeg_bytes, ...}` pickle, loaded without running any code (see
    `_RestrictedUnpickler`). Raises UnsafePickleError for anything else."""
    with open(path, "rb") as file:
        data = _RestrictedUnpickler(file).load()
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, bytes) for k, v in data.items()):
        raise UnsafePickleError(f"{path}: expected a dict of str -> bytes, got {type(data).__name__}")
    return data


def read_legacy_pickle_sample(path: str | Path, pose_file: str = LEGACY_POSE_FILE
                              ) -> tuple[list[Image.Image], list[Image.Image], dict]:
    """(frames, poses, meta) from upstream's `frame_data.pkl` and `dw_pose_with_foot_wo_face.pkl`.

    `path` is the sample folder (or one of its pickles). Frame order is the frame pickle's key order and each pose
    is looked up by the same key, as upstream's training loader does.
    """
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    frame_bytes = load_legacy_pickle(folder / LEGACY_FRAME_FILE)
    pose_bytes = load_legacy_pickle(folder / pose_file)
    missing = [key for key in frame_bytes if key not in pose_bytes]
    if missing:
        raise KeyError(f"{folder / pose_file} has no pose for {len(missing)} frames (first: {missing[0]})")
    frames = [open_rgb(io.BytesIO(data)) for data in frame_bytes.values()]
    poses = [open_rgb(io.BytesIO(pose_bytes[key])) for key in frame_bytes]
    meta = {"format": "upstream-pickle", "source": str(folder), "num_frames": len(frames), "files": list(frame_bytes),
            "width": frames[0].width if frames else None, "height": frames[0].height if frames else None}
    return frames, poses, meta


__all__ = ["FRAMES_DIR", "POSES_DIR", "META_FILE", "FORMAT", "LEGACY_FRAME_FILE", "LEGACY_POSE_FILE", "open_rgb",
           "read_training_sample", "UnsafePickleError", "load_legacy_pickle", "read_legacy_pickle_sample"]
