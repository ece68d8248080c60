"""The LoRAs of a `ModelManager.load_lora_v2` call: its argument as (spec, strength) entries, each strength checked
(`lora_entries`), and the record kept of each merged LoRA (`MergedLora`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

from .files import PathSpec, describe
from .lora_checkpoint import check_strength


@dataclass(frozen=True)
class MergedLora:
    """One LoRA merged by load_lora_v2: what was given, the files it resolved to (a pose-guider file found beside
    it included), the content digest and the strength it was merged with."""

    path: Any
    files: Tuple[Path, ...]
    digest: str
    strength: float = 1.0


LoraSpec = Union[PathSpec, Tuple[PathSpec, float], Sequence[Tuple[PathSpec, float]]]


def _is_weighted(item: Any) -> bool:
    """`(spec, strength)`: a 2-tuple whose second item is a real number (a path never is)."""
    return (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], (int, float))
            and not isinstance(item[1], bool))


def lora_entries(file_path: LoraSpec, lora_alpha: float) -> List[Tuple[PathSpec, float]]:
    """The (spec, strength) pairs of a load_lora_v2 call. A plain path or list is ONE LoRA (a list: its shards)
    merged at `lora_alpha`; `(spec, strength)` or a list of such pairs is one LoRA per pair. Every strength is
    checked (`check_strength`: NaN/Inf refused naming the value, 0 or negative warned)."""
    if _is_weighted(file_path):
        pairs = [file_path]
    elif isinstance(file_path, (list, tuple)) and file_path and all(_is_weighted(x) for x in file_path):
        pairs = list(file_path)
    elif isinstance(file_path, (list, tuple)) and any(isinstance(x, tuple) for x in file_path):
        raise ValueError("load_lora_v2 takes a path, a list of shards of ONE LoRA, or a list of (path, strength) "
                         f"pairs for several LoRAs; got a mixture: {file_path!r}")
    else:
        return [(file_path, check_strength(lora_alpha, describe(file_path)))]
    if lora_alpha != 1.0:
        raise ValueError(f"load_lora_v2 got (path, strength) pairs and lora_alpha={lora_alpha}: give each LoRA's "
                         "strength in its pair, and leave lora_alpha at 1.0")
    return [(spec, check_strength(strength, describe(spec))) for spec, strength in pairs]



__all__ = ["MergedLora", "LoraSpec", "lora_entries"]
