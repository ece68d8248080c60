"""The names of what `animate` writes: `<photo>_<video>.mp4` for a pair, every pair of a batch named apart, and
long input names shortened so that the clip, its comparison, its preview and its pose folder stay within a file
system's 255 bytes per name."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import List, Sequence, Tuple

NAME_BYTES = 80     # a file name part longer than this (UTF-8) is shortened, with a hash of the whole name


def output_label(path: Path, with_suffix: bool = False) -> str:
    """A file's stem for an output name (`me`; `me-jpg` with its suffix), shortened to NAME_BYTES with a hash of
    the full name so that two long names stay apart and the clip's names stay within a file system's 255 bytes."""
    path = Path(path)
    label = f"{path.stem}-{path.suffix[1:]}" if with_suffix and path.suffix else path.stem
    if len(label.encode()) <= NAME_BYTES:
        return label
    digest = hashlib.sha256(path.name.encode()).hexdigest()[:8]
    return label.encode()[:NAME_BYTES - 9].decode(errors="ignore") + "-" + digest


def clip_name(reference, driving) -> str:
    """`<photo>_<video>.mp4`, the default clip name of a pair (long names shortened, see `output_label`)."""
    return f"{output_label(reference)}_{output_label(driving)}.mp4"


def batch_clip_names(pairs: Sequence[Tuple[Path, Path]]) -> List[str]:
    """The clip name of every pair of a batch, all different: an input whose stem another input of its side shares
    (`me.jpg`, `me.png`) is named with its suffix too (`me-jpg_dance.mp4`, `me-png_dance.mp4`). Names that still
    coincide (also in letter case: one file on macOS and Windows) are refused before any work, naming both pairs."""
    def labels(paths) -> dict:
        stems = {}
        for path in dict.fromkeys(paths):
            stems.setdefault(Path(path).stem.casefold(), []).append(path)
        return {path: output_label(path, with_suffix=len(group) > 1) for group in stems.values() for path in group}

    refs, drivings = labels(p for p, _ in pairs), labels(d for _, d in pairs)
    names, seen = [], {}
    for reference, driving in pairs:
        name = f"{refs[reference]}_{drivings[driving]}.mp4"
        other = seen.setdefault(name.casefold(), (reference, driving))
        if other != (reference, driving):
            raise ValueError(f"{Path(other[0]).name} x {Path(other[1]).name} and {Path(reference).name} x "
                             f"{Path(driving).name} would both write {name}: rename one of the inputs")
        names.append(name)
    return names


__all__ = ["clip_name", "batch_clip_names", "output_label", "NAME_BYTES"]
