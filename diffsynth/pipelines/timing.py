"""Per-stage wall time of a generation, and the one-line summary printed at its end."""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Dict, Optional

import torch


class StageTimer:
    """Accumulates seconds per stage (`with timer("denoise"): ...`). On CUDA each stage is closed with a device
    synchronisation so the seconds belong to the stage that queued the work; peak GPU memory is read at the end."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds: Dict[str, float] = {}
        self._open: Dict[str, float] = {}
        self.steps = 0
        self.frames = 0
        self._start = time.perf_counter()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, stage: str) -> None:
        """Open `stage` (for stages that span code a `with` block would obscure)."""
        self._sync()
        self._open[stage] = time.perf_counter()

    def stop(self, stage: str) -> None:
        """Close `stage` and add its seconds."""
        self._sync()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - self._open.pop(stage)

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self.start(stage)
        try:
            yield
        finally:
            self.stop(stage)

    @property
    def total(self) -> float:
        return time.perf_counter() - self._start

    def peak_gpu_bytes(self) -> Optional[int]:
        return torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None

    def report(self) -> dict:
        """The figures as a dict (kept on the pipeline as `last_timings`)."""
        out = {"total_s": round(self.total, 3), "stages_s": {k: round(v, 3) for k, v in self.seconds.items()},
               "steps": self.steps, "frames": self.frames}
        if self.steps and "denoise" in self.seconds:
            out["s_per_step"] = round(self.seconds["denoise"] / self.steps, 4)
        peak = self.peak_gpu_bytes()
        if peak is not None:
            out["peak_gpu_gib"] = round(peak / 2**30, 2)
        return out

    def summary(self) -> str:
        """One line: total time, time per stage, s/step, and peak GPU memory on CUDA."""
        report = self.report()
        stages = ", ".join(f"{k} {v:.1f} s" for k, v in self.seconds.items())
        line = f"generated {self.frames} frames in {report['total_s']:.1f} s ({stages}"
        if "s_per_step" in report:
            line += f"; {report['s_per_step']:.2f} s/step over {self.steps} steps"
        line += ")"
        if "peak_gpu_gib" in report:
            line += f"; peak GPU memory {report['peak_gpu_gib']:.1f} GiB"
        return line

    def print_summary(self) -> None:
        print(self.summary(), file=sys.stderr, flush=True)


__all__ = ["StageTimer"]
