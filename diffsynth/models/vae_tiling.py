"""Spatial tiling of the Wan VAE: the tile grid, the linear-ramp blending masks and the tiled loop (spec 2.8).

`WanVideoVAE.encode/decode(tiled=True)` run the model on overlapping spatial tiles and blend the outputs, which
bounds the memory of one call by the tile size. Every frame of a tile is processed together (the VAE is causal in
time), so the tiles only split height and width. Blending is done in fp32 whatever the model's dtype.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional, Tuple

import torch
from tqdm.auto import tqdm


def tile_starts(size: int, tile: int, stride: int) -> List[int]:
    """Tile start offsets along one axis (DiffSynth's rule): every `stride`, stopping once a tile reached the end.
    Tiles are `[s, s + tile)` cut at `size`."""
    starts = []
    for s in range(0, size, stride):
        if s - stride >= 0 and s - stride + tile >= size:
            break
        starts.append(s)
    return starts


def _ramp_1d(length: int, at_start: bool, at_end: bool, border: int, device) -> torch.Tensor:
    """1 inside; a linear ramp (1..b)/b over `border` entries on each side that is not an image border."""
    mask = torch.ones(length, device=device)
    if border > 0:
        ramp = torch.arange(1, border + 1, device=device, dtype=torch.float32) / border
        if not at_start:
            mask[:border] = ramp[:length]
        if not at_end:  # written second: where both ramps overlap, the falling one wins (as upstream)
            mask[-border:] = ramp.flip(0)[-length:]
    return mask


def blend_mask(height: int, width: int, bounds: Tuple[bool, bool, bool, bool], border: Tuple[int, int],
               device=None) -> torch.Tensor:
    """[height, width] weights of one tile: element-wise min of the two 1D ramps. `bounds` = (top, bottom, left,
    right) is True where the tile touches the image border."""
    mh = _ramp_1d(height, bounds[0], bounds[1], border[0], device)
    mw = _ramp_1d(width, bounds[2], bounds[3], border[1], device)
    return torch.minimum(mh[:, None], mw[None, :])


def check_tiling(tile_size: Tuple[int, int], tile_stride: Tuple[int, int]) -> None:
    """Raise a ValueError unless 0 < stride <= size on both axes."""
    for t, s in zip(tile_size, tile_stride):
        if not 0 < s <= t:
            raise ValueError(f"tile_stride {tuple(tile_stride)} must be positive and at most tile_size "
                             f"{tuple(tile_size)} on each axis (otherwise tiles leave gaps)")


def _tile_grid(x: torch.Tensor, in_unit: int, out_unit: int, tile_size: Tuple[int, int],
               tile_stride: Tuple[int, int]):
    """Tile size (input pixels), blend border and output size (output pixels), and the tiles' (h0, w0) starts."""
    check_tiling(tile_size, tile_stride)
    size_h, size_w = tile_size[0] * in_unit, tile_size[1] * in_unit
    stride_h, stride_w = tile_stride[0] * in_unit, tile_stride[1] * in_unit
    border = ((tile_size[0] - tile_stride[0]) * out_unit, (tile_size[1] - tile_stride[1]) * out_unit)
    height, width = x.shape[3], x.shape[4]
    tiles = [(h0, w0) for h0 in tile_starts(height, size_h, stride_h) for w0 in tile_starts(width, size_w, stride_w)]
    return size_h, size_w, border, height // in_unit * out_unit, width // in_unit * out_unit, tiles


def tiled_apply(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], in_unit: int, out_unit: int,
                out_channels: int, out_frames: int, tile_size: Tuple[int, int], tile_stride: Tuple[int, int],
                progress: bool = False, desc: Optional[str] = None) -> torch.Tensor:
    """Apply `fn` to overlapping spatial tiles of x and blend the outputs with linear-ramp masks (spec 2.8).

    `in_unit` / `out_unit`: pixels per latent pixel of x / of fn's output (8 and 1 for encoding, 1 and 8 for
    decoding); tile size and stride are given in latent units. Values and weights are accumulated in fp32 on
    x's device (upstream accumulates on the CPU in x's dtype, bf16 in UniAnimate); the result is cast back to
    x's dtype.
    """
    size_h, size_w, border, out_h, out_w, tiles = _tile_grid(x, in_unit, out_unit, tile_size, tile_stride)
    b, _, _, height, width = x.shape
    values = torch.zeros(b, out_channels, out_frames, out_h, out_w, device=x.device, dtype=torch.float32)
    weights = torch.zeros(1, 1, 1, out_h, out_w, device=x.device, dtype=torch.float32)
    for h0, w0 in tqdm(tiles, desc=desc, disable=not progress):
        out = fn(x[:, :, :, h0:h0 + size_h, w0:w0 + size_w]).float()
        bounds = (h0 == 0, h0 + size_h >= height, w0 == 0, w0 + size_w >= width)
        mask = blend_mask(out.shape[3], out.shape[4], bounds, border, device=x.device)
        th, tw = h0 // in_unit * out_unit, w0 // in_unit * out_unit
        values[:, :, :, th:th + out.shape[3], tw:tw + out.shape[4]] += out * mask
        weights[:, :, :, th:th + out.shape[3], tw:tw + out.shape[4]] += mask
    return (values / weights).to(x.dtype)


def tiled_apply_iter(x: torch.Tensor, fn_iter: Callable[[torch.Tensor], Iterable[torch.Tensor]], in_unit: int,
                     out_unit: int, out_channels: int, tile_size: Tuple[int, int], tile_stride: Tuple[int, int],
                     progress: bool = False, desc: Optional[str] = None) -> Iterator[torch.Tensor]:
    """`tiled_apply` streamed along time: `fn_iter(tile)` yields a tile's output chunk by chunk (e.g. one latent
    frame's pixels at a time, with that tile's own causal cache); every tile's stream is advanced by one chunk, the
    chunks are blended exactly as `tiled_apply` blends whole outputs, and the blended chunk is yielded.

    Every tile keeps its stream (and so its temporal cache) alive for the whole call, so memory is that of all the
    tiles' caches plus one chunk, instead of one tile's cache plus the whole output. The values and weights are
    the same element by element as `tiled_apply`'s (same tile order, fp32), so the concatenated chunks equal it.
    """
    size_h, size_w, border, out_h, out_w, tiles = _tile_grid(x, in_unit, out_unit, tile_size, tile_stride)
    b, _, frames, height, width = x.shape
    streams = [iter(fn_iter(x[:, :, :, h0:h0 + size_h, w0:w0 + size_w])) for h0, w0 in tiles]
    masks: List[Optional[torch.Tensor]] = [None] * len(tiles)
    weights = None
    bar = tqdm(total=frames, desc=desc, disable=not progress)
    try:
        while True:
            values = None
            for i, ((h0, w0), stream) in enumerate(zip(tiles, streams)):
                out = next(stream, None)
                if out is None:
                    if i:
                        raise RuntimeError("tiled_apply_iter: the tiles' streams ended at different chunks")
                    return
                out = out.float()
                if masks[i] is None:
                    bounds = (h0 == 0, h0 + size_h >= height, w0 == 0, w0 + size_w >= width)
                    masks[i] = blend_mask(out.shape[3], out.shape[4], bounds, border, device=x.device)
                if values is None:
                    values = torch.zeros(b, out_channels, out.shape[2], out_h, out_w, device=x.device,
                                         dtype=torch.float32)
                th, tw = h0 // in_unit * out_unit, w0 // in_unit * out_unit
                values[:, :, :, th:th + out.shape[3], tw:tw + out.shape[4]] += out * masks[i]
            if weights is None:
                weights = torch.zeros(1, 1, 1, out_h, out_w, device=x.device, dtype=torch.float32)
                for (h0, w0), mask in zip(tiles, masks):
                    th, tw = h0 // in_unit * out_unit, w0 // in_unit * out_unit
                    weights[:, :, :, th:th + mask.shape[0], tw:tw + mask.shape[1]] += mask
            bar.update(1)
            yield (values / weights).to(x.dtype)
    finally:
        bar.close()
        for stream in streams:
            if hasattr(stream, "close"):
                stream.close()


__all__ = ["tile_starts", "blend_mask", "check_tiling", "tiled_apply", "tiled_apply_iter"]
