"""The check before a LoRA merge: every LoRA against every model (names, kohya names resolved, factor and delta
shapes), and the weights to change with their updates in LoRA order (`plan_merge`). Nothing changes here; a LoraError
names what does not fit."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import lora_formats
from .lora import check_complete, resolve
from .lora_checkpoint import LoraCheckpoint, LoraError, listed
from .lora_formats import DIFF_ROLES


@dataclass
class MergeTarget:
    """One weight to change: its owner (a Parameter, or an Fp8Linear for its fp8 weight) and the updates, in the
    order of the LoRAs."""

    name: str
    owner: object
    low_rank: List[Tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)   # (B, A, factor)
    full: List[Tuple[torch.Tensor, float]] = field(default_factory=list)                     # (delta, factor)


def _factors_fit(a: torch.Tensor, b: torch.Tensor, shape: Tuple[int, ...]) -> bool:
    """B [out, r(, 1...)] @ A [r, in(, k...)] fits W [out, in(, k...)] (Linear, or a conv through its kernel)."""
    if a.ndim < 2 or b.ndim != a.ndim or len(shape) != a.ndim or any(n != 1 for n in b.shape[2:]):
        return False
    return b.shape[1] == a.shape[0] and b.shape[0] == shape[0] and tuple(a.shape[1:]) == tuple(shape[1:])


def _delta_param(role: str, module: str, params: Dict[str, torch.nn.Parameter]) -> str:
    """The parameter a delta changes: `.diff` the module's weight (or the module path itself when it names a
    parameter, e.g. `blocks.0.modulation.diff`), `.diff_b` its bias, `.diff_m` its modulation."""
    if role == "diff" and f"{module}.weight" not in params and module in params:
        return module
    return f"{module}.{DIFF_ROLES[role]}" if module else DIFF_ROLES[role]


def plan_merge(models: Sequence[torch.nn.Module], loras: Sequence[Tuple[LoraCheckpoint, float, Optional[float], str]]
               ) -> List[MergeTarget]:
    """Check every LoRA against every model and list the weights to change, grouped per weight (several LoRAs on
    one weight are applied to it together). Raises LoraError before anything changes."""
    from ..models.fp8 import Fp8Linear

    targets: Dict[int, MergeTarget] = {}
    for model in models:
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        fp8 = {f"{n}.weight": m for n, m in modules.items() if isinstance(m, Fp8Linear)}
        for lora, strength, network_alpha, source in loras:
            check_complete(lora, source)
            unknown, unknown_deltas, bad_shape = [], [], []
            resolved = resolve(lora, list(modules) + list(params), source)

            def target(pname: str) -> MergeTarget:
                owner = fp8.get(pname, params[pname])
                return targets.setdefault(id(owner), MergeTarget(pname, owner))

            for name, module in sorted(resolved.items()):
                deltas = dict(module.deltas())
                if module.has_factors:
                    weight = params.get(f"{name}.weight")
                    if weight is None:
                        unknown.append(name)
                    elif not _factors_fit(module.A, module.B, tuple(weight.shape)):
                        bad_shape.append(f"{name}: A {tuple(module.A.shape)}, B {tuple(module.B.shape)} vs W "
                                         f"{tuple(weight.shape)}")
                    else:
                        factor = strength * lora.scale_of(module, network_alpha, name, source)
                        target(f"{name}.weight").low_rank.append((module.B, module.A, factor))
                        if module.bias is not None:       # lora_B's bias: bias += strength * scale * b
                            deltas["bias"] = module.bias
                for role, delta in deltas.items():
                    pname = f"{name}.bias" if role == "bias" else _delta_param(role, name, params)
                    if pname not in params:
                        unknown_deltas.append(f"{name}.{role} ({pname})")
                    elif tuple(delta.shape) != tuple(params[pname].shape):
                        bad_shape.append(f"{name}.{role} {tuple(delta.shape)} vs {pname} {tuple(params[pname].shape)}")
                    else:
                        factor = strength * (lora.scale_of(module, network_alpha, name, source) if role == "bias"
                                             else 1.0)
                        target(pname).full.append((delta, factor))
            if unknown:
                raise LoraError(f"{source}: {len(set(unknown))} LoRA modules are not Linear layers of the DiT "
                                f"(e.g. {listed(set(unknown))}); layouts understood: {lora_formats.LAYOUT_HELP}")
            if unknown_deltas:
                raise LoraError(f"{source}: {len(unknown_deltas)} full deltas change no parameter of the DiT "
                                f"(e.g. {listed(unknown_deltas)}). Is the LoRA for another model?")
            if bad_shape:
                raise LoraError(f"{source}: LoRA tensors do not fit the DiT weights: {'; '.join(bad_shape[:3])}"
                                + (f" ... ({len(bad_shape)} in all)" if len(bad_shape) > 3 else "")
                                + ". Is the LoRA for another model size?")
    return list(targets.values())


__all__ = ["MergeTarget", "plan_merge"]
