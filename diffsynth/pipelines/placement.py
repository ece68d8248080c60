"""Where a pipeline's models live while it runs: whole-model CPU offload, layer streaming (`enable_vram_management`),
several GPUs (`enable_parallel`) and `torch.compile`. A mixin of `WanPipelineBase`; it knows models only by the names in
`MODEL_NAMES` and the attributes holding them."""
from __future__ import annotations

import math
import numbers
from typing import List, Optional, Tuple

import torch


class ModelPlacement:
    """Placement state and moves (see the module docstring). Models are used where they are (the ModelManager's
    device) unless `device` differs: then each model is moved to `device` when first needed and stays there, or,
    after `enable_cpu_offload()`, is moved back to the CPU as soon as the next model is needed (one model on the
    GPU at a time)."""

    MODEL_NAMES: Tuple[str, ...] = ()

    def _init_placement(self, device) -> None:
        self.device = torch.device(device)
        self.cpu_offload = False
        self.offload_device = torch.device("cpu")
        self._placed: Optional[set] = None     # see `_on_device`
        self._streamers: dict = {}             # model name -> LayerStreamer (enable_vram_management)
        self._compiled = False
        self._fsdp = False
        self.parallel = None                   # a `diffsynth.distributed.ParallelState` after enable_parallel()

    # ------------------------------------------------------------------------------------------- placement
    def enable_cpu_offload(self) -> None:
        """Keep models on the CPU and move each to `device` only while it runs (lower GPU memory, slower)."""
        self.cpu_offload = True

    def enable_vram_management(self, num_persistent_param_in_dit: Optional[float] = None,
                               prefetch: bool = True) -> None:
        """Layer streaming, as the upstream scripts call it (`pipe.enable_vram_management(num_persistent_param_in_dit=
        6e9)`); see `diffsynth.acceleration.vram` and docs/memory.md.

        - DiT: leaf modules in upstream order stay resident on `device` until the running parameter count passes
          `num_persistent_param_in_dit`; every later one streams from (pinned) CPU memory, one copy per block, the
          next block prefetched on a side stream. None keeps the whole DiT resident, 0 streams all of it. Bare
          parameters (`modulation`) are always resident.
        - umT5 and CLIP: everything streams (CLIP's small patch embedding stays resident: it says where CLIP runs).
        - VAE and pose guider: moved to `device` for their stage only (as with `enable_cpu_offload`).
        Results are bit-identical to a run without it. Call again to change the budget.
        """
        from ..acceleration.vram import enable_layer_streaming  # noqa: PLC0415

        budget = num_persistent_param_in_dit
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, numbers.Real)
                                   or math.isnan(budget) or budget < 0):
            raise ValueError(f"num_persistent_param_in_dit must be None (all resident) or a number of parameters "
                             f">= 0 (e.g. 6e9, as the upstream scripts); got {budget!r}")

        if self._compiled:
            raise RuntimeError("enable_vram_management must come before pipe.compile(): streamed weights change "
                               "every call, which a compiled graph would recompile for")
        self.cpu_offload = True
        streamers = self._vram_streamers()
        for name, budget, resident in (("dit", num_persistent_param_in_dit, ()), ("text_encoder", 0, ()),
                                       ("image_encoder", 0, ("visual.patch_embedding",))):
            model = getattr(self, name, None)
            if model is None:
                continue
            # A placed model keeps its resident part on the device; the streamed part goes to CPU memory.
            streamers[name] = enable_layer_streaming(
                model, budget, compute_device=self.device, storage_device=self.offload_device,
                always_resident=resident, prefetch=prefetch, onload=name in self._on_device)

    def _vram_streamers(self) -> dict:
        return self._streamers

    def models_on_device(self) -> List[str]:
        """Names of the models this pipeline has placed on the compute device (and not moved back since). With VRAM
        management a placed DiT/umT5/CLIP has its resident part there; its streamed weights stay in CPU memory."""
        return [name for name in self.MODEL_NAMES if name in self._on_device]

    def _onload(self, *names: str) -> torch.nn.Module:
        """Move the models `names` to the compute device (and, with CPU offload, every other model back to the
        CPU). Returns the first one."""
        if self.cpu_offload:
            for other in self.MODEL_NAMES:
                if other not in names and getattr(self, other) is not None and other in self._on_device:
                    self._offload(other)
        streamers = self._vram_streamers()
        for name in names:
            model = getattr(self, name)
            if model is None:
                raise ValueError(f"the pipeline has no {name}")
            if name not in self._on_device:
                if name in streamers:
                    streamers[name].onload()
                else:
                    model.to(self.device)
                self._on_device.add(name)
        return getattr(self, names[0])

    def _offload(self, name: str) -> None:
        streamer = self._vram_streamers().get(name)
        if streamer is not None:
            streamer.offload()
        else:
            getattr(self, name).to(self.offload_device)
        self._on_device.discard(name)

    @property
    def _on_device(self) -> set:
        # Tracked by name, not read from parameter devices: a model loaded straight onto the GPU counts as placed,
        # and the bookkeeping stays testable on a CPU-only machine.
        if self._placed is None:
            self._placed = {name for name in self.MODEL_NAMES if getattr(self, name) is not None
                            and next(getattr(self, name).parameters()).device == self.device}
        return self._placed

    # ------------------------------------------------------------------------------------------- multi-GPU
    def enable_parallel(self, state, dit_fsdp: bool = False, t5_fsdp: bool = False) -> None:
        """Split every generation across the ranks of `state` (`diffsynth.distributed.init_parallel`, under
        torchrun): the DiT's tokens across each sequence-parallel group (Ulysses), the two CFG branches across the
        CFG groups. Every rank runs the call with the same arguments; only rank 0 decodes and returns frames (the
        other ranks return None). `dit_fsdp` / `t5_fsdp` shard those weights over all ranks (FSDP2, as Wan2.1's
        flags; `diffsynth.distributed.fsdp`). See docs/parallel.md."""
        from ..distributed.fsdp import shard_model  # noqa: PLC0415
        from ..distributed.sequence_parallel import SequenceParallel  # noqa: PLC0415

        config = state.config
        if self.dit.config.num_heads % config.ulysses_size:
            raise ValueError(f"ulysses_size {config.ulysses_size} must divide the DiT's {self.dit.config.num_heads} "
                             "heads")
        if state.world_size > 1 and self._vram_streamers():
            raise ValueError("enable_parallel with enable_vram_management is not supported yet: each rank would "
                             "stream the whole DiT; use the GPUs' memory instead, or one process per GPU with "
                             "item parallel (diffsynth.distributed.item_shard)")
        if (dit_fsdp or t5_fsdp) and (state.world_size == 1 or self.cpu_offload):
            raise ValueError("FSDP sharding needs several processes (torchrun) and no CPU offload / layer streaming "
                             "(they move the weights the shards live in)")
        self.parallel = state
        self.device = state.device
        self._placed = None
        self.dit.sequence_parallel = SequenceParallel(state.sp_group, config.ring_size) if config.sp_size > 1 \
            else None
        for name, wanted in (("dit", dit_fsdp), ("text_encoder", t5_fsdp)):
            if wanted:
                shard_model(getattr(self, name), state)
                self._on_device.add(name)
        self._fsdp = bool(dit_fsdp)

    @property
    def is_main_process(self) -> bool:
        return self.parallel is None or self.parallel.is_main

    def _cfg_parallel(self) -> bool:
        return self.parallel is not None and self.parallel.config.cfg_parallel

    def _gather_branches(self, velocity: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """CFG parallel: this rank's branch velocity -> (conditional, unconditional) from the CFG group."""
        import torch.distributed as dist  # noqa: PLC0415

        parts = [torch.empty_like(velocity) for _ in range(2)]
        dist.all_gather(parts, velocity.contiguous(), group=self.parallel.cfg_group)
        return parts[0], parts[1]

    # ---------------------------------------------------------------------------------------------- compile
    def compile(self, mode: Optional[str] = None) -> None:
        """`torch.compile` every DiT block (`dynamic=False`: one graph per video size). The first call at a new size
        pays the compile time (minutes for the 14B DiT on a GPU); later steps run the fused kernels. Not combinable
        with `enable_vram_management` (streamed weights are new tensors on every call). Inductor cannot generate code
        for the float64 complex RoPE multiply (the upstream-exact default), which then runs eagerly inside the
        graph: set `pipe.dit.rope_precision = "float32"` for a fully compiled block. A step cache that makes the two
        CFG branches skip different steps runs the blocks on a batch of 1: a second graph, compiled once."""
        if self.dit is None:
            raise ValueError("the pipeline has no DiT to compile")
        if "dit" in self._vram_streamers():
            raise RuntimeError("pipe.compile() cannot follow enable_vram_management(): streamed weights are new "
                               "tensors on every call, so the compiled blocks would recompile each time")
        for block in self.dit.blocks:
            block.compile(dynamic=False, mode=mode)
        self._compiled = True


__all__ = ["ModelPlacement"]
