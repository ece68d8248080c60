"""Planning a load from the file headers alone: detect the format, decide the configuration (given, written beside
the weights, or read from the shapes), build the model on the meta device and check every key and shape against it
(`plan_load`). Reads no tensor data (except for legacy non-zip `.pth` files)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from .checks import compare_state_dict, summarize_keys
from .errors import CheckpointError
from .files import Checkpoint, PathSpec, describe
from .formats import Detection, UnknownFormatError, detect
from .mixed_files import conflicting_shapes, different_models, explain_unknown_list, files_that_do_not_fit
from .model_kinds import MODEL_KINDS, ConfigError, ModelKind, read_config_json
from .sidecar import read_config_sidecar

logger = logging.getLogger(__name__)

ConfigSpec = Union[Any, Sequence[Any], None]


def expected_tensors(model: nn.Module) -> Dict[str, Tuple[int, ...]]:
    """Names and shapes a checkpoint must provide: parameters and persistent buffers."""
    out = {name: tuple(p.shape) for name, p in model.named_parameters()}
    for mod_name, module in model.named_modules():
        for name, buf in module._buffers.items():
            if buf is not None and name not in module._non_persistent_buffers_set:
                out[f"{mod_name}.{name}" if mod_name else name] = tuple(buf.shape)
    return out


def _check_fit(plan: LoadPlan, config_given: bool) -> None:
    """Every key and shape of the checkpoint against the meta-built model, before any tensor is read."""
    model = plan.model
    diff = compare_state_dict(expected_tensors(model), plan.detection.official_shapes, plan.kind.optional)
    if diff.ok:
        return
    n_files = len(plan.checkpoint.files)
    if n_files > 1:
        foreign = files_that_do_not_fit(plan, diff)
        if foreign:
            raise different_models(plan.source, foreign)
    what = f"{plan.source} ({plan.detection.label})"
    if diff.missing and not (diff.unexpected or diff.mismatched):
        absent = summarize_keys(diff.missing, diff.expected)
        incomplete = (f"the list of {n_files} files looks incomplete" if n_files > 1 else
                      "the checkpoint is incomplete (a shard of a larger set, or an interrupted export?)")
        raise CheckpointError(f"{what}: {incomplete}; {len(diff.missing)} tensors of "
                              f"{type(model).__name__} are absent: {absent} missing.\n"
                              "Pass every shard (a list, or the folder).")
    hint = ("the config passed in does not match the checkpoint" if config_given
            else "a model variant this loader does not know")
    raise CheckpointError(f"{what} does not fit {type(model).__name__}({plan.config}):\n  "
                          + "\n  ".join(diff.lines()) + f"\nLikely cause: {hint}.")


@dataclass
class LoadPlan:
    """Everything decided from the headers: what to read, as what, into which (meta) model."""

    checkpoint: Checkpoint
    detection: Detection
    kind: ModelKind
    config: Any
    model: nn.Module          # built on the meta device
    source: str

    @property
    def name(self) -> str:
        return self.kind.name


def _pick_config(config: ConfigSpec, kind: ModelKind) -> Optional[Any]:
    if config is None:
        return None
    candidates = list(config) if isinstance(config, (list, tuple)) else [config]
    matching = [c for c in candidates if isinstance(c, kind.config_type)]
    return matching[0] if matching else None


def plan_load(spec: PathSpec, config: ConfigSpec = None) -> LoadPlan:
    """Read headers, detect the format, decide the config and build the model on meta; check every key and
    shape. Reads no tensor data (except for legacy non-zip `.pth` files)."""
    checkpoint = Checkpoint(spec)
    source = describe(spec)
    several = len(checkpoint.files) > 1
    try:
        conflict = conflicting_shapes(checkpoint) if several else None
        if conflict:
            raise different_models(source, conflict)
        try:
            detection = detect(checkpoint.shapes, source)
        except UnknownFormatError as e:
            if several:
                explain_unknown_list(checkpoint, source, e)
            raise
        kind = MODEL_KINDS[detection.model]
        chosen = _pick_config(config, kind)
        if chosen is None:     # a custom size: the configuration written beside the weights
            chosen = read_config_sidecar(checkpoint.paths, kind.config_type)
        try:
            cfg = chosen if chosen is not None else kind.config_from(detection.official_shapes,
                                                                       read_config_json(checkpoint.paths))
        except ConfigError as e:
            if not (e.missing and several):
                raise
            raise CheckpointError(
                f"{source} ({detection.label}): the list of {len(checkpoint.files)} files looks incomplete: "
                f"{', '.join(e.missing)} missing (present: {summarize_keys(detection.official_shapes, limit=3)}).\n"
                "Pass every shard (a list, or the folder).") from e
        with torch.device("meta"):
            model = kind.build(cfg)
        plan = LoadPlan(checkpoint, detection, kind, cfg, model, source)
        _check_fit(plan, chosen is not None)
    except Exception:
        checkpoint.close()
        raise
    if detection.ignored:
        logger.info("%s: ignoring %d tensors that are not part of %s (e.g. %s)", source, len(detection.ignored),
                    kind.name, detection.ignored[0])
    return plan


__all__ = ["LoadPlan", "plan_load", "expected_tensors", "ConfigSpec"]
