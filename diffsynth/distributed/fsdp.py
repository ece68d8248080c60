"""Weight sharding for inference with PyTorch FSDP2 (`torch.distributed.fsdp.fully_shard`), as Wan2.1's `--t5_fsdp
--dit_fsdp`: each rank keeps 1/N of every weight and all-gathers one unit (a transformer block, an embedding, the
head) just before it runs, so GPUs too small for the 14B DiT (33 GB in bf16) can hold their share.

Every child of the model that holds parameters becomes its own FSDP root (each ModuleList element on its own): the
pipelines call the DiT's embeddings outside its forward, which FSDP allows only for a module that is a root itself.
Refused combinations, with the reason: layer
streaming (both decide where the weights live), and CFG parallel with a step cache (the two branches may skip
different steps, so their ranks would call different all-gathers and hang).
"""
from __future__ import annotations

from typing import List

import torch.nn as nn


def shard_units(model: nn.Module) -> List[str]:
    """Names of the units `shard_model` wraps: the elements of ModuleLists (blocks) and every other child with
    parameters."""
    units = []
    for name, child in model.named_children():
        if isinstance(child, nn.ModuleList):
            units.extend(f"{name}.{i}" for i in range(len(child)))
        elif any(True for _ in child.parameters()):
            units.append(name)
    return units


def shard_model(model: nn.Module, state) -> List[str]:
    """Shard `model`'s weights over every rank of `state` (FSDP2, each unit gathered for its forward and resharded
    after it); returns the unit names. The model's values are unchanged: a forward gives what the unsharded model gives."""
    from torch.distributed.device_mesh import init_device_mesh  # noqa: PLC0415
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    if getattr(model, "_fsdp_units", None) is not None:     # already sharded (models shared by two pipelines)
        return model._fsdp_units
    if getattr(model, "_vram_streamer", None) is not None:
        raise ValueError("FSDP sharding and layer streaming (enable_vram_management) both decide where the weights "
                         "live: use one of them")
    mesh = init_device_mesh(state.device.type, (state.world_size,))
    model.to(state.device)
    modules = dict(model.named_modules())
    units = shard_units(model)
    direct = [name for name, _ in model.named_parameters(recurse=False)]
    if direct:
        raise ValueError(f"{type(model).__name__} holds parameters outside its children ({direct}): cannot shard it "
                         "unit by unit")
    for name in units:
        fully_shard(modules[name], mesh=mesh, reshard_after_forward=True)
    model._fsdp_units = units
    return units


__all__ = ["shard_model", "shard_units"]
