"""A LoRA as read, whatever its layout: per module its factors, deltas and alpha (`LoraModule`), per file the
pose-guider tensors, the file-wide alpha and what was skipped (`LoraCheckpoint`), and the checks on the numbers a
merge is given (`check_alpha`, `check_strength`)."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import torch

from .errors import CheckpointError
from .lora_formats import DIFF_ROLES

logger = logging.getLogger(__name__)


class LoraError(CheckpointError):
    """A LoRA checkpoint that is incomplete, of an unknown layout, or does not fit the model."""


@dataclass
class LoraModule:
    """What a LoRA holds for one module: factors (W [out, in] += scale * B [out, r] @ A [r, in]), the bias of lora_B
    (bias += scale * bias), an optional per-module alpha, and full deltas of the module's weight (`diff`), bias
    (`diff_b`) and modulation (`diff_m`)."""

    A: Optional[torch.Tensor] = None
    B: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    alpha: Optional[float] = None
    diff: Optional[torch.Tensor] = None
    diff_b: Optional[torch.Tensor] = None
    diff_m: Optional[torch.Tensor] = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def has_factors(self) -> bool:
        return self.A is not None or self.B is not None

    def deltas(self) -> Dict[str, torch.Tensor]:
        """{"diff" | "diff_b" | "diff_m": tensor} for the deltas present."""
        return {role: getattr(self, role) for role in DIFF_ROLES if getattr(self, role) is not None}


@dataclass
class LoraCheckpoint:
    modules: Dict[str, LoraModule] = field(default_factory=dict)    # official module path -> factors/deltas
    pose: Dict[str, torch.Tensor] = field(default_factory=dict)     # pose-guider tensors, names unchanged
    alpha: Optional[float] = None                                    # file-wide alpha, when stored
    alpha_source: str = ""                                           # where the file-wide alpha was read
    adapters: Set[str] = field(default_factory=set)                  # PEFT adapter names seen ("default")
    ignored: int = 0                                                 # other tensors (frozen weights, ...)
    unmerged: List[str] = field(default_factory=list)                # LoRA-like tensors no layout merges (named)
    files: Tuple[Path, ...] = ()                                     # the files read, resolved (symlinks too)
    digest: str = ""                                                 # content hash of the tensors read
    layout: str = ""                                                 # "diffsynth", "comfy", "diffusers", "kohya"
    underscored: Set[str] = field(default_factory=set)               # kohya names still to resolve (`resolve`)
    looks_like_base: bool = False                                    # other tensors include a DiT weight

    def alpha_of(self, module: LoraModule, network_alpha: Optional[float] = None, name: str = "",
                 source: str = "LoRA") -> Optional[float]:
        """The alpha that applies to `module`: the argument, else its own, else the file's; None when unknown.
        A stored alpha that is not a positive finite number is refused, naming it (LoraError)."""
        if network_alpha is not None:
            return check_alpha(network_alpha, "network_alpha")
        if module.alpha is not None:
            return check_alpha(module.alpha, f"{source}: the alpha stored for {name or 'a module'}", stored=True)
        if self.alpha is not None:
            return check_alpha(self.alpha, f"{source}: its {self.alpha_source or 'stored alpha'}", stored=True)
        return None

    def scale_of(self, module: LoraModule, network_alpha: Optional[float] = None, name: str = "",
                 source: str = "LoRA") -> float:
        """alpha / r, or 1 when alpha is unknown (upstream's behaviour)."""
        alpha = self.alpha_of(module, network_alpha, name, source)
        return alpha / module.rank if alpha is not None else 1.0


def check_alpha(value, what: str, stored: bool = False) -> float:
    """`value` as a float when it is a positive finite number; LoraError (ValueError for an argument) naming `what`
    otherwise. NaN or Inf would merge NaN or an all-black video; 0 merges nothing (kohya's trainer reads a stored 0
    as alpha = rank); a negative alpha inverts the LoRA."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = math.nan
    if math.isfinite(alpha) and alpha > 0:
        return alpha
    hint = " (kohya's trainer reads a stored alpha of 0 as alpha = rank)" if alpha == 0 and stored else ""
    message = (f"{what} is {value!r}: an alpha must be a positive finite number{hint}; "
               + ("pass network_alpha= (convert_lora: --network-alpha) to choose the scale" if stored
                  else "give the training lora_alpha"))
    raise (LoraError if stored else ValueError)(message)


def check_strength(strength, source: str) -> float:
    """A merge strength: NaN/Inf refused (ValueError, naming the LoRA and the value); 0 (merges nothing) and a
    negative strength (subtracts the LoRA) are allowed with a warning, since they can be meant."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"LoRA strength for {source} must be a number, got {strength!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"LoRA strength for {source} must be a finite number, got {strength}")
    if value == 0:
        logger.warning("%s: strength 0 merges nothing (its pose-guider tensors are still collected)", source)
    elif value < 0:
        logger.warning("%s: negative strength %g subtracts the LoRA's update", source, value)
    return value


def listed(names: Iterable[str], limit: int = 5) -> str:
    """Up to `limit` names, sorted, for a message (`a, b, ... (12 in all)`)."""
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


__all__ = ["LoraError", "LoraModule", "LoraCheckpoint", "check_alpha", "check_strength", "listed"]
