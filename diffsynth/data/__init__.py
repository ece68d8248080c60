from .video import VideoData, list_images, save_frames, save_video

__all__ = ["VideoData", "list_images", "save_frames", "save_video"]
