"""The page's controls: what the process is started with (`AppConfig`) and the per-job controls as validated
`AnimateSettings` (`settings_from_controls`)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from ..animate.settings import DEFAULT_PROMPT, AnimateSettings
from ..configs import DEMO_HEIGHT, DEMO_INFERENCE, DEMO_WIDTH

CACHES = ("none", "TeaCache", "MagCache")
DEFAULT_THRESHOLDS = {"TeaCache": 0.2, "MagCache": 0.12}
RESOLUTIONS = ("480p", "720p")
# Defaults with --models tiny: the demo model's own size and steps (a clip in seconds on a CPU).
TINY_RESOLUTION, TINY_STEPS = str(DEMO_HEIGHT * DEMO_WIDTH), DEMO_INFERENCE["num_inference_steps"]


@dataclass
class AppConfig:
    """What the process is started with (the command-line flags); the per-job controls come from the page."""

    models: str = "checkpoints"
    vram: str = "all"
    loras: Tuple[str, ...] = ()
    outputs: Path = Path("outputs/app")
    pose_root: Optional[Path] = None               # where "pick a pose folder" looks (default: `outputs`'s parent)
    pose_backend: str = "auto"
    det_model: Optional[str] = None
    pose_model: Optional[str] = None
    resolution: str = "480p"                       # the controls' initial values
    steps: int = 50

    @property
    def pose_search_root(self) -> Path:
        return Path(self.pose_root) if self.pose_root is not None else Path(self.outputs).parent


def settings_from_controls(config: AppConfig, resolution: str, steps, cfg, cache: str, threshold, fast: bool,
                           seed, prompt: str = "") -> AnimateSettings:
    """The page's controls as validated `AnimateSettings` (ValueError naming the control otherwise).

    `cache` is one of CACHES, with `threshold` its threshold; `steps` and `seed` arrive as floats from number
    boxes and must be whole numbers."""
    def whole(name: str, value) -> int:
        if value is None or float(value) != int(float(value)):
            raise ValueError(f"{name} must be a whole number; got {value!r}")
        return int(float(value))

    if cache not in CACHES:
        raise ValueError(f"cache must be one of {', '.join(CACHES)}; got {cache!r}")
    thresh = None if cache == "none" else (DEFAULT_THRESHOLDS[cache] if threshold is None else float(threshold))
    return AnimateSettings(
        models=config.models, vram=config.vram, loras=tuple(config.loras), resolution=str(resolution).strip(),
        steps=whole("steps", steps), cfg=float(cfg), seed=whole("seed", seed), fast=bool(fast),
        teacache=thresh if cache == "TeaCache" else None, magcache=thresh if cache == "MagCache" else None,
        prompt=(prompt or "").strip() or DEFAULT_PROMPT, pose_backend=config.pose_backend,
        det_model=config.det_model, pose_model=config.pose_model).validate()

