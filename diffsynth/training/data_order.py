"""A data order that a resumed run continues: `EpochSampler` (a seeded permutation per epoch, its epoch and position
saved through the `ResumableDataLoader.state_dict` that Lightning stores in every checkpoint), and the RNG states
captured after an optimizer step and put back before the next one (resume.py's `ResumeCheckpoint`), so the noise,
timesteps and dropout of a resumed run match the uninterrupted run's."""
from __future__ import annotations

import logging
import math
import random
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

logger = logging.getLogger(__name__)


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch that can be resumed in the middle of an epoch.

    With several processes, each takes every `num_replicas`-th index of the (padded) permutation, as
    `DistributedSampler` does; `position` counts the indices this process has consumed in the current epoch.
    The seed is drawn once from the OS when none is given, and saved, so an unseeded run resumes exactly too.
    """

    def __init__(self, length: int, seed: Optional[int] = None, dataset=None):
        if length < 1:
            raise ValueError("the dataset is empty")
        self.length = length
        self.dataset = dataset                                  # told the epoch too, when it has `set_epoch`
        self.seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self.epoch, self.position = 0, 0
        self._layout: Optional[tuple] = None                    # (num_replicas, rank) when set explicitly

    def set_distributed(self, num_replicas: int, rank: int) -> None:
        self._layout = (num_replicas, rank)

    @property
    def num_replicas(self) -> int:
        return self._distribution()[0]

    @property
    def rank(self) -> int:
        return self._distribution()[1]

    def _distribution(self) -> tuple:
        if self._layout is not None:
            return self._layout
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Called by Lightning before every epoch (also a resumed one); a new epoch starts at its beginning."""
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(self.epoch)

    def epoch_indices(self, epoch: int) -> List[int]:
        """This process's indices of `epoch`, in order."""
        order = np.random.default_rng([self.seed, epoch]).permutation(self.length).tolist()
        total = self.num_samples * self.num_replicas
        order += order[: total - len(order)]                    # pad as DistributedSampler does
        return order[self.rank:total:self.num_replicas]

    @property
    def num_samples(self) -> int:
        return math.ceil(self.length / self.num_replicas)

    def __len__(self) -> int:
        return self.num_samples                                 # the whole epoch, also when resumed mid-epoch

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices(self.epoch)[self.position:])

    def commit(self, consumed: int) -> None:
        """Record that the training loop has used the first `consumed` indices of this epoch."""
        self.position = consumed

    def state_dict(self) -> Dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position, "length": self.length,
                "num_replicas": self.num_replicas}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        if int(state["length"]) != self.length:
            raise ValueError(f"the checkpoint was written for {state['length']} samples per epoch, but the dataset "
                             f"now has {self.length}: the data order cannot be continued (same data and "
                             "--steps_per_epoch needed)")
        if int(state["num_replicas"]) != self.num_replicas:
            logger.warning("the checkpoint was written by %d processes, this run has %d: the rest of the epoch is "
                           "split differently", state["num_replicas"], self.num_replicas)
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
        if self.position >= self.num_samples:                  # saved after the last batch of an epoch
            self.epoch, self.position = self.epoch + 1, 0
        self.set_epoch(self.epoch)


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochSampler`. Its `state_dict` makes Lightning store the sampler's position in every
    checkpoint and restore it before the first batch is drawn (before worker processes copy the dataset)."""

    def state_dict(self) -> Dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Dict[str, int]) -> None:
        self.sampler.load_state_dict(state)


def make_loader(dataset, seed: Optional[int], num_workers: int) -> ResumableDataLoader:
    """Batch size 1 over a seeded `EpochSampler`. The loader gets its own generator, so starting an epoch does not
    draw from the global torch RNG (which would shift the noise of a resumed run)."""
    generator = torch.Generator().manual_seed(seed if seed is not None else 0)
    return ResumableDataLoader(dataset, batch_size=1, sampler=EpochSampler(len(dataset), seed, dataset),
                               num_workers=num_workers, persistent_workers=False, generator=generator)


# ----------------------------------------------------------------------------------------------- RNG states
def capture_rng_state() -> Dict[str, Any]:
    """torch, CUDA, numpy and Python `random` states, as tensors / numbers (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["internal"].tolist()), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


__all__ = ["EpochSampler", "ResumableDataLoader", "make_loader", "capture_rng_state", "restore_rng_state"]
