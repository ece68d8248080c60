from .long_video import WanUniAnimateLongVideoPipeline, context_windows
from .unianimate import WanUniAnimateVideoPipeline, load_pose_data

__all__ = ["WanUniAnimateVideoPipeline", "WanUniAnimateLongVideoPipeline", "context_windows", "load_pose_data"]
