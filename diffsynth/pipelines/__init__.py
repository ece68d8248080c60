from .base import FrameStream, WanPipelineBase
from .long_video import WanUniAnimateLongVideoPipeline
from .request import GenerationRequest
from .unianimate import WanUniAnimateVideoPipeline, load_pose_data
from .wan_video import WanVideoPipeline
from .windows import WindowSettings, context_windows

__all__ = ["WanPipelineBase", "WanVideoPipeline", "WanUniAnimateVideoPipeline", "WanUniAnimateLongVideoPipeline",
           "GenerationRequest", "WindowSettings", "FrameStream", "context_windows", "load_pose_data"]
