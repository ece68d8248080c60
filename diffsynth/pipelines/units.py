"""Steps shared by the Wan/UniAnimate pipelines, as plain functions with explicit arguments.

Each takes the model(s) it needs and returns tensors on `device`; dtype conversions happen here, at the model
boundary (a model's inputs take its parameter dtype), so the models themselves stay dtype-agnostic.
"""
from __future__ import annotations

from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from ..acceleration.block_cache import BlockCache
from ..data.images import image_to_tensor, tensor_to_frames, video_to_tensor
from ..models.pose_guider import PoseGuider
from ..models.wan_dit import EmbeddedContext, WanModel
from ..models.wan_image_encoder import WanImageEncoder
from ..models.wan_text_encoder import WanTextEncoder
from ..models.wan_vae import WanVideoVAE
from ..prompters import WanPrompter


def param_dtype(model: torch.nn.Module) -> torch.dtype:
    """dtype of a model's (first) parameter: the dtype its inputs are cast to."""
    return next(model.parameters()).dtype


def check_sizes(height: int, width: int, num_frames: int) -> None:
    """Wan needs H and W multiples of 16 and F = 4k+1 frames."""
    problems = []
    if height % 16 or width % 16:
        problems.append(f"height x width = {height}x{width} must be multiples of 16 "
                        f"(e.g. {(height + 15) // 16 * 16}x{(width + 15) // 16 * 16})")
    if num_frames < 1 or (num_frames - 1) % 4:
        problems.append(f"num_frames = {num_frames} must be 4k+1 (e.g. {max(1, (num_frames - 1) // 4 * 4 + 1)} or "
                        f"{(num_frames + 2) // 4 * 4 + 1})")
    if problems:
        raise ValueError("; ".join(problems))


@torch.no_grad()
def encode_prompt(prompter: WanPrompter, text_encoder: WanTextEncoder, prompt: str, device) -> torch.Tensor:
    """Prompt -> umT5 context [1, 512, dim] with zeros after the prompt's length."""
    return prompter.encode_prompt(text_encoder, prompt, device=device)


@torch.no_grad()
def encode_reference_image(image_encoder: WanImageEncoder, vae: WanVideoVAE, image: torch.Tensor, num_frames: int,
                           device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Reference image [1, 3, H, W] in [-1, 1] -> CLIP tokens [1, 257, 1280] and the I2V y [1, 20, T, h, w].

    y = [mask (4): ones at latent frame 0; VAE latent (16) of (image, then F-1 grey frames)], encoded untiled.
    """
    clip_feature = image_encoder.encode_image(image.to(device))
    _, _, height, width = image.shape
    video = torch.zeros(1, 3, num_frames, height, width, device=device, dtype=param_dtype(vae))
    video[:, :, 0] = image.to(device=device, dtype=video.dtype)
    latent = vae.encode(video, progress=False)
    mask = torch.zeros(1, 4, *latent.shape[2:], device=device, dtype=latent.dtype)
    mask[:, :, 0] = 1
    return clip_feature, torch.cat([mask, latent], dim=1)


def encode_pose_video(pose_guider: PoseGuider, pose_video: torch.Tensor, device,
                      chunk_size: Optional[int] = None) -> torch.Tensor:
    """Pose frames [3, F, H, W] or a batch [B, 3, F, H, W] (0..255) -> pose tokens [B, d, T, h', w']. Scaling is
    /255, no normalisation. `chunk_size`: run the pose CNN on that many latent frames at a time (see
    `PoseGuider.embed_pose_video`); None picks one without gradients (`PoseGuider.auto_chunk_size`: one pass for
    small clips, chunks at 480p/720p), and one pass with them (training keeps every activation for the backward
    anyway). No `no_grad` here: the pipelines call it under theirs, training with gradients."""
    video = pose_video[None] if pose_video.ndim == 4 else pose_video
    if chunk_size is None and not torch.is_grad_enabled() and video.ndim == 5:
        chunk_size = pose_guider.auto_chunk_size(*video.shape[2:])
    video = video.to(device=device, dtype=param_dtype(pose_guider)) / 255
    return pose_guider.embed_pose_video(video, chunk_size=chunk_size)


def encode_reference_pose(pose_guider: PoseGuider, reference_pose: torch.Tensor, device) -> torch.Tensor:
    """Reference pose [H, W, 3] or a batch [B, H, W, 3] (0..255) -> [B, 20, 1, h, w], added to y and broadcast over
    latent frames. Gradients flow when the caller allows them (training)."""
    # (the unbatched order of operations is kept: another stride pattern can pick another convolution kernel)
    ref = reference_pose.permute(2, 0, 1)[None] if reference_pose.ndim == 3 else reference_pose.permute(0, 3, 1, 2)
    ref = ref.to(device=device, dtype=param_dtype(pose_guider)) / 255
    return pose_guider.embed_reference_pose(ref)


def dit_step(dit: WanModel, latents: torch.Tensor, timestep: torch.Tensor,
             context: Union[torch.Tensor, EmbeddedContext], clip_feature: Optional[torch.Tensor],
             y: Optional[torch.Tensor], add_condition: Optional[torch.Tensor] = None,
             block_cache: Optional[Sequence[Optional[BlockCache]]] = None, use_gradient_checkpointing: bool = False,
             use_gradient_checkpointing_offload: bool = False) -> torch.Tensor:
    """One DiT velocity prediction through `WanModel.forward`, inputs cast to the DiT's parameter dtype first: with
    bf16 weights the timestep is rounded to bf16 before the sinusoid, as upstream (995.93 -> 996).

    `block_cache`: one step cache (or None) per batch item. `use_gradient_checkpointing(_offload)`: for the trainer,
    which takes its DiT step here too.
    """
    dtype = param_dtype(dit)
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    latents, timestep, clip_feature, y = map(cast, (latents, timestep, clip_feature, y))
    if not isinstance(context, EmbeddedContext):
        context = cast(context)
    if block_cache is not None and all(cache is None for cache in block_cache):
        block_cache = None
    return dit(latents, timestep, context, clip_feature, y, add_condition, block_cache=block_cache,
               use_gradient_checkpointing=use_gradient_checkpointing,
               use_gradient_checkpointing_offload=use_gradient_checkpointing_offload)


@torch.no_grad()
def embed_context(dit: WanModel, context: torch.Tensor, clip_feature: Optional[torch.Tensor]) -> EmbeddedContext:
    """umT5 context (and CLIP tokens) through the DiT's text/image embeddings, once per generation."""
    dtype = param_dtype(dit)
    return dit.embed_context(context.to(dtype), None if clip_feature is None else clip_feature.to(dtype))


@torch.no_grad()
def decode_video(vae: WanVideoVAE, latents: torch.Tensor, tiled: bool = True, tile_size=(30, 52),
                 tile_stride=(15, 26)) -> List:
    """Latents [1, 16, T, h, w] -> F = 4T-3 PIL frames. uint8 conversion truncates, as upstream."""
    video = vae.decode(latents.to(param_dtype(vae)), tiled=tiled, tile_size=tile_size, tile_stride=tile_stride,
                       progress=False)[0]
    return tensor_to_frames(video)


@torch.no_grad()
def decode_video_iter(vae: WanVideoVAE, latents: torch.Tensor, tiled: bool = True, tile_size=(30, 52),
                      tile_stride=(15, 26)) -> Iterator:
    """`decode_video`, streamed: yields the same F = 4T-3 PIL frames chunk by chunk (1 frame, then 4 per latent
    frame), each chunk converted to uint8 as soon as it is decoded, so no float copy of the whole video exists."""
    for chunk in vae.decode_iter(latents.to(param_dtype(vae)), tiled=tiled, tile_size=tile_size,
                                 tile_stride=tile_stride):
        yield from tensor_to_frames(chunk[0])


@torch.no_grad()
def encode_video(vae: WanVideoVAE, frames: Sequence, height: int, width: int, device, tiled: bool = True,
                 tile_size=(30, 52), tile_stride=(15, 26)) -> torch.Tensor:
    """Input video frames (video-to-video) -> latents [1, 16, T, h, w], with the call's tiling settings."""
    video = video_to_tensor(frames, height, width).to(device, param_dtype(vae))
    return vae.encode(video, tiled=tiled, tile_size=tile_size, tile_stride=tile_stride, progress=False)


__all__ = ["check_sizes", "encode_prompt", "image_to_tensor", "encode_reference_image",
           "encode_pose_video", "encode_reference_pose", "dit_step", "embed_context", "decode_video",
           "decode_video_iter", "encode_video",
           "video_to_tensor", "param_dtype"]
