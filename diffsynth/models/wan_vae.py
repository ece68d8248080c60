"""Wan2.1 causal 3D video VAE (`Wan2.1_VAE.pth`): 8x spatial and 4x temporal compression, z_dim 16.

Module attributes copy the official checkpoint keys (`encoder.downsamples.3.residual.2.weight`, `conv1`, `conv2`,
...), so `WanVideoVAE.state_dict()` is exactly the official file (194 tensors for the default config).

Shapes, used throughout:
    video    [B, 3, F, H, W]    values in [-1, 1]; F = 4k + 1; H, W multiples of 8
    latents  [B, z_dim, T, h, w] T = 1 + (F - 1) / 4, h = H / 8, w = W / 8

Time is causal. Upstream runs the network chunk by chunk (encode: pixel frame 0 alone, then groups of 4; decode: one
latent frame at a time) and carries the last frames of every temporal convolution's input from one chunk to the
next. That state lives here in an explicit `CausalCache` object, created per encode/decode call. Spatial tiling
(`encode/decode(tiled=True)`) lives in `vae_tiling.py`.
"""
from __future__ import annotations

import enum
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .layers import HALF_DTYPES
import torch.nn as nn
import torch.nn.functional as F

from diffsynth.configs import WanVAEConfig
from diffsynth.models.vae_tiling import blend_mask, tile_starts, tiled_apply, tiled_apply_iter

CACHE_T = 2  # frames of past input a kernel-3 causal conv needs


# ----------------------------------------------------------------------------------------------- temporal cache
class CacheMarker(enum.Enum):
    """Slot contents that are not tensors."""

    # upsample3d saw its first chunk and skipped `time_conv` (latent frame 0 becomes one pixel frame, not two)
    TIME_CONV_SKIPPED = "time_conv_skipped"


class CausalCache:
    """Temporal state carried between chunks: one slot per temporal layer, visited in module order.

    Every temporal layer calls `read()` then `write(new_state)` exactly once per chunk; `write` moves the cursor to
    the next slot. `start_chunk()` rewinds the cursor, keeping the slot contents. A slot reads `None` until its layer
    has seen a chunk.
    """

    def __init__(self):
        self.slots: List[Union[None, torch.Tensor, CacheMarker]] = []
        self.cursor = 0

    def start_chunk(self) -> None:
        self.cursor = 0

    def read(self) -> Union[None, torch.Tensor, CacheMarker]:
        return self.slots[self.cursor] if self.cursor < len(self.slots) else None

    def write(self, state: Union[torch.Tensor, CacheMarker]) -> None:
        if self.cursor == len(self.slots):
            self.slots.append(state)
        else:
            self.slots[self.cursor] = state
        self.cursor += 1


def _next_conv_state(x: torch.Tensor, past: Union[None, torch.Tensor, CacheMarker]) -> torch.Tensor:
    """The last CACHE_T frames of a causal conv's input, borrowing the newest past frame when x has only one."""
    state = x[:, :, -CACHE_T:].clone()
    if state.shape[2] < CACHE_T:
        if isinstance(past, torch.Tensor):
            state = torch.cat([past[:, :, -1:].to(state.device), state], dim=2)
        elif past is CacheMarker.TIME_CONV_SKIPPED:
            state = torch.cat([torch.zeros_like(state), state], dim=2)
    return state


# ------------------------------------------------------------------------------------------------ building blocks
class CausalConv3d(nn.Conv3d):
    """Conv3d padded causally in time: `2 * pad_t` frames in front (past frames from the cache first, zeros for the
    rest), none behind; `pad_h`, `pad_w` on both sides."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pad_t, pad_h, pad_w = padding if isinstance(padding, tuple) else (padding,) * 3
        self.pad_t, self.pad_h, self.pad_w = pad_t, pad_h, pad_w

    def forward(self, x: torch.Tensor, past: Optional[torch.Tensor] = None) -> torch.Tensor:
        front = 2 * self.pad_t
        if past is not None and front > 0:
            x = torch.cat([past.to(x.device), x], dim=2)
            front -= past.shape[2]
        x = F.pad(x, (self.pad_w, self.pad_w, self.pad_h, self.pad_h, front, 0))
        return super().forward(x)


def cached_causal_conv(conv: CausalConv3d, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    """Run a kernel-3 causal conv on one chunk, prepending the frames the cache kept from earlier chunks."""
    past = cache.read()
    cache.write(_next_conv_state(x, past))
    return conv(x, past)


class RMS_norm(nn.Module):
    """`x / max(||x||_2, 1e-12) * sqrt(C) * gamma` over the channel axis (1). gamma is [C,1,1,1] for video
    tensors and [C,1,1] for the per-frame image tensors of the attention block."""

    def __init__(self, dim: int, images: bool = True):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1) * self.scale * self.gamma


class Upsample2x(nn.Module):
    """Nearest-exact x2 spatial upsampling. Half types go through fp32 as upstream; nearest only copies values, so
    the result is the same in every dtype (and fp64 stays fp64)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float() if x.dtype in HALF_DTYPES else x
        return F.interpolate(xf, scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dropout: float = 0.0):
        super().__init__()
        # indices are the checkpoint's: residual.0 gamma, residual.2 conv, residual.3 gamma, residual.6 conv
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout), CausalConv3d(out_dim, out_dim, 3, padding=1),
        )
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        h = self.shortcut(x)
        for layer in self.residual:
            x = cached_causal_conv(layer, x, cache) if isinstance(layer, CausalConv3d) else layer(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the h*w positions of each frame separately (no temporal mixing)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMS_norm(dim)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: Optional[CausalCache] = None) -> torch.Tensor:
        identity = x
        b, c, t, h, w = x.shape
        x = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        x = self.norm(x)
        qkv = self.to_qkv(x).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)                                   # each [b*t, 1, h*w, c]
        x = F.scaled_dot_product_attention(q, k, v)
        x = x.squeeze(1).permute(0, 2, 1).reshape(b * t, c, h, w)
        x = self.proj(x)
        x = x.view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return x + identity


class Resample(nn.Module):
    """Spatial x2 down/up-sampling per frame, plus a temporal x2 step for the 3d modes (see `forward`)."""

    MODES = ("downsample2d", "downsample3d", "upsample2d", "upsample3d")

    def __init__(self, dim: int, mode: str):
        super().__init__()
        if mode not in self.MODES:
            raise ValueError(f"Resample mode must be one of {self.MODES}, got {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample2x(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0)

    def _upsample_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Each frame becomes two (channel halves of `time_conv`), except the very first frame, which passes."""
        past = cache.read()
        if past is None:
            cache.write(CacheMarker.TIME_CONV_SKIPPED)
            return x
        cache.write(_next_conv_state(x, past))
        x = self.time_conv(x, None if past is CacheMarker.TIME_CONV_SKIPPED else past)
        b, c2, t, h, w = x.shape
        x = x.reshape(b, 2, c2 // 2, t, h, w)
        return torch.stack((x[:, 0], x[:, 1]), dim=3).reshape(b, c2 // 2, 2 * t, h, w)

    def _downsample_time(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        """Frame 0 passes; later frames go through a stride-2 `time_conv` whose window starts at the last frame of
        the previous chunk."""
        past = cache.read()
        cache.write(x[:, :, -1:].clone())
        if past is None:
            return x
        return self.time_conv(torch.cat([past.to(x.device), x], dim=2))

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        if self.mode == "upsample3d":
            x = self._upsample_time(x, cache)
        b, c, t, h, w = x.shape
        x = self.resample(x.transpose(1, 2).reshape(b * t, c, h, w))
        x = x.view(b, t, *x.shape[1:]).transpose(1, 2)
        if self.mode == "downsample3d":
            x = self._downsample_time(x, cache)
        return x


def _head(dim: int, out_dim: int) -> nn.Sequential:
    return nn.Sequential(RMS_norm(dim, images=False), nn.SiLU(), CausalConv3d(dim, out_dim, 3, padding=1))


def _run_head(head: nn.Sequential, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
    norm, act, conv = head
    return cached_causal_conv(conv, act(norm(x)), cache)


class Encoder3d(nn.Module):
    """One chunk of video [B,3,f,H,W] -> [B,z_dim,f',H/8,W/8] (z_dim here is 2x the latent width: mean, log-var)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 attn_scales: Sequence[float], temporal_downsample: Sequence[bool], dropout: float = 0.0):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)

        layers, scale = [], 1.0
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
                scale /= 2.0
        self.downsamples = nn.Sequential(*layers)
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim, dropout), AttentionBlock(out_dim),
                                    ResidualBlock(out_dim, out_dim, dropout))
        self.head = _head(out_dim, z_dim)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = cached_causal_conv(self.conv1, x, cache)
        for layer in self.downsamples:
            x = layer(x, cache)
        for layer in self.middle:
            x = layer(x, cache)
        return _run_head(self.head, x, cache)


class Decoder3d(nn.Module):
    """One latent frame [B,z_dim,1,h,w] -> pixel frames [B,3,f,8h,8w] (f = 1 for the first chunk, else 4)."""

    def __init__(self, dim: int, z_dim: int, dim_mult: Sequence[int], num_res_blocks: int,
                 attn_scales: Sequence[float], temporal_upsample: Sequence[bool], dropout: float = 0.0):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *reversed(dim_mult))]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0], dropout))

        layers, scale = [], 1.0 / 2 ** (len(dim_mult) - 2)
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # every up-sampling conv halves the channels
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    layers.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2.0
        self.upsamples = nn.Sequential(*layers)
        self.head = _head(out_dim, 3)

    def forward(self, x: torch.Tensor, cache: CausalCache) -> torch.Tensor:
        x = cached_causal_conv(self.conv1, x, cache)
        for layer in self.middle:
            x = layer(x, cache)
        for layer in self.upsamples:
            x = layer(x, cache)
        return _run_head(self.head, x, cache)


# --------------------------------------------------------------------------------------------------- the VAE
class WanVideoVAE(nn.Module):
    """Wan2.1 video VAE with the official parameter names, latent normalisation and (optional) spatial tiling.

    `encode(video)` gives normalised latents `(mu - mean) * inv_std`; `decode(latents)` undoes the normalisation
    (`z / inv_std + mean`), decodes and clamps to [-1, 1]. `encode_raw` / `decode_raw` skip normalisation and clamp
    (diffusers' `AutoencoderKLWan` convention). The math follows the parameters' dtype and device; callers decide
    both, and wrap inference in `torch.no_grad()`.

    The latent mean and 1/std are non-persistent buffers (not in the checkpoint).
    """

    def __init__(self, config: WanVAEConfig = WanVAEConfig()):
        super().__init__()
        if len(config.dim_mult) != 4 or len(config.temporal_downsample) != 3 or sum(config.temporal_downsample) != 2:
            raise ValueError(f"WanVideoVAE needs the Wan2.1 compression (8x space, 4x time): 4 stages in dim_mult and "
                             f"exactly 2 of 3 temporal_downsample flags set; got dim_mult={config.dim_mult}, "
                             f"temporal_downsample={config.temporal_downsample}")
        self.config = config
        c = config
        self.encoder = Encoder3d(c.dim, c.z_dim * 2, c.dim_mult, c.num_res_blocks, c.attn_scales,
                                 c.temporal_downsample)
        self.conv1 = CausalConv3d(c.z_dim * 2, c.z_dim * 2, 1)
        self.conv2 = CausalConv3d(c.z_dim, c.z_dim, 1)
        self.decoder = Decoder3d(c.dim, c.z_dim, c.dim_mult, c.num_res_blocks, c.attn_scales,
                                 tuple(reversed(c.temporal_downsample)))
        # Real (CPU) tensors even when the module is built under `torch.device("meta")`, so a meta-built model
        # only needs its weights assigned. 1/std is computed in fp32, as upstream.
        cpu = torch.device("cpu")
        self.register_buffer("mean", torch.tensor(c.latents_mean, dtype=torch.float32, device=cpu), persistent=False)
        self.register_buffer("inv_std", 1.0 / torch.tensor(c.latents_std, dtype=torch.float32, device=cpu),
                             persistent=False)

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def _stats(self, like: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        shape = (1, self.z_dim, 1, 1, 1)
        return (self.mean.to(like.device, like.dtype).view(shape), self.inv_std.to(like.device, like.dtype).view(shape))

    # -------------------------------------------------------------------------------------- checks
    def _check_video(self, video: torch.Tensor) -> None:
        if video.ndim != 5:
            hint = " (add the batch axis with video.unsqueeze(0))" if video.ndim == 4 else ""
            raise ValueError(f"video must have shape [B, 3, F, H, W]; got {tuple(video.shape)}{hint}")
        _, c, f, h, w = video.shape
        if c != 3:
            raise ValueError(f"video must have 3 (RGB) channels on axis 1; got {c} in shape {tuple(video.shape)}. "
                             "Pass [B, 3, F, H, W], not [B, F, 3, H, W]")
        if f % 4 != 1:
            lower = f - (f - 1) % 4
            fix = f"Use {lower} or {lower + 4} frames" if lower >= 1 else "Use at least 1 frame"
            raise ValueError(f"video frame count must be 4k+1 (1, 5, 9, ..., 81); got {f}. {fix}")
        if h % 8 or w % 8:
            raise ValueError(f"video height and width must be multiples of 8; got {h}x{w}. "
                             f"Resize or crop to {h - h % 8}x{w - w % 8}")

    def _check_latents(self, latents: torch.Tensor) -> None:
        if latents.ndim != 5:
            hint = " (add the batch axis with latents.unsqueeze(0))" if latents.ndim == 4 else ""
            raise ValueError(f"latents must have shape [B, {self.z_dim}, T, h, w]; got {tuple(latents.shape)}{hint}")
        if latents.shape[1] != self.z_dim:
            raise ValueError(f"latents must have z_dim={self.z_dim} channels on axis 1; got {latents.shape[1]} in "
                             f"shape {tuple(latents.shape)}")

    # ------------------------------------------------------------------------- untiled, un-normalised
    def encode_moments(self, video: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Un-normalised posterior (mu, log_var), each [B, z_dim, T, h, w]; chunked causal encoding."""
        self._check_video(video)
        cache, chunks = CausalCache(), []
        for start, stop in [(0, 1)] + [(i, i + 4) for i in range(1, video.shape[2], 4)]:
            cache.start_chunk()
            chunks.append(self.encoder(video[:, :, start:stop], cache))
        mu, log_var = self.conv1(torch.cat(chunks, dim=2)).chunk(2, dim=1)
        return mu, log_var

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Un-normalised latent mean mu [B, z_dim, T, h, w] (= diffusers `encode(x).latent_dist.mean`)."""
        return self.encode_moments(video)[0]

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Un-normalised latents -> video [B, 3, 4T-3, 8h, 8w], NOT clamped; one latent frame per chunk."""
        self._check_latents(z)
        x = self.conv2(z)
        cache, chunks = CausalCache(), []
        for i in range(x.shape[2]):
            cache.start_chunk()
            chunks.append(self.decoder(x[:, :, i:i + 1], cache))
        return torch.cat(chunks, dim=2)

    # ------------------------------------------------------------------------------ normalised API
    def _encode_normalised(self, video: torch.Tensor) -> torch.Tensor:
        mu = self.encode_raw(video)
        mean, inv_std = self._stats(mu)
        return (mu - mean) * inv_std

    def _decode_unclamped(self, latents: torch.Tensor) -> torch.Tensor:
        self._check_latents(latents)
        mean, inv_std = self._stats(latents)
        return self.decode_raw(latents / inv_std + mean)

    def encode(self, video: torch.Tensor, tiled: bool = False, tile_size: Tuple[int, int] = (34, 34),
               tile_stride: Tuple[int, int] = (18, 16), progress: bool = True) -> torch.Tensor:
        """Video [B,3,F,H,W] in [-1,1] -> normalised latents [B,z_dim,T,H/8,W/8].

        Args:
            tiled: encode overlapping spatial tiles separately and blend them (saves memory; not bit-equal to
                untiled, since the middle attention only sees one tile).
            tile_size, tile_stride: (height, width) in latent units (x8 pixels).
            progress: show a tqdm bar over tiles.
        """
        if not tiled:
            return self._encode_normalised(video)
        self._check_video(video)
        return tiled_apply(video, self._encode_normalised, in_unit=8, out_unit=1, out_channels=self.z_dim,
                           out_frames=(video.shape[2] + 3) // 4, tile_size=tile_size, tile_stride=tile_stride,
                           progress=progress, desc="VAE encoding")

    def decode(self, latents: torch.Tensor, tiled: bool = False, tile_size: Tuple[int, int] = (30, 52),
               tile_stride: Tuple[int, int] = (15, 26), progress: bool = True) -> torch.Tensor:
        """Normalised latents [B,z_dim,T,h,w] -> video [B,3,4T-3,8h,8w] clamped to [-1,1].

        Args:
            tiled: decode overlapping spatial latent tiles separately and blend them (not bit-equal to untiled).
            tile_size, tile_stride: (height, width) in latent units. UniAnimate uses (30, 52) / (15, 26).
            progress: show a tqdm bar over tiles.
        """
        if not tiled:
            return self._decode_unclamped(latents).clamp_(-1, 1)
        self._check_latents(latents)
        video = tiled_apply(latents, self._decode_unclamped, in_unit=1, out_unit=8, out_channels=3,
                            out_frames=4 * latents.shape[2] - 3, tile_size=tile_size, tile_stride=tile_stride,
                            progress=progress, desc="VAE decoding")
        return video.clamp_(-1, 1)


    # ------------------------------------------------------------------------------------ streamed decode
    def _decode_chunks(self, latents: torch.Tensor) -> Iterator[torch.Tensor]:
        """Normalised latents -> unclamped pixel chunks, one per latent frame (1 frame, then 4 each), with one
        causal cache for the stream: the same operations as `_decode_unclamped`, yielded instead of concatenated."""
        self._check_latents(latents)
        mean, inv_std = self._stats(latents)
        x = self.conv2(latents / inv_std + mean)   # kernel-1 conv on the (small) latents, as in `decode_raw`
        cache = CausalCache()
        for i in range(x.shape[2]):
            cache.start_chunk()
            yield self.decoder(x[:, :, i:i + 1], cache)

    def decode_iter(self, latents: torch.Tensor, tiled: bool = False, tile_size: Tuple[int, int] = (30, 52),
                    tile_stride: Tuple[int, int] = (15, 26), progress: bool = False) -> Iterator[torch.Tensor]:
        """`decode`, streamed: yields video chunks [B, 3, f, 8h, 8w] clamped to [-1, 1], one per latent frame
        (f = 1 for the first, 4 after); their concatenation along time equals `decode(...)` with the same arguments,
        bit for bit. Memory is one chunk plus the causal cache, whatever the length.

        With `tiled=True` every spatial tile keeps its own causal cache for the whole stream: each latent frame is
        decoded tile by tile and the tiles' chunks are blended with the masks of `decode(tiled=True)`. That holds
        all the tiles' caches at once (about the tiles' total area, x2.25 the frame for UniAnimate's 30x52 / 15x26
        tiles at 480p) instead of one tile's cache plus the whole float video. Wrap the iteration in
        `torch.no_grad()`.
        """
        self._check_latents(latents)
        if tiled:
            chunks = tiled_apply_iter(latents, self._decode_chunks, in_unit=1, out_unit=8, out_channels=3,
                                      tile_size=tile_size, tile_stride=tile_stride, progress=progress,
                                      desc="VAE decoding")
        else:
            chunks = self._decode_chunks(latents)
        return (chunk.clamp_(-1, 1) for chunk in chunks)


__all__ = ["WanVideoVAE", "CausalCache", "CacheMarker", "CausalConv3d", "RMS_norm", "ResidualBlock",
           "AttentionBlock", "Resample", "Encoder3d", "Decoder3d", "tile_starts", "blend_mask"]
