"""Why a list of files does not load as one model: files that hold different models side by side, or shards
without the first one. Only the error messages; `plan.py` decides when to ask."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .checks import StateDictDiff, summarize_keys
from .errors import CheckpointError
from .files import Checkpoint, CheckpointFile
from .formats import UnknownFormatError, closest_layout, detect, looks_like_lora

if TYPE_CHECKING:
    from .plan import LoadPlan


def different_models(source: str, lines: List[str]) -> CheckpointError:
    return CheckpointError(f"{source}: these files hold different models:\n  " + "\n  ".join(lines)
                           + "\nA list of files is one model in shards: give each model its own entry, e.g. "
                           "load_models([[dit_shard_1, dit_shard_2], vae_path]).")


def _identify(f: CheckpointFile) -> Optional[str]:
    """The model one file holds on its own, when it is complete enough to be recognised."""
    try:
        return detect({k: v.shape for k, v in f.infos.items()}, str(f.path)).label
    except CheckpointError:
        return None


def conflicting_shapes(checkpoint: Checkpoint) -> Optional[List[str]]:
    """Lines naming a tensor stored in two files with different shapes (shards of one model never do that)."""
    seen: Dict[str, Tuple[Path, Tuple[int, ...]]] = {}
    for f in checkpoint.files:
        for key, info in f.infos.items():
            if key in seen and seen[key][1] != info.shape:
                first, shape = seen[key]
                return [f"{first.name}: {key} {list(shape)}",
                        f"{f.path.name}: {key} {list(info.shape)} (same name, another shape)"]
            seen[key] = (f.path, info.shape)
    return None


def _identify_each(checkpoint: Checkpoint) -> Optional[List[str]]:
    """When files recognised on their own hold different models: one line per file, else None."""
    labels = [_identify(f) for f in checkpoint.files]
    if len({label.split(" (")[0] for label in labels if label}) < 2:
        return None
    return [f"{f.path.name}: {label or 'not recognised on its own (a shard of one of the others?)'}"
            for f, label in zip(checkpoint.files, labels)]


def explain_unknown_list(checkpoint: Checkpoint, source: str, error: UnknownFormatError) -> None:
    """A list that matches no format: different models side by side, or shards without the first one."""
    mixed = _identify_each(checkpoint)
    if mixed:
        raise different_models(source, mixed) from None
    shapes = checkpoint.shapes
    closest = None if looks_like_lora(shapes) else closest_layout(shapes)
    if closest is not None and closest[1]:
        layout, absent = closest
        raise CheckpointError(
            f"{source}: the list of {len(checkpoint.files)} files looks incomplete: its tensors look like "
            f"{layout.label} ({summarize_keys(shapes, limit=3)}) but {', '.join(absent)} "
            f"{'is' if len(absent) == 1 else 'are'} missing.\nPass every shard (a list, or the folder).") from error


def files_that_do_not_fit(plan: "LoadPlan", diff: StateDictDiff) -> Optional[List[str]]:
    """Lines for a list where some files fit the model exactly and others mostly do not; else None."""
    det = plan.detection
    if det.layout.convert is not None:        # keys are combined: no per-file attribution
        return None
    bad, infos = diff.bad_keys, plan.checkpoint.infos
    shapes = {k: (found, want) for k, found, want in diff.mismatched}
    fitting, foreign = [], []
    for f in plan.checkpoint.files:
        official = [det.key_map[k] for k in f.infos if k in det.key_map and infos[k].file == f.path]
        n_bad = sum(k in bad for k in official)
        if official and n_bad == 0:
            fitting.append(f.path.name)
        elif official and 2 * n_bad > len(official):
            example = next(k for k in official if k in bad)
            why = (f"e.g. {example}: file {list(shapes[example][0])}, model {list(shapes[example][1])}"
                   if example in shapes else f"e.g. {example} is not part of it")
            label = _identify(f)
            foreign.append(f"{f.path.name}: {label or 'another model'}; {n_bad} of {len(official)} tensors do not "
                           f"fit the {det.model} of the others ({why})")
    if not (fitting and foreign):
        return None
    return [f"{', '.join(fitting)}: {det.label}, {type(plan.model).__name__}({plan.config})"] + foreign


__all__ = ["different_models", "conflicting_shapes", "explain_unknown_list", "files_that_do_not_fit"]
