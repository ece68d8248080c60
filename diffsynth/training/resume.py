"""Training that survives a crash: resumable checkpoints, a data order that can be continued, the loss log.

A resumable checkpoint is a Lightning checkpoint whose `state_dict` holds only the trainable tensors (the frozen DiT,
T5, VAE and CLIP are left out), plus the optimizer, the loop counters (global step, epoch, batch), the sampler
position and the RNG states. It is written next to the release-format files, as
`<version>/checkpoints/resume-epoch=E-step=S.ckpt`, every `--save_every_n_steps` optimizer steps, at the end of
training and when the run is stopped by Ctrl-C or SIGTERM. Files are written to a temporary name in the same folder
and renamed (`safe_write.atomic_output`), so a crash while writing never leaves a truncated checkpoint behind.
Everything in it is a tensor, a number, a string or a list/dict of those, so `torch.load(weights_only=True)` reads
it.

Resuming (`trainer.fit(..., ckpt_path=path, weights_only=True)`) continues bit for bit where the uninterrupted run
would be, on one process: `EpochSampler` (seeded permutation per epoch, its epoch and position saved through the
`ResumableDataLoader.state_dict` that Lightning stores) gives the same samples, and the RNG states captured after
the last optimizer step are put back before the next training step, so noise, timesteps and dropout match too.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import random
import signal
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Sampler

from ..data.safe_write import atomic_output, atomic_write_text

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """NaN or Inf in a loss, gradients, weights or a loaded file: training stops instead of going on with them."""


RESUME_PREFIX = "resume-"
RESUME_SUFFIX = ".ckpt"
RESUME_KEY = "unianimate_resume"          # the module's training settings in a resumable checkpoint
LOSS_FILE = "loss.csv"
LOSS_COLUMNS = ("step", "epoch", "loss", "lr")


# ----------------------------------------------------------------------------------------------- finite values
def find_nonfinite(obj: Any, prefix: str = "", limit: int = 5) -> List[str]:
    """The keys (dotted paths) of floating-point tensors holding NaN or Inf in a nested dict/list of tensors,
    at most `limit` of them."""
    found: List[str] = []

    def visit(value, key):
        if len(found) >= limit:
            return
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and value.numel() \
                    and not bool(torch.isfinite(value).all()):
                found.append(key)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{key}.{i}" if key else str(i))

    visit(obj, prefix)
    return found


# ----------------------------------------------------------------------------------------------- data order
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


# ----------------------------------------------------------------------------------------------- stopping
class StopRequest:
    """SIGINT / SIGTERM handlers that ask the training to stop after the current optimizer step (the
    `ResumeCheckpoint` callback then writes a resumable checkpoint). A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.signum: Optional[int] = None
        self._previous: Dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logger.warning("received %s: stopping after the current step and writing a resumable checkpoint "
                       "(Ctrl-C again to stop at once)", signal.Signals(signum).name)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}


# ----------------------------------------------------------------------------------------------- checkpoints
def resume_name(epoch: int, step: int) -> str:
    return f"{RESUME_PREFIX}epoch={epoch}-step={step}{RESUME_SUFFIX}"


def find_resume_checkpoints(output_path) -> List[Path]:
    """Every resumable checkpoint under `output_path`, oldest first (by modification time)."""
    root = Path(output_path)
    if not root.is_dir():
        return []
    files = [p for p in root.rglob(f"{RESUME_PREFIX}*{RESUME_SUFFIX}") if p.is_file()]
    return sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name))


def latest_resume_checkpoint(output_path) -> Optional[Path]:
    """The most recently written resumable checkpoint under `output_path`, or None."""
    files = find_resume_checkpoints(output_path)
    return files[-1] if files else None


def read_resume_checkpoint(path) -> Dict[str, Any]:
    """The checkpoint, memory-mapped (cheap even for large files); checks that it is a resumable one."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise ValueError(f"{path} is not a readable resumable checkpoint ({type(error).__name__}: {error})") from error
    if not isinstance(checkpoint, dict) or RESUME_KEY not in checkpoint:
        raise ValueError(f"{path} is not a resumable checkpoint of this trainer (no {RESUME_KEY!r} entry); a release "
                         "file (epoch=E-step=S.ckpt) holds only weights: use --pretrained_lora_path for it")
    bad = find_nonfinite({"state_dict": checkpoint.get("state_dict", {}),
                          "optimizer_states": checkpoint.get("optimizer_states", [])})
    if bad:
        raise ValueError(f"{path} holds NaN/Inf values in {', '.join(bad)}: resuming would train on them. Resume "
                         "from an earlier resumable checkpoint with --resume_from_checkpoint")
    return checkpoint


def loader_state(checkpoint: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The `EpochSampler` state stored in a resumable checkpoint (None when it is not there)."""
    try:
        state = checkpoint["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    except (KeyError, IndexError, TypeError):
        return None
    return state if isinstance(state, dict) and "length" in state else None


class ResumeCheckpoint(Callback):
    """Writes resumable checkpoints and puts the RNG state back when a run resumes.

    Args:
        every_n_steps: write one every this many optimizer steps (0: only at the end and on a stop request).
        keep: keep this many of this run's resumable checkpoints (the most recent), delete older ones.
        stop: a `StopRequest` whose signal makes the run stop, with a checkpoint, after the current step.
    """

    def __init__(self, every_n_steps: int = 100, keep: int = 2, stop: Optional[StopRequest] = None):
        self.every_n_steps, self.keep, self.stop = every_n_steps, keep, stop
        self.snapshot: Optional[Dict[str, Any]] = None      # RNG state right after the last optimizer step
        self.snapshot_step = -1
        self.pending_rng: Optional[List[Dict[str, Any]]] = None
        self.start_step = self.last_saved_step = -1
        self.written: List[Path] = []

    # -- state carried by the checkpoint (Lightning calls these on every rank)
    def state_dict(self) -> Dict[str, Any]:
        states = [self.snapshot if self.snapshot is not None else capture_rng_state()]
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            gathered: List[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, states[0])
            states = gathered
        return {"rng": states}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.pending_rng = state.get("rng")

    # -- hooks
    def on_train_start(self, trainer, pl_module) -> None:
        # The starting point is itself a consistent point: the state restored from a checkpoint, or the fresh one.
        self.start_step = self.snapshot_step = trainer.global_step
        self.snapshot = self._own_pending_state(trainer) if self.pending_rng else capture_rng_state()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # Put the RNG back as late as possible: right before the first training step of a resumed run.
        if self.pending_rng:
            restore_rng_state(self._own_pending_state(trainer))
            self.pending_rng = None

    def _own_pending_state(self, trainer) -> Dict[str, Any]:
        states = self.pending_rng
        if len(states) != trainer.world_size:
            logger.warning("the checkpoint holds the RNG states of %d processes, this run has %d: the random draws "
                           "differ from an uninterrupted run", len(states), trainer.world_size)
        return states[min(trainer.global_rank, len(states) - 1)]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.stop is not None and self.stop.signum is not None and trainer.world_size == 1:
            # Lightning's own SIGTERM handler ends the loop right after this batch, which in the middle of a
            # gradient accumulation would lose every step since the last checkpoint (and with one process, no
            # rank has to learn of it): the stop request ends the run after the optimizer step instead.
            connector = getattr(trainer, "_signal_connector", None)
            if connector is not None and hasattr(connector, "received_sigterm"):
                connector.received_sigterm = False
        if trainer.global_step == self.snapshot_step:
            return                                               # accumulating gradients: no step yet
        # An optimizer step just finished: this is a consistent point to resume from.
        self.snapshot, self.snapshot_step = capture_rng_state(), trainer.global_step
        sampler = _sampler(trainer)
        if sampler is not None:
            sampler.commit(batch_idx + 1)
        pl_module.weights_ahead_of_snapshot = False
        stop = trainer.strategy.reduce_boolean_decision(bool(self.stop and self.stop.signum), all=False)
        if stop or _last_step(trainer, batch_idx) or \
                (self.every_n_steps and trainer.global_step % self.every_n_steps == 0):
            self.save(trainer, pl_module)
        if stop:
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        # Normally the last step was saved above (with the loop still in its epoch, so the rest of the epoch is
        # trained when the run is extended). This catches other ends; Lightning then counts the epoch as done.
        if trainer.global_step > self.start_step and self.last_saved_step != trainer.global_step:
            self.save(trainer, pl_module)

    def last_good(self) -> str:
        """The newest resumable checkpoint this run wrote (each one was checked finite before it was written)."""
        return str(self.written[-1]) if self.written else "none of this run"

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, NonFiniteError):
            logger.error("stopped on non-finite values, nothing saved; the last resumable checkpoint with finite "
                         "weights is %s", self.last_good())
            return
        if not isinstance(exception, (KeyboardInterrupt, SystemExit)) or self.last_saved_step == trainer.global_step:
            return
        reason = None
        if trainer.world_size > 1:
            reason = "several processes (a collective save could hang)"
        elif self.snapshot_step != trainer.global_step or getattr(pl_module, "weights_ahead_of_snapshot", False):
            reason = "the weights were being updated"
        elif _sampler(trainer) is not None and \
                trainer.fit_loop.epoch_loop.batch_progress.current.completed != _sampler(trainer).position:
            reason = "gradients of an unfinished accumulation would be lost"
        if reason:
            logger.error("interrupted, and no resumable checkpoint written: %s. The last one is %s", reason,
                         self.written[-1] if self.written else "none of this run")
            return
        logger.warning("interrupted: writing a resumable checkpoint at step %d", trainer.global_step)
        self.save(trainer, pl_module)

    # -- writing
    def save(self, trainer, pl_module) -> Optional[Path]:
        folder = _checkpoint_dir(trainer)
        if folder is None:
            logger.warning("no checkpoint folder (ModelCheckpoint) configured: resumable checkpoint not written")
            return None
        final = folder / resume_name(trainer.current_epoch, trainer.global_step)
        # A checkpoint of non-finite weights is never written, so the rotation below never deletes the last good one
        # (the module's on_save_checkpoint checks the optimizer state too).
        bad = find_nonfinite(pl_module.trainable_state_dict())
        if bad:
            raise NonFiniteError(f"step {trainer.global_step}: the weights hold NaN/Inf ({', '.join(bad)}); no "
                                 f"checkpoint written. The last good one is {self.last_good()}")
        pl_module.saving_resumable = True
        try:
            if trainer.is_global_zero:
                folder.mkdir(parents=True, exist_ok=True)
                with atomic_output(final) as tmp:           # a hidden temporary file, renamed when complete
                    trainer.save_checkpoint(tmp, weights_only=False)
            else:
                trainer.save_checkpoint(final, weights_only=False)    # a collective call; only rank 0 writes
        finally:
            pl_module.saving_resumable = False
        if trainer.is_global_zero:
            self.written.append(final)
            logger.info("resumable checkpoint: %s", final)
            for old in self.written[:-self.keep] if self.keep > 0 else []:
                old.unlink(missing_ok=True)
            self.written = self.written[-self.keep:] if self.keep > 0 else self.written
        trainer.strategy.barrier("resumable checkpoint")
        self.last_saved_step = trainer.global_step
        return final


def _last_step(trainer, batch_idx: int) -> bool:
    """Whether the optimizer step just taken is the last of the run (max_steps, or the last batch of max_epochs)."""
    if 0 <= trainer.max_steps <= trainer.global_step:
        return True
    max_epochs = trainer.max_epochs if trainer.max_epochs is not None else -1
    return 0 <= max_epochs <= trainer.current_epoch + 1 and batch_idx + 1 >= trainer.num_training_batches


def _sampler(trainer) -> Optional[EpochSampler]:
    sampler = getattr(trainer.train_dataloader, "sampler", None)
    return sampler if isinstance(sampler, EpochSampler) else None


def _checkpoint_dir(trainer) -> Optional[Path]:
    callback = trainer.checkpoint_callback
    return Path(callback.dirpath) if callback is not None and callback.dirpath else None


# ----------------------------------------------------------------------------------------------- loss log
class LossLog(Callback):
    """One CSV row per optimizer step: step, epoch, loss (mean over the accumulated batches and the processes),
    learning rate. On a resumed run the rows after the resumed step (written before the crash) are dropped first,
    so the file holds each step once."""

    def __init__(self, path):
        self.path = Path(path)
        self.losses: List[torch.Tensor] = []
        self.last_step = -1
        self.started = False

    def on_train_start(self, trainer, pl_module) -> None:
        self.last_step = trainer.global_step
        self.started = True
        if trainer.is_global_zero:
            self._keep_rows_up_to(trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        # A run resumed at or past its --max_steps trains nothing (no on_train_start), but the rows after the
        # resumed step are still not part of it.
        if not self.started and trainer.is_global_zero and trainer.global_step > 0:
            self._keep_rows_up_to(trainer.global_step)

    def _keep_rows_up_to(self, step: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if step > 0 and self.path.is_file():
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if row.get("step", "").isdigit() and int(row["step"]) <= step]
        text = io.StringIO()
        writer = csv.DictWriter(text, LOSS_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in LOSS_COLUMNS} for row in kept)
        atomic_write_text(self.path, text.getvalue())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(loss.detach().float())
        if trainer.global_step == self.last_step:
            return
        self.last_step = trainer.global_step
        value = torch.stack(self.losses).mean() if self.losses else torch.tensor(float("nan"))
        self.losses = []
        value = trainer.strategy.reduce(value.to(pl_module.device), reduce_op="mean")
        if trainer.is_global_zero:
            lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
            with open(self.path, "a", newline="") as f:
                row = [trainer.global_step, trainer.current_epoch, f"{float(value):.8g}", f"{lr:.8g}"]
                csv.writer(f, lineterminator="\n").writerow(row)


__all__ = ["NonFiniteError", "find_nonfinite", "loader_state", "EpochSampler", "ResumableDataLoader", "make_loader",
           "capture_rng_state", "restore_rng_state",
           "StopRequest", "ResumeCheckpoint", "LossLog", "find_resume_checkpoints", "latest_resume_checkpoint",
           "read_resume_checkpoint", "resume_name", "RESUME_KEY", "LOSS_FILE"]
