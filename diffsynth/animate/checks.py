"""What `animate` refuses before any pose extraction or model loading, each as one line naming the input and the
fix (the settings themselves are checked by `AnimateSettings.validate`)."""
from __future__ import annotations

from pathlib import Path

from .settings import MIN_CLIP_FRAMES, AnimateSettings


def check_inputs(settings: AnimateSettings, reference: Path, driving: Path, preview_only: bool = False,
                 models_loaded: bool = False) -> None:
    """Missing release files (named, with the download command; only the pose models when `preview_only` or
    `models_loaded`), a photo that is not readable or over `settings.max_photo_pixels` (read from its header, never
    decoded), and for a generation a driving video that cannot be read or gives fewer than `MIN_CLIP_FRAMES` frames
    at the settings' stride and max_frames (a 4-frame video would otherwise make a 1-frame clip)."""
    from .media import check_photo, driving_frame_count  # noqa: PLC0415 - imageio, OpenCV
    from .models import check_checkpoints  # noqa: PLC0415 - torch

    check_checkpoints(settings, generate=not preview_only and not models_loaded)
    check_photo(reference, settings.max_photo_pixels)
    if preview_only:
        return
    available = driving_frame_count(driving)
    used = -(-available // settings.stride)
    if settings.max_frames is not None:
        used = min(used, settings.max_frames)
    if used < MIN_CLIP_FRAMES:
        how = f"{available} frames"
        if settings.stride > 1:
            how += f", {-(-available // settings.stride)} at --stride {settings.stride}"
        if settings.max_frames is not None and used == settings.max_frames:
            how += f", {used} with --max-frames {settings.max_frames}"
        raise ValueError(f"driving video {driving} gives {how}: a clip needs at least {MIN_CLIP_FRAMES} (4k + 1); "
                         f"use a longer video, a smaller --stride or a larger --max-frames")


__all__ = ["check_inputs"]
