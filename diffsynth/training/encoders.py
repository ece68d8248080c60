"""The frozen encoders of training (umT5, VAE, CLIP) and the model-path helpers the trainer's loaders share."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from ..data.images import image_to_tensor
from ..loading.manager import load_wan_image_encoder, load_wan_text_encoder, load_wan_vae
from ..pipelines.units import encode_prompt, encode_reference_image
from ..prompters import WanPrompter, resolve_tokenizer_path

PathSpec = Union[str, os.PathLike, Sequence[Union[str, os.PathLike]]]


def split_paths(spec: Optional[PathSpec]):
    """`"a,b,c"` (the CLI's comma-separated shards) -> ["a", "b", "c"]; anything else unchanged."""
    if isinstance(spec, str) and "," in spec:
        return [p.strip() for p in spec.split(",") if p.strip()]
    return spec


def _first(spec):
    return spec[0] if isinstance(spec, (list, tuple)) else spec


class FrozenEncoders(nn.Module):
    """umT5, VAE and CLIP, frozen: turn a training batch into DiT inputs (spec 7.4 step 3).

    Used inside the training step, or once per sample by `--task data_process` (cache.py).
    """

    def __init__(self, text_encoder: nn.Module, vae: nn.Module, image_encoder: nn.Module, prompter: WanPrompter,
                 tiled: bool = True, tile_size: Tuple[int, int] = (34, 34), tile_stride: Tuple[int, int] = (18, 16)):
        super().__init__()
        self.text_encoder, self.vae, self.image_encoder = text_encoder, vae, image_encoder
        self.prompter = prompter
        self.tiler = dict(tiled=tiled, tile_size=tuple(tile_size), tile_stride=tuple(tile_stride))
        self.eval().requires_grad_(False)

    @classmethod
    def load(cls, text_encoder_path: PathSpec, vae_path: PathSpec, image_encoder_path: PathSpec, *,
             tokenizer_path: Optional[str] = None, torch_dtype: torch.dtype = torch.bfloat16, configs=None,
             progress: bool = False, **tiler) -> "FrozenEncoders":
        load = dict(torch_dtype=torch_dtype, device="cpu", config=configs, progress=progress)
        prompter = WanPrompter(resolve_tokenizer_path(tokenizer_path or _first(split_paths(text_encoder_path))))
        return cls(load_wan_text_encoder(split_paths(text_encoder_path), **load),
                   load_wan_vae(split_paths(vae_path), **load),
                   load_wan_image_encoder(split_paths(image_encoder_path), **load), prompter, **tiler)

    @torch.no_grad()
    def encode(self, batch: dict) -> dict:
        """`video`, `first_frame`, `text` of a batch of one -> T5 `context`, VAE `latents`, CLIP `clip_feature`
        and `y`, each with a batch dimension of 1."""
        video, first_frame, text = batch["video"], batch["first_frame"], batch["text"]
        if video.shape[0] != 1:
            raise ValueError(f"training uses batch_size 1 (as upstream); got a batch of {video.shape[0]}")
        text = text[0] if isinstance(text, (list, tuple)) else text
        device = video.device
        _, _, num_frames, height, width = video.shape
        context = encode_prompt(self.prompter, self.text_encoder, text, device)
        vae_dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(video.to(vae_dtype), progress=False, **self.tiler)
        image = image_to_tensor(first_frame[0].cpu().numpy().astype(np.uint8), height, width)
        clip_feature, y = encode_reference_image(self.image_encoder, self.vae, image, num_frames, device)
        return {"context": context, "latents": latents, "clip_feature": clip_feature, "y": y}


__all__ = ["FrozenEncoders", "split_paths", "PathSpec"]
