"""Wan2.1 diffusion transformer (`WanModel`), T2V and I2V.

Attribute names are the official checkpoint keys (`blocks.{i}.self_attn.q`, `cross_attn.k_img`, `norm3`,
`modulation`, ...), so official files load with a strict `load_state_dict`. Numerics follow the DiffSynth/UniAnimate
path when the weights are bf16 (activations stay in the parameter dtype; norms run internally in fp32, RoPE in
float64 as upstream, see `WanModel`), and are plain fp32 (RoPE still float64) when the weights are fp32. See
`docs/models.md` for the differences from upstream.

Notation: x [B, C, T, h, w] latents; L = T*h'*w' tokens with h' = h/2, w' = w/2; d width; n heads; dh = d/n.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..configs import WanDiTConfig
from .attention import attention
from .layers import HALF_DTYPES, ROPE_PRECISIONS, RMSNorm, apply_rope, rope_freqs, rope_table, sinusoidal_embedding

Grid = Tuple[int, int, int]


@dataclass
class EmbeddedContext:
    """Text (and I2V image) tokens already through `text_embedding` / `img_emb`: a per-generation invariant that the
    pipelines compute once and pass as `context` to every step (`WanModel.embed_context` makes one)."""

    text: torch.Tensor                   # [B, Lt, d]
    image: Optional[torch.Tensor] = None  # [B, Li, d], I2V only

    def __iter__(self):   # `ctx, ctx_img = model.embed_context(...)`
        return iter((self.text, self.image))

    def select(self, indices: Optional[Sequence[int]]) -> "EmbeddedContext":
        """The batch items `indices` (None: all)."""
        if indices is None:
            return self
        pick = lambda t: None if t is None else t[list(indices)]  # noqa: E731
        return EmbeddedContext(pick(self.text), pick(self.image))


def run_cached_blocks(caches: Sequence, tokens: torch.Tensor, modulation: torch.Tensor,
                      compute: Callable[[Optional[List[int]]], torch.Tensor]) -> torch.Tensor:
    """The block-cache hook: per batch item, ask its cache (TeaCache, MagCache, ... or None = always compute) whether
    to run the blocks; run them once for every item that computes (`compute(indices)`, None = the whole batch), let
    those caches store the residual, and let the others reuse theirs. Items keep their order.

    `caches` has one entry per batch item (batched CFG: [conditional, unconditional]); each cache sees its own
    item's modulation `[1, 6, d]`, exactly what it sees when the branches run one at a time.
    """
    if len(caches) != tokens.shape[0]:
        raise ValueError(f"block_cache needs one cache (or None) per batch item: got {len(caches)} for batch "
                         f"{tokens.shape[0]}")
    run = [cache is None or cache.should_compute(modulation[i:i + 1]) for i, cache in enumerate(caches)]
    computed = [i for i, r in enumerate(run) if r]
    whole = len(computed) == len(caches)
    out = compute(None if whole else computed) if computed else None
    outputs = {i: out[j:j + 1] for j, i in enumerate(computed)}
    items = []
    for i, cache in enumerate(caches):
        if run[i]:
            if cache is not None:
                cache.store(tokens[i:i + 1], outputs[i])
            items.append(outputs[i])
        else:
            items.append(cache.reuse(tokens[i:i + 1]))
    return out if whole else torch.cat(items)




# In half precision these keep the upstream's two roundings (multiply, then add), so bf16 runs match
# DiffSynth/UniAnimate; in fp32/fp64 one fused addcmul is faster (about 3% of a CPU forward) and as exact.
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x * (1 + scale) + shift."""
    return x * (1 + scale) + shift if x.dtype in HALF_DTYPES else torch.addcmul(shift, x, 1 + scale)


def gated_add(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x + gate * y."""
    return x + gate * y if x.dtype in HALF_DTYPES else torch.addcmul(x, gate, y)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)   # over the full width, all heads together
        self.norm_k = RMSNorm(dim, eps)

    def forward(self, x, rope, backend=None, sequence_parallel=None):
        """x [B, L, d]; rope: the table from `layers.rope_table` ([L, 1, dh/2] phasors) -> [B, L, d]. Under
        sequence parallel, x and rope are this rank's token shard and attention spans every rank's tokens."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # noqa: E731  [B, L, n, dh]
        q = apply_rope(heads(self.norm_q(self.q(x))), rope)
        k = apply_rope(heads(self.norm_k(self.k(x))), rope)
        v = heads(self.v(x))
        attend = attention if sequence_parallel is None else sequence_parallel.attention
        return self.o(attend(q, k, v, backend).flatten(2))


class CrossAttention(nn.Module):
    """Attention from video tokens to the text context and, for I2V, separately to the CLIP image tokens."""

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6, has_image_input: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q = RMSNorm(dim, eps)
        self.norm_k = RMSNorm(dim, eps)
        self.has_image_input = has_image_input
        if has_image_input:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)

    def forward(self, x, context, context_img=None, backend=None):
        """x [B, L, d]; context [B, Lt, d]; context_img [B, Li, d] or None -> [B, L, d]."""
        heads = lambda t: t.unflatten(-1, (self.num_heads, -1))  # noqa: E731
        q = heads(self.norm_q(self.q(x)))
        out = attention(q, heads(self.norm_k(self.k(context))), heads(self.v(context)), backend)
        if self.has_image_input:
            k_img = heads(self.norm_k_img(self.k_img(context_img)))
            out = out + attention(q, k_img, heads(self.v_img(context_img)), backend)
        return self.o(out.flatten(2))


class DiTBlock(nn.Module):
    def __init__(self, cfg: WanDiTConfig):
        super().__init__()
        d = cfg.dim
        self.self_attn = SelfAttention(d, cfg.num_heads, cfg.eps)
        self.cross_attn = CrossAttention(d, cfg.num_heads, cfg.eps, cfg.has_image_input)
        self.norm1 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(d, eps=cfg.eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(d, eps=cfg.eps)   # affine; the cross-attention norm
        self.ffn = nn.Sequential(nn.Linear(d, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, d))
        self.modulation = nn.Parameter(torch.randn(1, 6, d) / d**0.5)

    def forward(self, x, context, context_img, e0, rope, backend=None, sequence_parallel=None):
        """x [B, L, d]; e0 [B, 6, d] (timestep projection) -> [B, L, d]."""
        shift_msa, scale_msa, gate_msa, shift_ffn, scale_ffn, gate_ffn = (
            self.modulation.to(e0.dtype) + e0).chunk(6, dim=1)
        # 1. Self-attention, modulated and gated by the timestep.
        x = gated_add(x, gate_msa, self.self_attn(modulate(self.norm1(x), shift_msa, scale_msa), rope, backend,
                                                  sequence_parallel))
        # 2. Cross-attention to text (and image) tokens: no modulation, no gate.
        x = x + self.cross_attn(self.norm3(x), context, context_img, backend)
        # 3. Feed-forward, modulated and gated.
        x = gated_add(x, gate_ffn, self.ffn(modulate(self.norm2(x), shift_ffn, scale_ffn)))
        return x


class Head(nn.Module):
    def __init__(self, dim: int, out_dim: int, patch_size, eps: float):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * patch_size[0] * patch_size[1] * patch_size[2])
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x, e):
        """x [B, L, d]; e [B, d] (the time embedding, not its projection) -> [B, L, out*prod(patch)]."""
        shift, scale = (self.modulation.to(e.dtype) + e.unsqueeze(1)).chunk(2, dim=1)
        return self.head(modulate(self.norm(x), shift, scale))


class ImageEmbedding(nn.Module):
    """CLIP tokens -> DiT width (`img_emb.proj`); note the default LayerNorm eps 1e-5 and exact GELU."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(),
                                  nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))

    def forward(self, x):
        return self.proj(x)


class WanModel(nn.Module):
    """The Wan2.1 DiT. Build with `WanModel(WanDiTConfig.from_preset("wan2.1-i2v-14b"))` or any tiny config.

    `forward` is composed of public steps (`embed_timestep`, `embed_context`, `patchify`, `forward_blocks`,
    `unpatchify_head`); step caches (TeaCache, MagCache) plug in through its `block_cache` hook, and per-generation
    invariants (the embedded context, the RoPE table) are computed once (`EmbeddedContext`, `rope_for`).

    Args:
        attention_backend: None picks `$DIFFSYNTH_ATTENTION` or the best importable kernel (see `attention.py`).
        rope_precision: "float64" (default) rotates q and k exactly as upstream (complex128 multiply, cast back),
            so bf16 runs are bit-identical to DiffSynth/UniAnimate; it works in token chunks, so the float64
            transient stays bounded (`layers.ROPE_CHUNK_BYTES`, 32 MiB) instead of a full float64 copy of q and k.
            "float32" rotates with real cos/sin in fp32 (fp64 activations stay fp64): a rare last-bit bf16
            difference from upstream, but no float64 arithmetic, which is slow on consumer GPUs (a small fraction
            of their fp32 rate) and unsupported on Apple MPS. MPS always uses "float32" (with a warning). Also
            settable on a loaded model: `model.rope_precision = "float32"`.
    """

    def __init__(self, config: WanDiTConfig = WanDiTConfig(), attention_backend: Optional[str] = None,
                 rope_precision: str = "float64"):
        super().__init__()
        self.config = cfg = config
        self.attention_backend = attention_backend
        self.rope_precision = rope_precision
        # `diffsynth.distributed.SequenceParallel` (set by `pipe.enable_parallel`): tokens sharded across ranks.
        self.sequence_parallel = None
        d = cfg.dim
        self.patch_embedding = nn.Conv3d(cfg.in_dim, d, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, d), nn.GELU(approximate="tanh"), nn.Linear(d, d))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.blocks = nn.ModuleList(DiTBlock(cfg) for _ in range(cfg.num_layers))
        self.head = Head(d, cfg.out_dim, cfg.patch_size, cfg.eps)
        if cfg.has_image_input:
            self.img_emb = ImageEmbedding(cfg.image_dim, d)

    @property
    def rope_precision(self) -> str:
        return self._rope_precision

    @rope_precision.setter
    def rope_precision(self, value: str) -> None:
        if value not in ROPE_PRECISIONS:
            raise ValueError(f"rope_precision must be one of {ROPE_PRECISIONS}; got {value!r}")
        self._rope_precision = value

    def rope_for(self, grid: Grid, x: torch.Tensor) -> torch.Tensor:
        """The RoPE table of a token grid for activations like x, at `rope_precision` (see `layers.rope_table`).
        The last table is kept (a per-generation invariant: every step and window of a video has the same grid)."""
        precision = self.rope_precision
        if precision == "float64" and x.device.type == "mps":
            warnings.warn("MPS has no float64: rotating q/k with rope_precision='float32' (may differ from upstream "
                          "in the last bf16 bit)", stacklevel=3)
            precision = "float32"
        key = (tuple(grid), precision, x.dtype, x.device, self.config.head_dim, self.config.rope_max_len)
        cached = self.__dict__.get("_rope_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        freqs = rope_freqs(grid, self.config.head_dim, device="cpu" if x.device.type == "mps" else x.device,
                           max_len=self.config.rope_max_len)
        table = rope_table(freqs, precision, x.dtype).to(x.device)
        self.__dict__["_rope_cache"] = (key, table)   # plain attribute: not a buffer, not in the state dict
        return table

    # ----------------------------------------------------------------------------------------------- steps
    def embed_timestep(self, timestep: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """timestep [B] on the 0..1000 scale -> e [B, d], e0 [B, 6, d].

        The sinusoid is computed in float64 and returned in the timestep's dtype, so passing a bf16 timestep
        reproduces the upstream rounding (995.93 -> 996).
        """
        weight = self.time_embedding[0].weight
        sinusoid = sinusoidal_embedding(self.config.freq_dim, timestep.reshape(-1)).to(weight.dtype)
        e = self.time_embedding(sinusoid)
        e0 = self.time_projection(e).unflatten(1, (6, self.config.dim))
        return e, e0

    def embed_context(self, context: torch.Tensor, clip_feature: Optional[torch.Tensor] = None) -> EmbeddedContext:
        """Text [B, Lt, text_dim] (and CLIP tokens [B, 257, image_dim]) -> `EmbeddedContext` (text tokens, image
        tokens or None). Unpacks as a pair: `ctx, ctx_img = model.embed_context(...)`."""
        ctx = self.text_embedding(context)
        ctx_img = self.img_emb(clip_feature) if self.config.has_image_input else None
        return EmbeddedContext(ctx, ctx_img)

    def patchify(self, x: torch.Tensor, y: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Grid]:
        """Latents [B, 16, T, h, w] (+ I2V y [B, 20, T, h, w], concatenated after) -> tokens [B, L, d], grid."""
        if y is not None:
            x = torch.cat([x, y], dim=1)
        x = self.patch_embedding(x)
        grid = tuple(x.shape[2:])
        return x.flatten(2).transpose(1, 2), grid

    def forward_blocks(self, x, context, context_img, e0, grid: Grid,
                       use_gradient_checkpointing: bool = False, use_gradient_checkpointing_offload: bool = False):
        """Run every transformer block on tokens x [B, L, d]."""
        sp = self.sequence_parallel
        rope = self.rope_for(grid, x) if sp is None else sp.shard_rope(self.rope_for(grid, x))
        checkpointing = use_gradient_checkpointing and self.training and torch.is_grad_enabled()
        for block in self.blocks:
            args = (x, context, context_img, e0, rope, self.attention_backend, sp)
            if not checkpointing:
                x = block(*args)
                continue
            offload = torch.autograd.graph.save_on_cpu(pin_memory=x.is_cuda) if use_gradient_checkpointing_offload \
                else contextlib.nullcontext()
            with offload:
                x = checkpoint(block, *args, use_reentrant=False)
        return x

    def unpatchify_head(self, x: torch.Tensor, e: torch.Tensor, grid: Grid) -> torch.Tensor:
        """Tokens [B, L, d] -> head -> latents [B, out_dim, T*pt, h'*ph, w'*pw]. Under sequence parallel x is this
        rank's shard: the head runs on it, then the shards are gathered (padding stripped)."""
        x = self.head(x, e)
        if self.sequence_parallel is not None:
            x = self.sequence_parallel.gather(x)
        pt, ph, pw = self.config.patch_size
        f, h, w = grid
        x = x.reshape(x.shape[0], f, h, w, pt, ph, pw, self.config.out_dim)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(x.shape[0], self.config.out_dim, f * pt, h * ph, w * pw)

    # --------------------------------------------------------------------------------------------- forward
    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: Union[torch.Tensor, EmbeddedContext],
                clip_feature: Optional[torch.Tensor] = None, y: Optional[torch.Tensor] = None,
                add_condition: Optional[torch.Tensor] = None, use_gradient_checkpointing: bool = False,
                use_gradient_checkpointing_offload: bool = False,
                block_cache: Optional[Sequence] = None) -> torch.Tensor:
        """Predict the flow-matching velocity. The one DiT forward: training, the pipelines and the step caches all
        run through it.

        Args:
            x: noisy latents [B, 16, T, h, w] (h, w even).
            timestep: [B] or scalar, on the 0..1000 scale.
            context: umT5 features [B, Lt, 4096] (512 rows, zero after the prompt's length), or an
                `EmbeddedContext` computed once per generation with `embed_context` (then clip_feature is unused).
            clip_feature: I2V only, CLIP tokens [B, 257, 1280].
            y: I2V only, [B, 20, T, h, w]: 4 mask channels then 16 reference-latent channels.
            add_condition: UniAnimate pose tokens, [B', d, T, h', w'] or [B', L, d] with B' <= B, added after patch
                embedding to the first B' items (batched CFG puts the conditional item first).
            block_cache: one step cache (`diffsynth.acceleration.BlockCache`, e.g. TeaCache) or None per batch
                item; see `run_cached_blocks`.
        Returns:
            velocity [B, 16, T, h, w].
        """
        self.check_inputs(x, timestep, context, clip_feature, y, add_condition)
        timestep = timestep.reshape(-1).expand(x.shape[0]) if timestep.numel() == 1 else timestep
        e, e0 = self.embed_timestep(timestep)
        ctx = context if isinstance(context, EmbeddedContext) else self.embed_context(context, clip_feature)
        tokens, grid = self.patchify(x, y)
        if add_condition is not None:
            tokens = add_condition_tokens(tokens, add_condition)
        if self.sequence_parallel is not None:     # pose tokens were added above: they are split the same way
            tokens = self.sequence_parallel.shard(tokens)

        def blocks(indices: Optional[List[int]]) -> torch.Tensor:
            pick = (lambda t: t) if indices is None else (lambda t: t[indices])  # noqa: E731
            sub = ctx.select(indices)
            return self.forward_blocks(pick(tokens), sub.text, sub.image, pick(e0), grid,
                                       use_gradient_checkpointing, use_gradient_checkpointing_offload)

        tokens = blocks(None) if block_cache is None else run_cached_blocks(block_cache, tokens, e0, blocks)
        return self.unpatchify_head(tokens, e, grid)

    def check_inputs(self, x, timestep, context, clip_feature=None, y=None, add_condition=None):
        """Raise a ValueError naming the bad input and the fix, instead of a shape error deep inside torch."""
        cfg = self.config
        if x.ndim != 5:
            raise ValueError(f"x must be latents [B, C, T, h, w]; got shape {tuple(x.shape)}")
        channels = x.shape[1] + (y.shape[1] if y is not None else 0)
        if cfg.has_image_input and y is None:
            raise ValueError("this is an I2V DiT: pass y [B, 20, T, h, w] (mask + reference latent) and clip_feature")
        if channels != cfg.in_dim:
            detail = f"x has {x.shape[1]}" + (f" and y has {y.shape[1]}" if y is not None else "")
            raise ValueError(f"the DiT expects {cfg.in_dim} input channels in total but {detail}; "
                             + ("I2V takes 16 latent + 20 y channels" if cfg.has_image_input
                                else "T2V takes 16 latent channels and no y"))
        if y is not None and y.shape[2:] != x.shape[2:]:
            raise ValueError(f"y {tuple(y.shape)} must match x {tuple(x.shape)} in frames, height and width: encode "
                             "the reference for the same number of frames and size as the latents")
        _, ph, pw = cfg.patch_size
        if x.shape[3] % ph or x.shape[4] % pw:
            raise ValueError(f"latent height/width {tuple(x.shape[3:])} must be multiples of {ph}x{pw}: "
                             "use pixel sizes that are multiples of 16")
        if timestep.numel() not in (1, x.shape[0]):
            raise ValueError(f"timestep must be a scalar or have batch size {x.shape[0]}; got {tuple(timestep.shape)}")
        if isinstance(context, EmbeddedContext):
            if context.text.ndim != 3 or context.text.shape[-1] != cfg.dim:
                raise ValueError(f"an EmbeddedContext holds [B, L, {cfg.dim}] tokens (from embed_context); got "
                                 f"{tuple(context.text.shape)}")
            if cfg.has_image_input and context.image is None:
                raise ValueError("this is an I2V DiT: the EmbeddedContext needs its image tokens "
                                 "(embed_context(context, clip_feature))")
        elif context.ndim != 3 or context.shape[-1] != cfg.text_dim:
            raise ValueError(f"context must be [B, L, {cfg.text_dim}] text-encoder features; got {tuple(context.shape)}")
        elif cfg.has_image_input:
            if clip_feature is None:
                raise ValueError("this is an I2V DiT: pass clip_feature [B, 257, 1280] from the CLIP image encoder")
            if clip_feature.ndim != 3 or clip_feature.shape[-1] != cfg.image_dim:
                raise ValueError(f"clip_feature must be [B, N, {cfg.image_dim}]; got {tuple(clip_feature.shape)}")
        if add_condition is not None:
            f, h, w = x.shape[2] // cfg.patch_size[0], x.shape[3] // ph, x.shape[4] // pw
            expected = (x.shape[0], cfg.dim, f, h, w)
            items = add_condition.shape[0]
            ok = 1 <= items <= x.shape[0] and (tuple(add_condition.shape[1:]) == expected[1:] if add_condition.ndim == 5
                                               else tuple(add_condition.shape[1:]) == (f * h * w, cfg.dim))
            if not ok:
                raise ValueError(f"add_condition must be {expected} (pose-guider output) or "
                                 f"{(x.shape[0], f * h * w, cfg.dim)} tokens; got {tuple(add_condition.shape)}. "
                                 "Check that the pose video has F = 4k+1 frames at the generation's height/width")


def condition_tokens(condition: torch.Tensor) -> torch.Tensor:
    """Pose-guider output [B, d, T, h', w'] -> tokens [B, L, d] in the DiT's (f, h, w) order; tokens pass through."""
    return condition.flatten(2).transpose(1, 2) if condition.ndim == 5 else condition


def add_condition_tokens(tokens: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """tokens [B, L, d] + condition ([B', d, T, h', w'] or [B', L, d]) on the first B' <= B items."""
    condition = condition_tokens(condition).to(tokens.dtype)
    if condition.shape[0] == tokens.shape[0]:
        return tokens + condition
    return torch.cat([tokens[:condition.shape[0]] + condition, tokens[condition.shape[0]:]])


__all__ = ["WanModel", "DiTBlock", "SelfAttention", "CrossAttention", "Head", "ImageEmbedding", "condition_tokens",
           "add_condition_tokens", "EmbeddedContext", "run_cached_blocks"]
