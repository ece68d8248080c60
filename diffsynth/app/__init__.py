"""The web UI: `python -m diffsynth.app [--models tiny|DIR] [--host H] [--port P] [--share]` (gradio, the `app` extra).

Upload a photo and a driving video (or pick an existing pose folder), check the aligned poses with "Preview poses",
choose the resolution, steps, guidance, step cache, fast preset and seed, and "Generate": a progress bar with an ETA
follows the denoising steps, and the clip and its [reference | pose | generated] comparison appear ready to play and
download. Jobs queue (one runs at a time, the others wait with their position shown). Everything runs through
`diffsynth.animate.Animator`, the CLI's engine; the models are loaded once per process (`ModelCache`). Each job
writes into a new folder `outputs/app/<time>-<id>/`, so no file is ever replaced. See docs/app.md.

One concern per module: `controls.py` (the flags' `AppConfig`, controls -> `AnimateSettings`), `progress.py` (the
bar and its ETA), `jobs.py` (preview and generate without gradio, the model cache, job folders), `page.py` (the gradio
page, `build_app`), `server.py` (flags and `main`). gradio is imported only in `build_app` / `main`: the rest works,
and is tested, without it.
"""
from __future__ import annotations

from .controls import (CACHES, DEFAULT_THRESHOLDS, RESOLUTIONS, TINY_RESOLUTION, TINY_STEPS, AppConfig,
                       settings_from_controls)
from .jobs import JobResult, Jobs, ModelCache, find_pose_folders, new_job_folder
from .page import build_app
from .progress import STAGE_SPANS, ProgressReporter, format_seconds
from .server import build_parser, config_from_args, main

__all__ = ["CACHES", "DEFAULT_THRESHOLDS", "RESOLUTIONS", "TINY_RESOLUTION", "TINY_STEPS", "STAGE_SPANS", "AppConfig",
           "settings_from_controls", "ModelCache", "format_seconds", "ProgressReporter", "new_job_folder",
           "find_pose_folders", "JobResult", "Jobs", "build_app", "build_parser", "config_from_args", "main"]
