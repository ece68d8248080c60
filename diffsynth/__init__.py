"""UniAnimate-DiT on Wan2.1: models, loading, pose extraction and video I/O (DiffSynth-style package).

Top-level names are imported lazily (PEP 562), so light subpackages such as `diffsynth.pose` work without torch
and `import diffsynth` stays fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "ClipVisionConfig": "configs", "PoseGuiderConfig": "configs", "UMT5Config": "configs",
    "WanDiTConfig": "configs", "WanVAEConfig": "configs",
    "VideoData": "data.video", "save_video": "data.video", "save_frames": "data.video",
    "PoseGuider": "models.pose_guider", "WanModel": "models.wan_dit", "WanImageEncoder": "models.wan_image_encoder",
    "WanTextEncoder": "models.wan_text_encoder", "WanVideoVAE": "models.wan_vae",
    "WanPrompter": "prompters.wan_prompter", "FlowMatchScheduler": "schedulers.flow_match",
    "ModelManager": "loading.manager", "load_wan_dit": "loading.manager", "load_wan_vae": "loading.manager",
    "load_wan_text_encoder": "loading.manager", "load_wan_image_encoder": "loading.manager",
    "WanUniAnimateVideoPipeline": "pipelines.unianimate", "WanVideoPipeline": "pipelines.wan_video", "WanUniAnimateLongVideoPipeline": "pipelines.long_video", "load_pose_data": "pipelines.unianimate",
    "TeaCache": "acceleration.teacache", "TeaCacheConfig": "acceleration.teacache",
    "MagCache": "acceleration.magcache", "MagCacheConfig": "acceleration.magcache", "WAN_NEGATIVE_PROMPT": "pipelines.request", "GenerationRequest": "pipelines.request",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'diffsynth' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
