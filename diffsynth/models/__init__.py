"""The Wan2.1 networks and the UniAnimate pose guider; attribute names are the official checkpoint keys."""
from .pose_guider import PoseGuider
from .wan_dit import WanModel
from .wan_image_encoder import WanImageEncoder
from .wan_text_encoder import WanTextEncoder
from .wan_vae import WanVideoVAE

__all__ = ["PoseGuider", "WanModel", "WanImageEncoder", "WanTextEncoder", "WanVideoVAE"]
