"""The plan of layer streaming: which of a model's weights stay resident on the compute device under a parameter
budget and which stream (`diffsynth.acceleration.vram` moves them). Pure bookkeeping: works on `meta` models.

Upstream rule (spec 3.5, the upstream `enable_vram_management`), kept exactly: the model's leaf modules are visited
depth-first in `named_children` order and their parameters summed; a leaf stays *persistent* (resident on the compute
device) while the running total, itself included, is <= the budget. From the first overflow on, every later leaf
*streams*, because the running total keeps growing with the streamed leaves too. `None` keeps everything resident,
`0` streams everything.

Differences from upstream (all invisible in the numbers: the same weights reach the same kernels):
- Leaves are "modules without children" (upstream lists the wrapped types: Linear, Conv, LayerNorm, RMSNorm,
  Embedding, ...). For the Wan models every childless module with parameters is of a wrapped type, so the two rules
  pick the same set. Bare parameters of non-leaf modules (`blocks.i.modulation`, `head.modulation`, CLIP's class and
  position embeddings) are never counted and always resident (upstream also leaves them unmanaged); they are small.
  PEFT adapter containers (`lora_A`, `lora_B`, ...) are skipped too: LoRA parameters stay resident, the frozen
  `base_layer` weights follow the rule.
- Weights are transferred per *group* (`group_roots`): one element of a `ModuleList` (a transformer block) or a
  top-level child without blocks inside (`text_embedding`, `head`, ...). A block may be partly resident.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch.nn as nn

ADAPTER_PREFIXES = ("lora_",)   # PEFT: lora_A, lora_B, lora_embedding_A/B, lora_dropout, lora_magnitude_vector


@dataclass(frozen=True)
class Leaf:
    name: str          # module path, e.g. "blocks.3.self_attn.q"
    numel: int
    nbytes: int
    streamed: bool
    group: str         # the group root it is transferred with, e.g. "blocks.3"


@dataclass(frozen=True)
class VRAMPlan:
    """Which leaves stay resident and which stream (see the module docstring). Pure bookkeeping: works on `meta`."""

    budget: Optional[int]
    leaves: Tuple[Leaf, ...]
    groups: Tuple[str, ...]                   # every group root, in module order
    bare: Tuple[Tuple[str, int, int], ...]    # (parameter name, numel, nbytes) of parameters outside leaves

    @property
    def streamed_groups(self) -> List[str]:
        """Group roots holding at least one streamed parameter, in module order."""
        streaming = {leaf.group for leaf in self.leaves if leaf.streamed and leaf.numel}
        return [g for g in self.groups if g in streaming]

    @property
    def persistent_leaves(self) -> List[str]:
        return [leaf.name for leaf in self.leaves if not leaf.streamed]

    @property
    def streamed_leaves(self) -> List[str]:
        return [leaf.name for leaf in self.leaves if leaf.streamed]

    def group_bytes(self) -> Dict[str, int]:
        """Streamed bytes per streamed group."""
        sizes: Dict[str, int] = {}
        for leaf in self.leaves:
            if leaf.streamed and leaf.numel:
                sizes[leaf.group] = sizes.get(leaf.group, 0) + leaf.nbytes
        return sizes

    def report(self) -> dict:
        """Parameter counts and bytes of the resident and streamed parts, and an *estimate* of the device memory the
        weights take while the model runs: resident bytes + two streamed groups (double buffering)."""
        resident = [leaf for leaf in self.leaves if not leaf.streamed]
        streamed = [leaf for leaf in self.leaves if leaf.streamed]
        sizes = self.group_bytes()
        largest = max(sizes.values(), default=0)
        resident_bytes = sum(leaf.nbytes for leaf in resident) + sum(b for _, _, b in self.bare)
        return {
            "budget": self.budget,
            "resident_params": sum(leaf.numel for leaf in resident) + sum(n for _, n, _ in self.bare),
            "resident_bytes": resident_bytes,
            "streamed_params": sum(leaf.numel for leaf in streamed),
            "streamed_bytes": sum(leaf.nbytes for leaf in streamed),
            "bare_params": sum(n for _, n, _ in self.bare),
            "persistent_leaves": len(resident),
            "streamed_leaves": len(streamed),
            "streamed_groups": len(sizes),
            "largest_group_bytes": largest,
            "estimated_device_weight_bytes": resident_bytes + min(2, len(sizes)) * largest,
        }


def _is_adapter(name: str) -> bool:
    return name.startswith(ADAPTER_PREFIXES)


def iter_leaves(model: nn.Module, prefix: str = "") -> Iterator[Tuple[str, nn.Module]]:
    """Leaf modules depth-first in `named_children` order (upstream order), PEFT adapter containers skipped."""
    children = list(model.named_children())
    if not children and not prefix:
        yield "", model
        return
    for name, child in children:
        if _is_adapter(name):
            continue
        full = prefix + name
        if next(child.children(), None) is None:
            yield full, child
        else:
            yield from iter_leaves(child, full + ".")


def group_roots(model: nn.Module, prefix: str = "") -> List[str]:
    """Transfer groups: each element of a ModuleList, and each child that holds no ModuleList."""
    roots: List[str] = []
    children = list(model.named_children())
    if not children and not prefix:
        return [""]
    for name, child in children:
        full = prefix + name
        if isinstance(child, nn.ModuleList):
            roots += [f"{full}.{i}" for i, _ in child.named_children()]
        elif any(isinstance(m, nn.ModuleList) for m in child.modules()):
            roots += group_roots(child, full + ".")
        else:
            roots.append(full)
    return roots


def _group_of(name: str, roots: Sequence[str]) -> str:
    best = ""
    for root in roots:
        if (name == root or name.startswith(root + ".") or root == "") and len(root) >= len(best):
            best = root
    return best


def plan_vram(model: nn.Module, num_persistent_params: Optional[float] = None,
              always_resident: Sequence[str] = ()) -> VRAMPlan:
    """Apply the upstream persistent-budget rule to `model` (any device, `meta` included).

    Args:
        num_persistent_params: the budget in parameters (`num_persistent_param_in_dit`); None keeps everything
            resident, 0 streams everything.
        always_resident: module paths (or prefixes) kept resident whatever the rule says; they still count in the
            running total. Used for CLIP's patch embedding, whose weight device decides where CLIP runs.
    """
    if num_persistent_params is not None and num_persistent_params < 0:
        raise ValueError(f"num_persistent_param_in_dit must be None or >= 0; got {num_persistent_params!r}")
    roots = group_roots(model)
    leaves, in_leaves, total = [], set(), 0
    for name, module in iter_leaves(model):
        params = list(module.parameters())
        numel = sum(p.numel() for p in params)
        nbytes = sum(p.numel() * p.element_size() for p in params)
        streamed = num_persistent_params is not None and total + numel > num_persistent_params
        total += numel
        if any(name == r or name.startswith(r + ".") for r in always_resident):
            streamed = False
        leaves.append(Leaf(name, numel, nbytes, streamed, _group_of(name, roots)))
        in_leaves.update(id(p) for p in params)
    bare = tuple((n, p.numel(), p.numel() * p.element_size()) for n, p in model.named_parameters()
                 if id(p) not in in_leaves)
    return VRAMPlan(num_persistent_params, tuple(leaves), tuple(roots), bare)


__all__ = ["ADAPTER_PREFIXES", "Leaf", "VRAMPlan", "iter_leaves", "group_roots", "plan_vram"]
