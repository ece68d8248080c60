"""Merging planned LoRA updates into the weights (`merge_loras`: `plan_merge`, then `apply_merge`), restorably.

Merge of one weight W, `W += strength * (scale * B @ A)` plus full deltas (`strength * diff`) and lora_B biases
(`strength * scale * b`), with `scale = alpha / r` when alpha is known and 1 otherwise (upstream always uses 1):

- precision "upstream" (default), bf16/fp16 weights: upstream's own operations, in the weight's dtype on
  `upstream_device` (CUDA when the weight is on the CPU and CUDA is available): `W = W + factor * mm(B, A)` per
  LoRA, rounded at each step like `GeneralLoRAFromPeft.load`, so the merged weights are bit-identical to
  upstream's on the same device and library.
- precision "float32": every update of a weight summed in fp32, W rounded to its dtype once (not upstream's
  numbers).
- fp32/fp64 weights: in place in their own dtype (`addmm_`) either way; an fp8 `Fp8Linear` is dequantised,
  updated in fp32 and requantised with new scales.

Speed: the merge works on the weight's device (upstream precision: upstream's device), in place, through one
reused buffer per device and dtype, so no weight-sized temporary is allocated per layer (allocation and page
faults, not FLOPs, dominate a per-layer temporary).
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch

from .lora_base_weights import BaseWeights
from .lora_checkpoint import LoraCheckpoint
from .lora_plan import MergeTarget, plan_merge

MERGE_PRECISIONS = ("upstream", "float32")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or the weight's own dtype when it is wider (float64)."""
    return dtype if dtype.is_floating_point and dtype.itemsize > 4 else torch.float32


def upstream_device(device: torch.device) -> torch.device:
    """Where upstream computes a merge: CUDA when the weight is on the CPU and CUDA is available, else the weight's
    device (`GeneralLoRAFromPeft.fetch_device_and_dtype`)."""
    device = torch.device(device)
    return torch.device("cuda") if device.type == "cpu" and torch.cuda.is_available() else device


def _like_upstream(owner, precision: str) -> bool:
    """True when the weight is merged with upstream's operations: precision "upstream" and a weight narrower than
    fp32 (bf16, fp16). fp32/fp64 weights are merged in their own dtype either way (`addmm`), fp8 layers in fp32."""
    from ..models.fp8 import Fp8Linear

    return (precision == "upstream" and not isinstance(owner, Fp8Linear) and owner.dtype.is_floating_point
            and owner.dtype.itemsize < 4)


def _where(t: MergeTarget, precision: str) -> Tuple[torch.dtype, torch.device]:
    """The dtype and device a target's updates are computed in."""
    from ..models.fp8 import Fp8Linear

    if isinstance(t.owner, Fp8Linear):
        return torch.float32, t.owner.weight.device
    if _like_upstream(t.owner, precision):
        return t.owner.dtype, upstream_device(t.owner.device)
    return _compute_dtype(t.owner.dtype), t.owner.device


def _cast_factors(targets: Sequence[MergeTarget], precision: str = "float32") -> Dict[int, torch.Tensor]:
    """Every update tensor in its weight's compute dtype and device, `{id(tensor): cast}`, cast with one `cat` and
    one `.to` per (dtype, device) group: hundreds of small casts cost more in thread wake-ups (and, to a GPU, in
    transfers) than in copying. The cast of each element is the same as a `.to` of its own tensor."""
    groups: Dict[Tuple[torch.dtype, torch.device], Dict[int, torch.Tensor]] = {}
    for t in targets:
        dtype, device = _where(t, precision)
        tensors = [x for b, a, _ in t.low_rank for x in (b, a)]
        if _like_upstream(t.owner, precision):
            tensors += [d for d, _ in t.full]
        for tensor in tensors:
            if tensor.dtype != dtype or tensor.device != device:
                groups.setdefault((dtype, device), {})[id(tensor)] = tensor
    out: Dict[int, torch.Tensor] = {}
    for (dtype, device), tensors in groups.items():
        flat = torch.cat([f.reshape(-1) for f in tensors.values()]).to(device, dtype)
        for (key, tensor), part in zip(tensors.items(), flat.split([f.numel() for f in tensors.values()])):
            out[key] = part.view(tensor.shape)
    return out


def _accumulate(w: torch.Tensor, target: MergeTarget, source: Optional[torch.Tensor] = None,
                cast: Optional[Dict[int, torch.Tensor]] = None) -> None:
    """fp32 merge: w (the weight in its compute dtype) <- (`source` if given, else w) + every update of `target`;
    the first update reads `source` directly, which saves a copy pass. `cast`: factors already in w's dtype and
    device."""
    device, dtype = w.device, w.dtype
    rows = w.view(w.shape[0], -1)
    cast = cast or {}
    for b, a, factor in target.low_rank:
        b = cast.get(id(b), b).to(device, dtype).reshape(b.shape[0], -1)
        a = cast.get(id(a), a).to(device, dtype).reshape(a.shape[0], -1)
        if source is not None:
            torch.addmm(source.reshape(rows.shape), b, a, alpha=factor, out=rows)
            source = None
        else:
            rows.addmm_(b, a, alpha=factor)
    if source is not None:
        w.copy_(source)
    for delta, factor in target.full:
        w.add_(delta.to(device, dtype), alpha=factor)


def _merge_like_upstream(weight: torch.Tensor, out: torch.Tensor, target: MergeTarget, cast: Dict[int, torch.Tensor],
                         scratch: torch.Tensor) -> None:
    """out <- upstream's merge of `weight` (out may be `weight` itself): for each update, in the weight's dtype on
    `upstream_device`, `product = factor * torch.mm(B, A)` (the factors cast to that dtype; the multiplication
    skipped when factor is 1, which changes no bit) and `W = W + product`, rounded at every step as upstream's
    `GeneralLoRAFromPeft.load` does; full deltas follow the same rule (`W = W + factor * delta`). `scratch`: a
    buffer of the weight's dtype on the compute device holding the product (the same kernels as upstream's
    out-of-place operations, without a weight-sized allocation per layer)."""
    device, dtype = scratch.device, weight.dtype
    current = weight.to(device)                       # a copy when the merge runs on another device
    writable = current is not weight or out is weight
    rows = weight.shape[0]

    def add(product: torch.Tensor) -> None:
        nonlocal current, writable
        if writable:
            current.add_(product)
        else:                                         # keep `weight` unchanged: first result goes to `out`
            torch.add(current, product, out=out)
            current, writable = out, True

    for b, a, factor in target.low_rank:
        up = cast.get(id(b), b).to(device, dtype).reshape(b.shape[0], -1)
        down = cast.get(id(a), a).to(device, dtype).reshape(a.shape[0], -1)
        product = torch.mm(up, down, out=scratch[: rows * down.shape[1]].view(rows, -1))
        if factor != 1.0:
            product.mul_(factor)
        add(product.view(weight.shape))
    for delta, factor in target.full:
        delta = cast.get(id(delta), delta).to(device, dtype)
        if factor != 1.0:
            delta = torch.mul(delta, factor, out=scratch[: delta.numel()].view(delta.shape))
        add(delta)
    if current is not out:
        out.copy_(current)


@torch.no_grad()
def apply_merge(targets: Sequence[MergeTarget], backup: Optional[BaseWeights] = None, precision: str = "upstream"
                ) -> None:
    """Change the planned weights (see `plan_merge`). With `backup`, the original of each weight is kept first:
    a CPU weight by reference (its merged value goes to a new tensor, so the original is never copied), others by
    a CPU copy.

    precision "upstream" (default): bf16/fp16 weights are merged with upstream's operations and roundings
    (`_merge_like_upstream`); "float32": every update of a weight is summed in fp32 and the weight rounded once.
    fp32/fp64 weights are updated in place in their own dtype (`addmm_`) and fp8 layers in fp32 either way."""
    from ..models.fp8 import Fp8Linear

    if precision not in MERGE_PRECISIONS:
        raise ValueError(f"merge_precision must be one of {MERGE_PRECISIONS}, got {precision!r}")
    # One scratch buffer per (device, dtype) for weights stored narrower than their compute dtype, or for upstream
    # products: no weight-sized temporary per layer.
    need: Dict[Tuple[torch.device, torch.dtype], int] = {}
    for t in targets:
        if isinstance(t.owner, Fp8Linear) or (_in_place(t.owner) and not _like_upstream(t.owner, precision)):
            continue
        dtype, device = _where(t, precision)
        need[device, dtype] = max(need.get((device, dtype), 0), t.owner.numel())
    scratch = {key: torch.empty(n, dtype=key[1], device=key[0]) for key, n in need.items()}
    cast = _cast_factors(targets, precision)
    for t in targets:
        if isinstance(t.owner, Fp8Linear):
            # set_weight replaces weight and scale rather than writing into them: keep the originals by
            # reference on CPU (a copy only when they live on another device).
            keep = backup is not None and t.owner not in backup
            original = tuple(x.data.to("cpu") for x in BaseWeights.tensors(t.owner)) if keep else ()
            w = t.owner.dequantized_weight(torch.float32)
            _accumulate(w, t, cast=cast)
            t.owner.set_weight(w)          # requantised with the layer's granularity (new scales)
            if keep:
                backup.keep(t.owner, original)
            continue
        weight = t.owner.data
        swap = backup is not None and weight.device.type == "cpu" and t.owner not in backup
        if backup is not None and not swap:
            backup.save(t.owner)
        out = torch.empty_like(weight, memory_format=torch.contiguous_format) if swap else weight
        dtype, device = _where(t, precision)
        if _like_upstream(t.owner, precision):
            _merge_like_upstream(weight, out, t, cast, scratch[device, dtype])
        elif _in_place(weight):
            _accumulate(out, t, source=weight if swap else None, cast=cast)
        else:
            w = scratch[device, dtype][: weight.numel()].view(weight.shape)
            w.copy_(weight)
            _accumulate(w, t, cast=cast)
            out.copy_(w)
        if swap:
            backup.keep(t.owner, (weight,))
            t.owner.data = out


def _in_place(weight: torch.Tensor) -> bool:
    return weight.dtype == _compute_dtype(weight.dtype) and weight.is_contiguous()


def merge_loras(models: Iterable[torch.nn.Module], loras: Sequence[Tuple[LoraCheckpoint, float, Optional[float], str]],
                backup: Optional[BaseWeights] = None, precision: str = "upstream") -> int:
    """Merge several LoRAs, `(checkpoint, strength, network_alpha, source)` each, into `models` (normally the one
    DiT). Everything is checked before the first weight changes, so a failing check leaves the models as they
    were. `precision`: see `apply_merge`. Returns the number of weights changed."""
    if precision not in MERGE_PRECISIONS:
        raise ValueError(f"merge_precision must be one of {MERGE_PRECISIONS}, got {precision!r}")
    targets = plan_merge(list(models), loras)
    apply_merge(targets, backup, precision)
    return len(targets)


def merge_lora(models: Iterable[torch.nn.Module], lora: LoraCheckpoint, strength: float = 1.0,
               network_alpha: Optional[float] = None, source: str = "LoRA",
               backup: Optional[BaseWeights] = None, precision: str = "upstream") -> int:
    """Merge one LoRA into `models` (see `merge_loras`). Returns the number of weights changed."""
    return merge_loras(models, [(lora, strength, network_alpha, source)], backup, precision)


__all__ = ["MERGE_PRECISIONS", "merge_loras", "merge_lora", "apply_merge", "upstream_device"]
