"""UniAnimate-DiT on Wan2.1: models, loading, pose extraction and video I/O (DiffSynth-style package)."""
from .configs import ClipVisionConfig, PoseGuiderConfig, UMT5Config, WanDiTConfig, WanVAEConfig
from .data import VideoData, save_video
from .models import PoseGuider, WanImageEncoder, WanModel, WanTextEncoder, WanVideoVAE
from .prompters import WanPrompter
from .schedulers import FlowMatchScheduler

__version__ = "0.1.0"
__all__ = [
    "ClipVisionConfig", "PoseGuiderConfig", "UMT5Config", "WanDiTConfig", "WanVAEConfig",
    "VideoData", "save_video", "PoseGuider", "WanImageEncoder", "WanModel", "WanTextEncoder", "WanVideoVAE",
    "WanPrompter", "FlowMatchScheduler",
]
