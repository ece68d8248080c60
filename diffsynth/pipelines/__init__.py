from .base import WanPipelineBase
from .long_video import WanUniAnimateLongVideoPipeline, context_windows
from .unianimate import WanUniAnimateVideoPipeline, load_pose_data
from .wan_video import WanVideoPipeline

__all__ = ["WanPipelineBase", "WanVideoPipeline", "WanUniAnimateVideoPipeline", "WanUniAnimateLongVideoPipeline",
           "context_windows", "load_pose_data"]
