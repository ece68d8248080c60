"""A model configuration written beside weights whose shapes do not determine it (custom sizes: the tiny and demo
models' CLIP, whose head count is not width / 80): `<weights stem>.config.json`. `plan_load` reads it when no
`config=` is given, so such weights load like the release, with no argument."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional, Sequence

from .files import CheckpointError

SUFFIX = ".config.json"


def sidecar_path(weights) -> Path:
    """`models_clip_x.safetensors` -> `models_clip_x.config.json` (beside it)."""
    weights = Path(weights)
    return weights.with_name(weights.stem + SUFFIX)


def write_config_sidecar(weights, config) -> Path:
    """Write `config` (a configs.py dataclass) beside `weights`, atomically; returns the sidecar's path."""
    path = sidecar_path(weights)
    document = {"class": type(config).__name__, **dataclasses.asdict(config)}
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(temporary, path)
    return path


def read_config_sidecar(paths: Sequence, config_type: type) -> Optional[Any]:
    """The `config_type` written beside the first weight file, or None when there is none (or it describes another
    kind of model). A sidecar that names this kind but does not parse is an error naming the file."""
    if not paths:
        return None
    path = sidecar_path(paths[0])
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read the model configuration {path}: {error}") from None
    if not isinstance(document, dict) or document.get("class") != config_type.__name__:
        return None
    fields = {f.name: f for f in dataclasses.fields(config_type)}
    values = {k: v for k, v in document.items() if k != "class"}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise CheckpointError(f"{path}: unknown {config_type.__name__} fields {unknown}")
    for name, value in values.items():   # JSON has lists where the dataclasses hold tuples
        if isinstance(value, list) and isinstance(fields[name].default, tuple):
            values[name] = tuple(value)
    return config_type(**values)


__all__ = ["sidecar_path", "write_config_sidecar", "read_config_sidecar", "SUFFIX"]
