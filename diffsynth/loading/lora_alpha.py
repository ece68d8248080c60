"""Where a LoRA file's alpha is read (besides the `network_alpha=` argument): a kohya `<module>.alpha` or a
file-wide scalar tensor (`network_alpha`, which our trainer saves and upstream's loader skips since the key holds no
'lora'; or `lora_alpha`/`alpha`), safetensors metadata, or diffusers' `lora_adapter_metadata` (`lora_alpha`,
`alpha_pattern`). DoRA and rsLoRA files are refused there."""
from __future__ import annotations

import json
import re
from typing import Dict, Optional, Tuple

import torch

from .files import Checkpoint, PathSpec, describe
from .lora_checkpoint import LoraCheckpoint, LoraError

ALPHA_METADATA = ("network_alpha", "lora_alpha", "alpha", "ss_network_alpha")
# diffusers' `save_lora_adapter` / `save_lora_weights` keep the PEFT LoraConfig as JSON under this metadata key
# (`lora_alpha`, `r`, `alpha_pattern`, ...; pipeline-level files prefix each entry with `transformer.`).
DIFFUSERS_METADATA = "lora_adapter_metadata"


def scalar(tensor: torch.Tensor, key: str) -> float:
    """A stored alpha tensor as a number (LoraError unless it holds one value)."""
    if tensor.numel() != 1:
        raise LoraError(f"{key!r} should be a scalar alpha, has shape {tuple(tensor.shape)}")
    return float(tensor.reshape(()).item())


def _file_alpha(values: Dict[str, float], spec: PathSpec) -> Optional[float]:
    """The one file-wide alpha among the scalar keys read (they must agree)."""
    if len(set(values.values())) > 1:
        raise LoraError(f"{describe(spec)} stores different alphas {values}; pass network_alpha= to choose")
    return next(iter(values.values()), None)


def _metadata_number(value, what: str, spec: PathSpec) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LoraError(f"{describe(spec)}: {what} is {value!r}, not a number; pass network_alpha= to choose "
                        "the scale") from None


def _metadata_alpha(metadata: Dict[str, str], spec: PathSpec) -> Tuple[Optional[float], str]:
    """(alpha, where) from the plain metadata entries (`network_alpha`, `ss_network_alpha`, ...)."""
    for name in ALPHA_METADATA:
        if name in metadata:
            return _metadata_number(metadata[name], f"metadata {name!r}", spec), f"metadata {name!r}"
    return None, ""


def _diffusers_config(metadata: Dict[str, str], spec: PathSpec) -> Dict[str, object]:
    """The PEFT LoraConfig diffusers stores as JSON (`lora_adapter_metadata`), unprefixed; {} when absent."""
    raw = metadata.get(DIFFUSERS_METADATA)
    if raw is None:
        return {}
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise LoraError(f"{describe(spec)}: its {DIFFUSERS_METADATA!r} metadata is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise LoraError(f"{describe(spec)}: its {DIFFUSERS_METADATA!r} metadata is not a JSON object")
    # save_lora_weights (pipeline level) prefixes each entry with the component: `transformer.lora_alpha`.
    prefixed = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("transformer.")}
    return prefixed or config


def _apply_diffusers_config(out: LoraCheckpoint, config: Dict[str, object], raw_modules: Dict[str, str],
                            spec: PathSpec) -> None:
    """The alpha of a diffusers file: `lora_alpha`, with `alpha_pattern` per module (PEFT's matching rule on the
    module names as written). DoRA and rsLoRA files are refused (their update is not scale * B @ A with
    scale = alpha / r)."""
    for flag in ("use_dora", "use_rslora"):
        if config.get(flag):
            raise LoraError(f"{describe(spec)} was saved with {flag}=true ({DIFFUSERS_METADATA}); only plain LoRA "
                            "(scale = lora_alpha / r) can be merged")
    if "lora_alpha" in config and out.alpha is None:
        out.alpha = _metadata_number(config["lora_alpha"], f"{DIFFUSERS_METADATA} lora_alpha", spec)
        out.alpha_source = f"{DIFFUSERS_METADATA} lora_alpha"
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise LoraError(f"{describe(spec)}: {DIFFUSERS_METADATA} alpha_pattern is not a JSON object")
    for official, written in raw_modules.items():
        for pattern, value in patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", written) and official in out.modules:
                if out.modules[official].alpha is None:
                    out.modules[official].alpha = _metadata_number(value, f"alpha_pattern {pattern!r}", spec)
                break


def read_alphas(out: LoraCheckpoint, file_alphas: Dict[str, float], ckpt: Checkpoint, raw_modules: Dict[str, str],
                spec: PathSpec) -> None:
    """Set `out.alpha` (and where it was read) from the scalar alpha tensors read (`file_alphas`), else from the
    metadata; then the diffusers config's alphas (`raw_modules`: official module -> name as written)."""
    out.alpha = _file_alpha(file_alphas, spec)
    if out.alpha is not None:
        out.alpha_source = f"{next(iter(file_alphas))} tensor"
    else:
        out.alpha, out.alpha_source = _metadata_alpha(ckpt.metadata, spec)
    _apply_diffusers_config(out, _diffusers_config(ckpt.metadata, spec), raw_modules, spec)


__all__ = ["ALPHA_METADATA", "DIFFUSERS_METADATA", "scalar", "read_alphas"]
