"""Training that survives a crash: resumable checkpoints, written and rotated here (the data order they continue
is data_order.py, the stop signals signals.py, the loss log loss_log.py; resume_checks.py checks one before a run).

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

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch
from lightning.pytorch.callbacks import Callback

from ..data.safe_write import atomic_output
from .data_order import EpochSampler, ResumableDataLoader, capture_rng_state, make_loader, restore_rng_state
from .errors import NonFiniteError, find_nonfinite
from .loss_log import LOSS_FILE, LossLog
from .signals import StopRequest

logger = logging.getLogger(__name__)

RESUME_PREFIX = "resume-"
RESUME_SUFFIX = ".ckpt"
RESUME_KEY = "unianimate_resume"          # the module's training settings in a resumable checkpoint


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


__all__ = ["NonFiniteError", "find_nonfinite", "loader_state", "EpochSampler", "ResumableDataLoader", "make_loader",
           "capture_rng_state", "restore_rng_state",
           "StopRequest", "ResumeCheckpoint", "LossLog", "find_resume_checkpoints", "latest_resume_checkpoint",
           "read_resume_checkpoint", "resume_name", "RESUME_KEY", "LOSS_FILE"]
