"""Process groups for multi-GPU generation under `torchrun` (or any launcher that sets RANK/WORLD_SIZE).

World = cfg_degree x sp_size, with cfg_degree = 2 under CFG parallel and sp_size = ulysses_size x ring_size. Rank r
computes CFG branch `r // sp_size` (0 = conditional) on token shard `r % sp_size`:

    4 ranks, cfg_parallel, ulysses 2:   rank 0 (cond, shard 0)  rank 1 (cond, shard 1)
                                        rank 2 (uncond, shard 0) rank 3 (uncond, shard 1)

Every rank runs the whole pipeline with the same seed (so the same noise) and only rank 0 decodes and writes.
`torch.distributed` picks NCCL on CUDA and gloo on the CPU; `torchrun --nnodes` spans machines.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelConfig:
    """How to split one generation: `ulysses_size` x `ring_size` token shards (sequence parallel), times 2 when
    `cfg_parallel` runs the two CFG branches on two rank groups. The product must equal the world size."""

    ulysses_size: int = 1
    ring_size: int = 1
    cfg_parallel: bool = False

    def __post_init__(self):
        for name in ("ulysses_size", "ring_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1; got {value!r}")

    @property
    def sp_size(self) -> int:
        return self.ulysses_size * self.ring_size

    @property
    def cfg_degree(self) -> int:
        return 2 if self.cfg_parallel else 1

    @property
    def world_size(self) -> int:
        return self.sp_size * self.cfg_degree


@dataclass
class ParallelState:
    """This process's place in the layout (see the module docstring) and its process groups."""

    config: ParallelConfig
    rank: int
    world_size: int
    device: torch.device
    sp_group: Optional[dist.ProcessGroup] = None    # the ranks sharing this rank's CFG branch
    cfg_group: Optional[dist.ProcessGroup] = None   # the ranks sharing this rank's token shard (CFG parallel)

    @property
    def cfg_rank(self) -> int:
        """The CFG branch this rank computes under CFG parallel (0 = conditional, 1 = unconditional)."""
        return self.rank // self.config.sp_size

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def layout_groups(config: ParallelConfig) -> tuple:
    """Rank lists of the sequence-parallel groups (one per CFG branch) and the CFG groups (one per shard)."""
    sp = config.sp_size
    sp_groups = [list(range(c * sp, (c + 1) * sp)) for c in range(config.cfg_degree)]
    cfg_groups = [[s + c * sp for c in range(config.cfg_degree)] for s in range(sp)]
    return sp_groups, cfg_groups


def env_world() -> tuple:
    """(rank, world size, local rank) from the launcher's environment (1 process when unset)."""
    return (int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)))


def default_device(local_rank: int) -> torch.device:
    return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")


def init_parallel(config: ParallelConfig = ParallelConfig(), device: Optional[torch.device] = None,
                  backend: Optional[str] = None) -> ParallelState:
    """Join the process group started by the launcher (torchrun) and build the layout's groups.

    The world size must equal `config.world_size`; a single process with the default config needs no launcher.
    Errors name the mismatch and the torchrun command that fits.
    """
    rank, world, local_rank = env_world() if not dist.is_initialized() else \
        (dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    if world != config.world_size:
        raise ValueError(
            f"the layout needs {config.world_size} processes (ulysses {config.ulysses_size} x ring "
            f"{config.ring_size} x {config.cfg_degree} CFG branch group(s)) but {world} were started: run "
            f"torchrun --nproc_per_node={config.world_size} ..., or change the sizes")
    device = device or default_device(local_rank)
    if world == 1:
        return ParallelState(config, 0, 1, device)
    if not dist.is_initialized():
        backend = backend or ("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    sp_lists, cfg_lists = layout_groups(config)
    state = ParallelState(config, rank, world, device)
    if config.ring_size > 1:   # yunchang's Ulysses and ring groups (the same blocks of ranks per CFG branch)
        try:
            from yunchang import set_seq_parallel_pg  # noqa: PLC0415
        except ImportError as error:
            raise ImportError(f"ring attention (ring_size > 1) runs on yunchang, the engine under xDiT: pip install "
                              f"yunchang ({error})") from error
        set_seq_parallel_pg(config.ulysses_size, config.ring_size, rank, world)
    # Every rank creates every group, in the same order (a torch.distributed rule).
    for ranks in sp_lists:
        group = dist.new_group(ranks)
        if rank in ranks:
            state.sp_group = group
    if config.cfg_parallel:
        for ranks in cfg_lists:
            group = dist.new_group(ranks)
            if rank in ranks:
                state.cfg_group = group
    return state


def item_shard(items: List, rank: Optional[int] = None, world_size: Optional[int] = None) -> List:
    """Item parallel: the items this rank handles (r, r + N, r + 2N, ...), each rank a full pipeline."""
    env_rank, env_size, _ = env_world()
    rank = env_rank if rank is None else rank
    world_size = env_size if world_size is None else world_size
    return list(items)[rank::world_size]


def prepare_processes(ulysses_size: int = 1, cfg_parallel: bool = False, ring_size: int = 1):
    """The scripts' multi-GPU set-up under `torchrun --nproc_per_node=N` (docs/parallel.md); returns
    (ParallelState or None, device).

    - One process: (None, "cuda" if available else "cpu").
    - N processes with `ulysses_size` x `ring_size` x (2 if `cfg_parallel`) == N: every video is split across all
      of them (sequence and/or CFG parallel); give the state to `pipe.enable_parallel`.
    - N processes with the defaults (1, False, 1): item parallel; each process is a full pipeline on its own GPU and
      `run_items` gives it items r, r + N, ... (no process group needed).
    """
    _, world, local_rank = env_world()
    if world == 1 or (ulysses_size == 1 and ring_size == 1 and not cfg_parallel):
        return None, default_device(local_rank)
    state = init_parallel(ParallelConfig(ulysses_size=ulysses_size, ring_size=ring_size, cfg_parallel=cfg_parallel))
    return state, state.device



__all__ = ["ParallelConfig", "ParallelState", "init_parallel", "layout_groups", "item_shard", "env_world"]
