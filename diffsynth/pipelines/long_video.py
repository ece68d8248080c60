"""`WanUniAnimateLongVideoPipeline`: upstream's call for pose videos longer than one DiT window. The algorithm is the
window schedule of `windows.py`; this class only adapts the keyword call (`context_size`, `context_overlap`, ...)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from tqdm import tqdm

from .denoise import StepCallback
from .request import split_call
from .unianimate import WanUniAnimateVideoPipeline
from .windows import WINDOW_STATES, WindowSettings, context_windows

if TYPE_CHECKING:
    from PIL.Image import Image

OUTPUT_TYPES = ("pil", "iterator")


class WanUniAnimateLongVideoPipeline(WanUniAnimateVideoPipeline):
    """Any number of pose frames, by overlapping DiT windows (`windows.py`); built like the short one."""

    @torch.no_grad()
    def __call__(self, prompt: str, negative_prompt: str = "", input_image: Optional["Image"] = None,
                 input_video: Optional[List["Image"]] = None, denoising_strength: float = 1.0,
                 seed: Optional[int] = None, rand_device: str = "cpu", height: int = 480, width: int = 832,
                 num_frames: int = 81, cfg_scale: float = 5.0, num_inference_steps: int = 50,
                 sigma_shift: float = 5.0, tiled: bool = True, tile_size: Tuple[int, int] = (30, 52),
                 tile_stride: Tuple[int, int] = (15, 26), tea_cache_l1_thresh: Optional[float] = None,
                 tea_cache_model_id: str = "", progress_bar_cmd=tqdm, dwpose_data: Optional[torch.Tensor] = None,
                 random_ref_dwpose: Optional[torch.Tensor] = None, context_size: int = 21,
                 context_overlap: int = 4, window_state: str = "offload", pose_chunk_size: Optional[int] = None,
                 output_type: str = "pil", step_cache=None, preset: Optional[str] = None,
                 denoising_step_list: Optional[Sequence[int]] = None, sampler: str = "euler",
                 cfg_batch: Optional[bool] = None, callback_on_step_end: Optional[StepCallback] = None
                 ) -> Union[List["Image"], Iterator["Image"]]:
        """Like `WanUniAnimateVideoPipeline.__call__`, for any number of pose frames.

        `num_frames` is rounded down to 4k+1 (the pose frames after it are dropped); `context_size` and
        `context_overlap` are in latent frames (21 and 4: windows of 81 pixel frames, 8 pixel frames averaged).
        `input_video` (video-to-video, as upstream) is encoded whole with the call's tiling and noised to the first
        timestep of the `denoising_strength` schedule; each window's private frames are its slice of the noised
        input (upstream drew them as pure noise, so the input never reached them).

        Memory (`windows.py`): `window_state` is "offload" (default: per-window pose tokens and step-cache
        residuals wait on the CPU while other windows run), "recompute" (pose tokens recomputed whenever their
        window runs; keeps the pose guider on the device next to the DiT) or "device" (all on the compute device).
        `pose_chunk_size` runs the pose CNN on that many latent frames at a time (None: chosen by
        `PoseGuider.auto_chunk_size`; bounds its full-resolution activations; equal to the one-shot pass up to
        the convolution backend's rounding, see `PoseGuider.embed_pose_video`). `output_type="iterator"` returns a generator of the frames, decoded chunk
        by chunk as it is consumed (give it to `save_video`); "pil" returns the list.

        `step_cache`, `preset`, `denoising_step_list`, `sampler`, `cfg_batch`: as in the short pipeline. With the
        renoise sampler one noise draw per step covers the whole video, so averaging the overlapping windows'
        re-noised latents averages their x0 predictions and keeps the noise at full strength.
        """
        arguments = dict(locals())
        del arguments["self"]
        return self._call(arguments)

    def _call(self, arguments: dict, output: Optional[str] = None):
        request, rest = split_call(arguments)
        windows = WindowSettings(rest.pop("context_size"), rest.pop("context_overlap"), rest.pop("window_state"),
                                 rest.pop("pose_chunk_size"))
        output_type = rest.pop("output_type")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}; got {output_type!r}")
        return self.generate(request, windows=windows, output=output or output_type, **rest)


__all__ = ["WanUniAnimateLongVideoPipeline", "context_windows", "WindowSettings", "WINDOW_STATES", "OUTPUT_TYPES"]
