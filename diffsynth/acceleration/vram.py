"""Layer streaming with a persistent budget: the upstream `enable_vram_management`, with whole-block transfers and
prefetch. Which weights stream is the plan's business (`vram_plan.py`: the upstream budget rule, kept exactly);
this module moves them.

Differences from upstream (all invisible in the numbers: the same weights reach the same kernels):
- Transfers are per *group*, not per leaf: a group is one element of a `ModuleList` (a transformer block) or a
  top-level child without blocks inside (`text_embedding`, `head`, ...). A group's streamed weights live in one flat
  CPU buffer per dtype (pinned when the compute device is CUDA), so a block costs one host-to-device copy instead of
  a dozen. A block may be partly resident: only its streamed leaves are in the buffer.
- Prefetch: when a group starts, the next streamed group's buffer is copied on a side CUDA stream (double
  buffering: at most two groups' streamed weights on the device at once). The order is learned from the calls
  themselves (separately for forward and for the recomputation in a checkpointed backward), starting from module
  order, so TeaCache skips and checkpointing stay correct; a wrong guess costs one wasted copy, never a wrong result.

How a streamed weight is used: a forward pre-hook on the group swaps each streamed `module._parameters[name]` for a
view of the device copy (like `torch.func.functional_call`), and a forward hook (also run on exceptions) puts the
`nn.Parameter` back. The Parameter objects never change, so optimizers, `state_dict` and in-place LoRA merges keep
working; the device copy is dropped once the group has run (autograd may keep it until backward when the group runs
with gradients and without checkpointing). A streamed parameter that requires grad (full fine-tuning) is copied with
a differentiable per-parameter `.to()` on the current stream instead, so its gradient reaches the CPU parameter.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

# The plan's names are re-exported: `from diffsynth.acceleration.vram import plan_vram` keeps working.
from .vram_plan import ADAPTER_PREFIXES, Leaf, VRAMPlan, group_roots, iter_leaves, plan_vram

Device = Union[str, torch.device]


# ---------------------------------------------------------------------------------------------- the streamer
@dataclass
class _Entry:
    module: nn.Module
    name: str
    param: nn.Parameter
    flat: int          # index of the flat buffer (one per dtype)
    offset: int
    ptr: int           # the parameter's data_ptr inside the flat buffer, to detect a moved weight


class _Group:
    def __init__(self, name: str, module: nn.Module):
        self.name = name
        self.module = module
        self.entries: List[_Entry] = []
        self.flats: List[torch.Tensor] = []
        self.nbytes = 0


class _Transfer:
    """Device copies of one group's flat buffers, and the event that marks the end of the copy (CUDA only)."""

    def __init__(self, group: str, buffers: List[torch.Tensor], event=None):
        self.group, self.buffers, self.event = group, buffers, event


def _graph_task() -> int:
    """The id of the running backward pass (checkpoint recomputation), -1 outside backward."""
    task = getattr(torch._C, "_current_graph_task_id", None)
    return -1 if task is None else task()


class LayerStreamer:
    """Streams the weights of `model` that the plan marks as overflow; see the module docstring.

    Args:
        compute_device: where the model runs (the pipeline device).
        storage_device: where streamed weights live ("cpu"). Resident weights live on `compute_device` after
            `onload()` and on `storage_device` after `offload()`.
        prefetch: copy the next streamed group while the current one computes.
        pin_memory: pin the CPU buffers (default: when the compute device is CUDA).
        onload: move the resident weights to the compute device now.

    Attributes:
        stats: "copies" (group transfers, one per streamed group per forward in steady state, wasted prefetches
            included), "tensor_copies", "bytes", "prefetch_hits", "wasted", "max_live" (most groups' device copies
            held by the streamer at once: <= 2). Reset with `reset_stats()`.
        trace: None, or a list that receives ("fetch", group, prefetched) and ("prefetch", group) events.
    """

    def __init__(self, model: nn.Module, num_persistent_params: Optional[float] = None,
                 compute_device: Device = "cuda", storage_device: Device = "cpu",
                 always_resident: Sequence[str] = (), prefetch: bool = True, pin_memory: Optional[bool] = None,
                 onload: bool = True):
        existing = getattr(model, "_vram_streamer", None)
        if existing is not None:
            existing.remove()
        self.model = model
        self.compute_device = torch.device(compute_device)
        self.storage_device = torch.device(storage_device)
        self.prefetch = prefetch
        self.cuda = self.compute_device.type == "cuda"
        self.pin = (self.cuda and self.storage_device.type == "cpu" and torch.cuda.is_available()) \
            if pin_memory is None else pin_memory
        self.plan = plan_vram(model, num_persistent_params, always_resident)
        self.trace: Optional[list] = None
        self.reset_stats()
        self._copy_stream = torch.cuda.Stream(self.compute_device) if self.cuda else None
        self._pending: Dict[str, _Transfer] = {}     # prefetched, not yet used (at most one)
        self._active: Dict[str, int] = {}            # groups running now (re-entrant count)
        self._next: Tuple[Dict[str, str], Dict[str, str]] = ({}, {})   # learned order: (forward, backward)
        self._last: List[Optional[str]] = [None, None]
        self._task = -1
        self._hooks: list = []

        modules = dict(model.named_modules())
        streamed_leaves = [leaf for leaf in self.plan.leaves if leaf.streamed and leaf.numel]
        self._groups: Dict[str, _Group] = {g: _Group(g, modules[g]) for g in self.plan.streamed_groups}
        self._streamed_ids = set()
        seen = set()
        for leaf in streamed_leaves:
            module = modules[leaf.name]
            for pname, param in module.named_parameters(recurse=False):
                if id(param) in seen:
                    continue
                seen.add(id(param))
                self._groups[leaf.group].entries.append(_Entry(module, pname, param, -1, 0, 0))
        for group in self._groups.values():
            self._pack(group)
        self._streamed_ids = seen
        order = list(self._groups)
        # Before an order is learned: module order in forward; nothing in a backward (which groups a checkpointed
        # backward recomputes depends on the training code).
        self._static_next: Tuple[Dict[str, str], Dict[str, str]] = ({a: b for a, b in zip(order, order[1:])}, {})
        for group in self._groups.values():
            self._hooks.append(group.module.register_forward_pre_hook(
                lambda module, args, g=group: self._enter(g)))
            self._hooks.append(group.module.register_forward_hook(
                lambda module, args, out, g=group: self._exit(g), always_call=True))
        self.on_device = False
        if onload:
            self.onload()
        else:
            self._place_resident(self.storage_device)
        model._vram_streamer = self
        # A trainer moves its module with `.to()` / `.cuda()` (Lightning, DeepSpeed): the streamed weights must stay
        # in their storage buffers (moving them would put the whole model on the GPU at once).
        model._apply = self._guarded_apply(type(model)._apply.__get__(model))

    # ---------------------------------------------------------------------------------------------- set-up
    def _pack(self, group: _Group) -> None:
        """Move the group's streamed parameters into one flat storage buffer per dtype; each Parameter becomes a
        view of it."""
        by_dtype: Dict[torch.dtype, List[_Entry]] = {}
        for entry in group.entries:
            by_dtype.setdefault(entry.param.dtype, []).append(entry)
        for index, (dtype, entries) in enumerate(by_dtype.items()):
            total = sum(e.param.numel() for e in entries)
            flat = torch.empty(total, dtype=dtype, device=self.storage_device, pin_memory=self.pin)
            offset = 0
            for e in entries:
                n = e.param.numel()
                flat[offset:offset + n].copy_(e.param.data.reshape(-1))
                e.param.data = flat[offset:offset + n].view(e.param.shape)
                e.flat, e.offset, e.ptr = index, offset, e.param.data_ptr()
                offset += n
            group.flats.append(flat)
            group.nbytes += flat.numel() * flat.element_size()

    def _place_resident(self, device: torch.device) -> None:
        pin = self.pin and device.type == "cpu"
        for module in self.model.modules():
            for name, param in module._parameters.items():
                if param is None or id(param) in self._streamed_ids or param.device == device:
                    continue
                if pin:   # straight into pinned memory (one copy), so the next onload can be fast
                    data = torch.empty(param.shape, dtype=param.dtype, pin_memory=True)
                    data.copy_(param.data)
                else:
                    data = param.data.to(device)
                param.data = data
            for name, buf in module._buffers.items():
                if buf is not None and buf.device != device:
                    module._buffers[name] = buf.to(device)

    def onload(self) -> None:
        """Resident weights to the compute device (streamed ones stay in storage)."""
        self._place_resident(self.compute_device)
        self.on_device = True

    def offload(self) -> None:
        """Resident weights back to storage; drops any prefetched copy."""
        self._pending.clear()
        self._place_resident(self.storage_device)
        self.on_device = False

    def _guarded_apply(self, original):
        """`module._apply` (behind `.to()`, `.cuda()`, `.half()`, ...) that leaves the streamed parameters in their
        storage buffers, so a trainer can move a managed model: resident weights and buffers follow the call."""
        def _apply(fn, recurse=True):
            held = [(e.param, e.param.data) for group in self._groups.values() for e in group.entries]
            for param, data in held:   # a placeholder for `fn` to convert; the storage view comes back after
                param.data = torch.empty(0, dtype=data.dtype, device=data.device)
            try:
                return original(fn, recurse)
            finally:
                for param, data in held:
                    param.data = data
        return _apply

    def remove(self) -> None:
        """Remove the hooks; the streamed parameters stay (as ordinary parameters) on the storage device."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self._pending.clear()
        self.model.__dict__.pop("_apply", None)
        if getattr(self.model, "_vram_streamer", None) is self:
            del self.model._vram_streamer

    def reset_stats(self) -> None:
        self.stats = {"copies": 0, "tensor_copies": 0, "bytes": 0, "prefetch_hits": 0, "wasted": 0, "max_live": 0}

    # ----------------------------------------------------------------------------------------------- copies
    def _copy(self, group: _Group) -> _Transfer:
        self.stats["copies"] += 1
        self.stats["tensor_copies"] += len(group.flats)
        self.stats["bytes"] += group.nbytes
        if not self.cuda:
            return _Transfer(group.name, [flat.to(self.compute_device, copy=True) for flat in group.flats])
        # Side stream: the destination is allocated on it, and record_stream() at use tells the caching allocator
        # that the compute stream reads it; the event orders the compute stream after the copy.
        with torch.cuda.stream(self._copy_stream):
            buffers = [flat.to(self.compute_device, non_blocking=True, copy=True) for flat in group.flats]
            event = torch.cuda.Event()
            event.record(self._copy_stream)
        return _Transfer(group.name, buffers, event)

    def _live(self) -> None:
        self.stats["max_live"] = max(self.stats["max_live"], len(self._pending) + len(self._active))

    def _check(self, group: _Group) -> None:
        for e in group.entries:
            if e.param.data_ptr() != e.ptr:
                raise RuntimeError(
                    f"the streamed weight {group.name}:{e.name} was moved or replaced after vram management was "
                    "enabled (e.g. by model.to() or a new .data): call enable_vram_management() again after changing "
                    "weights, and move a managed model with the pipeline, not with .to()")

    def _enter(self, group: _Group) -> None:
        if group.name in self._active:        # re-entered (should not happen with the Wan models)
            self._active[group.name] += 1
            return
        task = _graph_task()
        phase = int(task != -1)
        if phase and task != self._task:      # a new backward pass: do not link it to the previous one
            self._task, self._last[1] = task, None
        last = self._last[phase]
        if last is not None and last != group.name:
            self._next[phase][last] = group.name
        self._last[phase] = group.name
        needs_grad = torch.is_grad_enabled() and any(e.param.requires_grad for e in group.entries)
        if needs_grad:
            # Differentiable per-parameter copies on the current stream: gradients reach the storage Parameters.
            if self._pending:
                self.stats["wasted"] += len(self._pending)
                self._pending.clear()
            self.stats["copies"] += 1
            self.stats["tensor_copies"] += len(group.entries)
            self.stats["bytes"] += group.nbytes
            for e in group.entries:
                e.module._parameters[e.name] = e.param.to(self.compute_device, copy=True)
            self._active[group.name] = 1
            self._live()
            return
        self._check(group)
        transfer = self._pending.pop(group.name, None)
        hit = transfer is not None
        if self._pending:                      # a wrong guess: drop it (one copy wasted)
            self.stats["wasted"] += len(self._pending)
            self._pending.clear()
        if transfer is None:
            transfer = self._copy(group)
        else:
            self.stats["prefetch_hits"] += 1
        if self.trace is not None:
            self.trace.append(("fetch", group.name, hit))
        if transfer.event is not None:
            stream = torch.cuda.current_stream(self.compute_device)
            stream.wait_event(transfer.event)
            for buf in transfer.buffers:
                buf.record_stream(stream)
        for e in group.entries:
            e.module._parameters[e.name] = transfer.buffers[e.flat][e.offset:e.offset + e.param.numel()].view(
                e.param.shape)
        self._active[group.name] = 1
        if self.prefetch:
            following = self._next[phase].get(group.name, self._static_next[phase].get(group.name))
            if following is not None and following != group.name and following not in self._active:
                nxt = self._groups[following]
                if not (torch.is_grad_enabled() and any(e.param.requires_grad for e in nxt.entries)):
                    self._pending[following] = self._copy(nxt)
                    if self.trace is not None:
                        self.trace.append(("prefetch", following))
        self._live()

    def _exit(self, group: _Group) -> None:
        count = self._active.get(group.name, 0)
        if count > 1:
            self._active[group.name] = count - 1
            return
        self._active.pop(group.name, None)
        for e in group.entries:
            e.module._parameters[e.name] = e.param

    def report(self) -> dict:
        out = self.plan.report()
        out.update(on_device=self.on_device, pinned=self.pin, compute_device=str(self.compute_device),
                   storage_device=str(self.storage_device), stats=dict(self.stats))
        return out


def enable_layer_streaming(model: nn.Module, num_persistent_params: Optional[float] = None,
                           compute_device: Device = "cuda", storage_device: Device = "cpu",
                           **kwargs) -> LayerStreamer:
    """Stream `model`'s overflow weights (see `LayerStreamer`); replaces a previous streamer of the same model."""
    return LayerStreamer(model, num_persistent_params, compute_device, storage_device, **kwargs)


def disable_layer_streaming(model: nn.Module) -> None:
    streamer = getattr(model, "_vram_streamer", None)
    if streamer is not None:
        streamer.remove()


def vram_report(model: nn.Module, num_persistent_params: Optional[float] = None) -> dict:
    """Resident/streamed parameters and bytes of a managed model (its live plan and transfer stats), or, for an
    unmanaged model (or when a budget is given), of the plan that budget would give; works on `meta` models."""
    streamer = getattr(model, "_vram_streamer", None)
    if streamer is not None and num_persistent_params is None:
        return streamer.report()
    return plan_vram(model, num_persistent_params).report()


__all__ = ["ADAPTER_PREFIXES", "VRAMPlan", "Leaf", "LayerStreamer", "plan_vram", "iter_leaves", "group_roots",
           "enable_layer_streaming", "disable_layer_streaming", "vram_report"]
