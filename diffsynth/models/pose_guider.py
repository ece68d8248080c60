"""UniAnimate pose encoders.

- `dwpose_embedding`: the driving pose video [B, 3, F, H, W] -> [B, d, T, H/16, W/16], added to the DiT patch tokens.
- `randomref_embedding_pose`: the reference pose image [B, 3, H, W] -> [B, 20, 1, H/8, W/8], added to the I2V `y`.

Layer indices match the released `UniAnimate-Wan2.1-14B-Lora-12000.ckpt` keys (`dwpose_embedding.12.weight`, ...).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..configs import PoseGuiderConfig


def _conv_stack(conv, channels, strides, kernel=3, padding=1) -> list:
    layers = []
    for (cin, cout), stride in zip(zip(channels[:-1], channels[1:]), strides):
        layers += [conv(cin, cout, kernel, stride=stride, padding=padding), nn.SiLU()]
    return layers


class PoseGuider(nn.Module):
    """The two UniAnimate pose CNNs; `config.out_dim` must equal the DiT width (5120 for Wan2.1-14B)."""

    def __init__(self, config: PoseGuiderConfig = PoseGuiderConfig()):
        super().__init__()
        self.config = cfg = config
        c = cfg.hidden_dim
        # Temporal /4 (two stride-2 convs) and spatial /16, then a patchify-like 1x2x2 conv to the DiT width.
        video = _conv_stack(nn.Conv3d, [3, c, c, c, c, c, c],
                            [(1, 1, 1), (1, 1, 1), (1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)])
        self.dwpose_embedding = nn.Sequential(*video, nn.Conv3d(c, cfg.out_dim, (1, 2, 2), stride=(1, 2, 2)))
        image = _conv_stack(nn.Conv2d, [3, c, c, c, c, c, cfg.ref_dim], [1, 1, 1, 2, 2, 2])
        self.randomref_embedding_pose = nn.Sequential(*image[:-1])   # no activation after the last conv

    def embed_pose_video(self, pose_video: torch.Tensor) -> torch.Tensor:
        """Pose frames [B, 3, F, H, W] in [0, 1] (F = 4k+1) -> [B, d, (F-1)/4+1, H/16, W/16].

        Frame 0 is repeated 3 more times so the temporal /4 lines up with the VAE's causal "first frame alone" rule.
        """
        if pose_video.ndim != 5 or pose_video.shape[1] != 3:
            raise ValueError(f"pose video must be [B, 3, F, H, W]; got {tuple(pose_video.shape)}")
        frames, height, width = pose_video.shape[2:]
        if (frames - 1) % 4:
            raise ValueError(f"pose video has {frames} frames; it needs 4k+1 (e.g. {(frames - 1) // 4 * 4 + 1})")
        if height % 16 or width % 16:
            raise ValueError(f"pose video size {height}x{width} must be a multiple of 16 in both axes; resize the "
                             f"poses to the generation size, e.g. {round(height / 16) * 16}x{round(width / 16) * 16}")
        first = pose_video[:, :, :1].expand(-1, -1, 3, -1, -1)
        x = torch.cat([first, pose_video], dim=2).to(self.dwpose_embedding[0].weight.dtype)
        return self.dwpose_embedding(x)

    def embed_reference_pose(self, ref_pose: torch.Tensor) -> torch.Tensor:
        """Reference pose image [B, 3, H, W] in [0, 1] -> [B, 20, 1, H/8, W/8] (broadcast over latent frames)."""
        if ref_pose.ndim != 4 or ref_pose.shape[1] != 3:
            raise ValueError(f"reference pose must be [B, 3, H, W]; got {tuple(ref_pose.shape)}")
        h, w = ref_pose.shape[2:]
        if h % 16 or w % 16:
            raise ValueError(f"reference pose size {h}x{w} must be a multiple of 16 in both axes; resize it to the "
                             f"generation size, e.g. {round(h / 16) * 16}x{round(w / 16) * 16}")
        x = ref_pose.to(self.randomref_embedding_pose[0].weight.dtype)
        return self.randomref_embedding_pose(x).unsqueeze(2)


__all__ = ["PoseGuider"]
