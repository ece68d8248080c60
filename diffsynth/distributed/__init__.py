"""Several GPUs and machines under torchrun: sequence parallel (Ulysses), CFG parallel, item parallel. docs/parallel.md"""
from .state import ParallelConfig, ParallelState, env_world, init_parallel, item_shard, layout_groups

__all__ = ["ParallelConfig", "ParallelState", "init_parallel", "item_shard", "layout_groups", "env_world"]
