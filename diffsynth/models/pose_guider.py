"""UniAnimate pose encoders.

- `dwpose_embedding`: the driving pose video [B, 3, F, H, W] -> [B, d, T, H/16, W/16], added to the DiT patch tokens.
- `randomref_embedding_pose`: the reference pose image [B, 3, H, W] -> [B, 20, 1, H/8, W/8], added to the I2V `y`.

Layer indices match the released `UniAnimate-Wan2.1-14B-Lora-12000.ckpt` keys (`dwpose_embedding.12.weight`, ...).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn

from ..configs import PoseGuiderConfig

# The most bytes one full-resolution activation of the pose CNN may take when the pipelines pick the chunk size
# (`PoseGuider.auto_chunk_size`). The one-shot pass keeps ~2 of them alive (a conv's input and output): over 81 frames
# that is 4.3 GB at 832x480 and 9.9 GB at 1280x720 in fp32, more than a 0-resident denoising step needs; chunked
# under 1 GiB the pose stage peaks at 3.3 GiB at 480p and 4.5 GiB at 720p (simulated, benchmarks/results/simulate.md).
POSE_CHUNK_BYTES = 1 << 30


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

    def embed_pose_video(self, pose_video: torch.Tensor, chunk_size: Optional[int] = None) -> torch.Tensor:
        """Pose frames [B, 3, F, H, W] in [0, 1] (F = 4k+1) -> [B, d, (F-1)/4+1, H/16, W/16].

        Frame 0 is repeated 3 more times so the temporal /4 lines up with the VAE's causal "first frame alone" rule.
        `chunk_size` (output frames) runs the convolutions on that many output frames at a time, with enough
        neighbouring input frames that every kept output sees exactly the inputs of the one-shot pass (see
        `_chunk_spans`); this bounds the full-resolution activations by the chunk instead of the clip.
        """
        if pose_video.ndim != 5 or pose_video.shape[1] != 3:
            raise ValueError(f"pose video must be [B, 3, F, H, W]; got {tuple(pose_video.shape)}")
        frames, height, width = pose_video.shape[2:]
        if (frames - 1) % 4:
            raise ValueError(f"pose video has {frames} frames; it needs 4k+1 (e.g. {(frames - 1) // 4 * 4 + 1})")
        if height % 16 or width % 16:
            raise ValueError(f"pose video size {height}x{width} must be a multiple of 16 in both axes; resize the "
                             f"poses to the generation size, e.g. {round(height / 16) * 16}x{round(width / 16) * 16}")
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive number of output frames or None; got {chunk_size!r}")
        dtype = self.dwpose_embedding[0].weight.dtype
        out_frames = (frames - 1) // 4 + 1
        if chunk_size is None or chunk_size >= out_frames:
            first = pose_video[:, :, :1].expand(-1, -1, 3, -1, -1)
            return self.dwpose_embedding(torch.cat([first, pose_video], dim=2).to(dtype))
        tokens = None
        for k0, k1, a, b in self._chunk_spans(out_frames, chunk_size):
            # input frames a..b-1 of [frame 0 x 3, frames...]: index i is pose frame max(i - 3, 0)
            index = (torch.arange(a, b, device=pose_video.device) - 3).clamp_(min=0)
            out = self.dwpose_embedding(pose_video.index_select(2, index).to(dtype))
            kept = out[:, :, k0 - a // 4:k1 - a // 4]
            if tokens is None:
                tokens = kept.new_empty(*kept.shape[:2], out_frames, *kept.shape[3:])
            # copied into one output: a list of slices would keep every chunk's halo outputs alive until a cat
            tokens[:, :, k0:k1] = kept
        return tokens

    @staticmethod
    def _chunk_spans(out_frames: int, chunk_size: int) -> List[Tuple[int, int, int, int]]:
        """(k0, k1, a, b): output frames [k0, k1) computed from input frames [a, b) of the 4*T-frame input.

        Output k reads input frames 4k-7 .. 4k+7 (four stride-1 kernel-3 convs, then two stride-2 kernel-3 convs,
        each padded by 1). A slice's zero padding makes its first 2 and its last 1 outputs differ from the one-shot
        pass unless the slice starts / ends at the clip's own border, so slices reach 2 outputs (8 frames) back and
        1 output (4 frames) forward; starting at a multiple of 4 keeps the stride-2 phases of the one-shot pass.
        """
        spans = []
        for k0 in range(0, out_frames, chunk_size):
            k1 = min(k0 + chunk_size, out_frames)
            spans.append((k0, k1, 4 * max(k0 - 2, 0), 4 * min(k1 + 1, out_frames)))
        return spans

    def auto_chunk_size(self, frames: int, height: int, width: int,
                        budget_bytes: int = POSE_CHUNK_BYTES) -> Optional[int]:
        """The `chunk_size` (output frames) whose full-resolution activations (hidden_dim channels over the chunk's
        input frames, halo included: 4 * (chunk + 3)) stay within `budget_bytes`; None (one pass) when the whole
        clip's do, so small clips run exactly as before. At least 1 (the halo alone may exceed a tiny budget)."""
        dtype = self.dwpose_embedding[0].weight.dtype
        per_frame = self.config.hidden_dim * height * width * dtype.itemsize
        out_frames = (frames - 1) // 4 + 1
        if 4 * out_frames * per_frame <= budget_bytes:
            return None
        return max(1, budget_bytes // (4 * per_frame) - 3)

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


def pose_guider_config(state_dict: Dict[str, torch.Tensor], dit_dim: Optional[int] = None) -> PoseGuiderConfig:
    """The `PoseGuiderConfig` that a pose guider's state dict (`dwpose_embedding.*`, `randomref_embedding_pose.*`,
    no prefix) was built with, read from its tensor shapes; a missing layer falls back to `dit_dim` / the defaults
    (the caller's strict state check reports it)."""
    def last_conv(prefix: str) -> Optional[str]:
        indices = [int(k.split(".")[1]) for k in state_dict if k.startswith(prefix + ".") and k.endswith(".weight")]
        return f"{prefix}.{max(indices)}.weight" if indices else None

    video_out, image_out = last_conv("dwpose_embedding"), last_conv("randomref_embedding_pose")
    first = state_dict.get("dwpose_embedding.0.weight")
    defaults = PoseGuiderConfig()
    return PoseGuiderConfig(
        hidden_dim=first.shape[0] if first is not None else defaults.hidden_dim,
        out_dim=state_dict[video_out].shape[0] if video_out else (dit_dim or defaults.out_dim),
        ref_dim=state_dict[image_out].shape[0] if image_out else defaults.ref_dim,
    )


__all__ = ["PoseGuider", "pose_guider_config"]
