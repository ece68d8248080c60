"""The one generate step of every front door: a reference photo and an aligned pose clip -> the generated frames,
and the [reference | pose | generated] panels every saved comparison shows.

The animate CLI and the web UI (through `Animator`), the example scripts (`inference.animate_item`) and the demo
all call `generate_frames`, so the reference reaches the pipeline the same way everywhere (an RGB array from
`data.image_file.read_image_rgb`: upright, as the pose tool saw it) and the short/long choice is made in one place.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from ..data.image_file import ImageLike, to_rgb_uint8
from ..pipelines.request import GenerationRequest
from ..pipelines.windows import WindowSettings

# Long-video windows (latent frames), as the upstream long scripts: 81 pixel frames, 8 of them averaged.
LONG_VIDEO_WINDOWS = WindowSettings(context_size=21, context_overlap=4)


def generate_frames(pipe, reference: ImageLike, dwpose_data: torch.Tensor, random_ref_dwpose: torch.Tensor,
                    request: GenerationRequest, *, windows: Optional[WindowSettings] = None,
                    progress_bar_cmd=None, callback_on_step_end=None, output: str = "pil"):
    """Animate `reference` along the pose tensors (`data.pose_folder.pose_tensors`, at the generation size): the
    request's size and frame count come from `dwpose_data`. `windows=None` denoises the whole clip at once (up to
    81 frames on the released model); `LONG_VIDEO_WINDOWS` (or other `WindowSettings`) runs the long-video
    schedule. Returns a list of PIL frames, a `FrameStream` with `output="iterator"`, or None on multi-GPU ranks
    other than 0."""
    from PIL import Image  # noqa: PLC0415

    _, num_frames, height, width = dwpose_data.shape
    request = replace(request, height=height, width=width, num_frames=num_frames)
    return pipe.generate(request, input_image=Image.fromarray(to_rgb_uint8(reference)), dwpose_data=dwpose_data,
                         random_ref_dwpose=random_ref_dwpose, windows=windows, progress_bar_cmd=progress_bar_cmd,
                         callback_on_step_end=callback_on_step_end, output=output)


def panels(reference: ImageLike, dwpose_data: torch.Tensor, generated: Iterable) -> Iterator[np.ndarray]:
    """[reference | pose | generated] (H x 3W x 3 uint8 RGB) for each generated frame, made as it arrives (a list or
    a stream); the reference is resized to the pose size once. More frames than poses is an error."""
    from ..data.pose_folder import comparison_panels  # noqa: PLC0415

    count = dwpose_data.shape[1]
    for index, frame in enumerate(generated):
        if index >= count:
            raise ValueError(f"more generated frames than the {count} pose frames")
        yield comparison_panels(reference, dwpose_data[:, index:index + 1], [frame])[0]


__all__ = ["generate_frames", "panels", "LONG_VIDEO_WINDOWS"]
