"""Key and shape checks shared by the loaders: compare what a checkpoint holds with what a model expects, and
say it compactly (`blocks 20-39` rather than 800 key names).

    diff = compare_state_dict(expected_tensors(model), checkpoint.shapes, optional=kind.optional)
    if not diff.ok:
        raise CheckpointError("...:\\n  " + "\\n  ".join(diff.lines()))
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple, Union

import torch

Shape = Tuple[int, ...]
ShapeOrTensor = Union[Shape, Sequence[int], torch.Tensor, torch.Size]

# The first numbered segment of a key: `blocks.12.ffn.0.weight` -> ("blocks", 12, "ffn.0.weight").
_NUMBERED = re.compile(r"^(?P<stem>.+?)\.(?P<index>\d+)\.(?P<rest>.+)$")


def _shape(value: ShapeOrTensor) -> Shape:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(value)


@dataclass
class StateDictDiff:
    """What a checkpoint lacks, has in excess, and has in the wrong shape, relative to a model."""

    expected: Dict[str, Shape] = field(repr=False)
    missing: List[str]
    unexpected: List[str]
    mismatched: List[Tuple[str, Shape, Shape]]      # (key, shape found, shape expected)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    @property
    def bad_keys(self) -> set:
        """Keys present in the checkpoint that do not fit (unexpected or of the wrong shape)."""
        return set(self.unexpected) | {k for k, _, _ in self.mismatched}

    def lines(self, limit: int = 6) -> List[str]:
        """One line per kind of problem; missing keys summarised by block ranges."""
        out = []
        if self.missing:
            out.append(f"{len(self.missing)} missing: {summarize_keys(self.missing, self.expected, limit)}")
        if self.unexpected:
            out.append(f"{len(self.unexpected)} unexpected: {summarize_keys(self.unexpected, limit=limit)}")
        if self.mismatched:
            shown = [f"{k}: file {list(f)}, model {list(e)}" for k, f, e in self.mismatched[:limit]]
            out.append(f"{len(self.mismatched)} shape mismatches: " + "; ".join(shown)
                       + (" ..." if len(self.mismatched) > limit else ""))
        return out


def compare_state_dict(expected: Mapping[str, ShapeOrTensor], found: Mapping[str, ShapeOrTensor],
                       optional: Iterable[str] = ()) -> StateDictDiff:
    """Compare names and shapes (tensors or shapes on either side). `optional` keys may be absent."""
    want = {k: _shape(v) for k, v in expected.items()}
    have = {k: _shape(v) for k, v in found.items()}
    optional = set(optional)
    return StateDictDiff(
        expected=want,
        missing=[k for k in want if k not in have and k not in optional],
        unexpected=[k for k in have if k not in want],
        mismatched=[(k, have[k], want[k]) for k in have if k in want and have[k] != want[k]],
    )


def format_ranges(indices: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    values = sorted(set(indices))
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def summarize_keys(keys: Iterable[str], universe: Mapping[str, object] = None, limit: int = 6) -> str:
    """Compact form of a key list: numbered blocks that are wholly in `keys` become ranges ("blocks 20-39"),
    partly present blocks are counted ("blocks.19: 7 of 22 tensors"), other keys are listed (up to `limit`).
    Without `universe` (every key that could exist) a block counts as whole when any of its keys is listed."""
    keys = sorted(set(keys))
    groups: Dict[Tuple[str, int], List[str]] = {}
    loose: List[str] = []
    for key in keys:
        m = _NUMBERED.match(key)
        if m:
            groups.setdefault((m.group("stem"), int(m.group("index"))), []).append(key)
        else:
            loose.append(key)
    sizes: Dict[Tuple[str, int], int] = {}
    if universe is not None:
        for key in universe:
            m = _NUMBERED.match(key)
            if m:
                group = (m.group("stem"), int(m.group("index")))
                sizes[group] = sizes.get(group, 0) + 1
    whole: Dict[str, List[int]] = {}
    partial: List[str] = []
    for (stem, index), members in groups.items():
        total = sizes.get((stem, index), len(members))
        if len(members) >= total:
            whole.setdefault(stem, []).append(index)
        else:
            partial.append(f"{stem}.{index}: {len(members)} of {total} tensors (e.g. {members[0]})")
    parts = [f"{stem} {format_ranges(indices)}" if len(indices) > 1 else f"{stem}.{indices[0]}.*"
             for stem, indices in sorted(whole.items())]
    parts += partial[:limit] + ([f"... ({len(partial)} partial blocks)"] if len(partial) > limit else [])
    if loose:
        parts.append(", ".join(loose[:limit]) + (f", ... ({len(loose)} other keys)" if len(loose) > limit else ""))
    return "; ".join(parts)


__all__ = ["StateDictDiff", "compare_state_dict", "summarize_keys", "format_ranges"]
