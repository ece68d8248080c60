"""The progress bar: `ProgressEvent`s of a job -> one overall fraction and a line of text, with an ETA."""
from __future__ import annotations

import time
from typing import Callable, Optional

from ..animate.settings import ProgressEvent

# Where each stage sits on the overall progress bar (start, end).
# Decoding (a third of a job's time at 480p) has its own span: after the steps for short clips, inside "write" when
# long videos are decoded while they are written.
STAGE_SPANS = {"poses": (0.0, 0.1), "load": (0.1, 0.15), "encode": (0.15, 0.2), "generate": (0.2, 0.75),
               "decode": (0.75, 0.8), "write": (0.8, 1.0), "done": (1.0, 1.0)}


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class ProgressReporter:
    """`ProgressEvent`s -> `report(overall fraction, text)`: one bar across the stages (STAGE_SPANS), and during
    the denoising steps an ETA from the time per step measured so far."""

    def __init__(self, report: Callable[[float, str], None], clock: Callable[[], float] = time.monotonic):
        self.report, self.clock = report, clock
        self._started: Optional[float] = None

    def __call__(self, event: ProgressEvent) -> None:
        start, end = STAGE_SPANS.get(event.stage, (0.0, 0.0))
        overall = start + (end - start) * (event.fraction or 0.0)
        text = f"{event.stage}: {event.message}" if event.message else event.stage
        if event.stage == "generate" and event.total:
            if event.done == 0 or self._started is None:
                self._started = self.clock()
                text = f"denoising: step 0/{event.total}"
            else:
                per_step = (self.clock() - self._started) / event.done
                text = (f"denoising: step {event.done}/{event.total}, {per_step:.1f} s/step, "
                        f"ETA {format_seconds(per_step * (event.total - event.done))}")
        self.report(overall, text)

