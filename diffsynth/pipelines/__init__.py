from .unianimate import WanUniAnimateVideoPipeline, load_pose_data

__all__ = ["WanUniAnimateVideoPipeline", "load_pose_data"]
