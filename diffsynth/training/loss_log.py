"""`loss.csv`: one row per optimizer step, kept consistent across resumed runs."""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import List

import torch
from lightning.pytorch.callbacks import Callback

from ..data.safe_write import atomic_write_text

LOSS_FILE = "loss.csv"
LOSS_COLUMNS = ("step", "epoch", "loss", "lr")


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


__all__ = ["LossLog", "LOSS_FILE", "LOSS_COLUMNS"]
