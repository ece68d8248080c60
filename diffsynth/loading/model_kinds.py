"""One `ModelKind` per model (the Wan2.1 DiT, umT5, CLIP visual, VAE): its configuration read from the shapes of
its official-name tensors (`config_from`, with a `config.json` beside the weights as hints) and how it is built.
`ConfigError` when the shapes do not determine the configuration."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..configs import DIT_PRESETS, ClipVisionConfig, UMT5Config, WanDiTConfig, WanVAEConfig
from .errors import CheckpointError

logger = logging.getLogger(__name__)

Shapes = Mapping[str, Tuple[int, ...]]

DIT_HEAD_DIM = 128        # every released Wan2.1 DiT
CLIP_HEAD_DIM = 80        # ViT-H/14

class ConfigError(CheckpointError):
    """The checkpoint's shapes do not determine the model configuration; the caller must pass one.
    `missing` names the keys that were needed but absent (a shard left out of the list, usually)."""

    def __init__(self, message: str, missing: Sequence[str] = ()):
        super().__init__(message)
        self.missing = tuple(missing)


# ------------------------------------------------------------------------------------------------- helpers
def _block_count(shapes: Shapes, pattern: str) -> int:
    """1 + the largest index matched by `pattern` (a regex with one group), 0 when none."""
    regex = re.compile(pattern)
    indices = [int(m.group(1)) for m in map(regex.match, shapes) if m]
    return max(indices) + 1 if indices else 0


def _need(shapes: Shapes, key: str, what: str) -> Tuple[int, ...]:
    return _need_all(shapes, (key,), what)[0]


def _need_all(shapes: Shapes, keys: Sequence[str], what: str) -> List[Tuple[int, ...]]:
    """The shapes of `keys`; a ConfigError naming every absent one otherwise."""
    absent = [k for k in keys if k not in shapes]
    if absent:
        raise ConfigError(f"cannot read the {what} configuration: {', '.join(map(repr, absent))} "
                          f"{'is' if len(absent) == 1 else 'are'} missing (is a shard missing?)", missing=absent)
    return [shapes[k] for k in keys]


def read_config_json(paths: Sequence[Path]) -> Dict[str, Any]:
    """`config.json` beside the first weight file (the Wan and diffusers release folders have one), or {}."""
    if not paths:
        return {}
    candidate = Path(paths[0]).parent / "config.json"
    if not candidate.is_file():
        return {}
    try:
        with open(candidate) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        logger.warning("ignoring unreadable %s: %s", candidate, e)
        return {}
    return data if isinstance(data, dict) else {}


# ------------------------------------------------------------------------------------------------- configs
def dit_config_from(shapes: Shapes, hints: Mapping[str, Any] = MappingProxyType({})) -> WanDiTConfig:
    """DiT config from official-name shapes. Heads: `num_heads` (Wan) or `num_attention_heads` (diffusers) from
    `hints` (a config.json) when its width agrees, else width / 128 (every released model).

    Layers: the config.json's `num_layers` when it describes this DiT; else the released depth for a released
    width when the files hold fewer blocks (a missing last shard must not load as a shallower model); else the
    largest block index + 1. Absent blocks are then reported by the key check."""
    # patch_embedding [d, in_dim, pt, ph, pw]; head.head [out_dim * prod(patch), d]
    pe, head, ffn, text, time = _need_all(shapes, ("patch_embedding.weight", "head.head.weight",
                                                   "blocks.0.ffn.0.weight", "text_embedding.0.weight",
                                                   "time_embedding.0.weight"), "DiT")
    dim, in_dim, patch = pe[0], pe[1], tuple(pe[2:])
    patch_volume = patch[0] * patch[1] * patch[2]
    i2v = "img_emb.proj.1.weight" in shapes
    heads = _heads_from_hints(hints, dim)
    if heads is None:
        if dim % DIT_HEAD_DIM:
            raise ConfigError(
                f"a DiT of width {dim} is not a released Wan2.1 size (width not a multiple of the head width "
                f"{DIT_HEAD_DIM}), so its number of heads cannot be read from the weights: pass "
                "config=WanDiTConfig(...) or put a config.json with \"num_heads\" beside the checkpoint")
        heads = dim // DIT_HEAD_DIM
    kwargs = dict(
        model_type="i2v" if i2v else "t2v", in_dim=in_dim, dim=dim, ffn_dim=ffn[0], num_heads=heads,
        num_layers=_dit_layers(shapes, hints, dim, ffn[0]), out_dim=head[0] // patch_volume, text_dim=text[1],
        freq_dim=time[1], patch_size=patch,
    )
    if i2v:
        kwargs["image_dim"] = shapes["img_emb.proj.1.weight"][1]
    for name in ("eps", "text_len"):
        if name in hints:
            kwargs[name] = hints[name]
    return WanDiTConfig(**kwargs)


def _dit_layers(shapes: Shapes, hints: Mapping[str, Any], dim: int, ffn_dim: int) -> int:
    found = _block_count(shapes, r"blocks\.(\d+)\.")
    if "num_layers" in hints and _heads_from_hints(hints, dim, quiet=True) is not None:
        return int(hints["num_layers"])
    released = [c.num_layers for c in DIT_PRESETS.values() if (c.dim, c.ffn_dim) == (dim, ffn_dim)]
    return max([found, *released])


def _heads_from_hints(hints: Mapping[str, Any], dim: int, quiet: bool = False) -> Optional[int]:
    if "num_heads" in hints and hints.get("dim", dim) == dim:                               # Wan config.json
        return int(hints["num_heads"])
    if "num_attention_heads" in hints and "attention_head_dim" in hints:                     # diffusers
        if hints["num_attention_heads"] * hints["attention_head_dim"] == dim:
            return int(hints["num_attention_heads"])
    if hints and not quiet:
        logger.info("config.json beside the checkpoint does not describe a DiT of width %d; ignored", dim)
    return None


def t5_config_from(shapes: Shapes, hints: Mapping[str, Any] = MappingProxyType({})) -> UMT5Config:
    """umT5 sizes from official key shapes (heads from the per-layer relative-bias table)."""
    vocab, dim = _need(shapes, "token_embedding.weight", "umT5")
    buckets, heads = _need(shapes, "blocks.0.pos_embedding.embedding.weight", "umT5")
    return UMT5Config(vocab_size=vocab, dim=dim, dim_attn=_need(shapes, "blocks.0.attn.q.weight", "umT5")[0],
                      dim_ffn=_need(shapes, "blocks.0.ffn.fc1.weight", "umT5")[0], num_heads=heads,
                      num_layers=_block_count(shapes, r"blocks\.(\d+)\."), num_buckets=buckets)


def clip_config_from(shapes: Shapes, hints: Mapping[str, Any] = MappingProxyType({})) -> ClipVisionConfig:
    """CLIP visual config. Heads = width / 80 (ViT-H/14's head width); Wan uses all blocks but the last."""
    dim, _, patch, _ = _need(shapes, "visual.patch_embedding.weight", "CLIP")
    tokens = _need(shapes, "visual.pos_embedding", "CLIP")[1]
    grid = round((tokens - 1) ** 0.5)
    if grid * grid != tokens - 1:
        raise ConfigError(f"CLIP position table has {tokens} rows, not 1 + a square number of patches")
    if dim % CLIP_HEAD_DIM:
        raise ConfigError(f"a CLIP tower of width {dim} is not ViT-H/14 (width not a multiple of the head width "
                          f"{CLIP_HEAD_DIM}), so its heads cannot be read from the weights: pass "
                          "config=ClipVisionConfig(...)")
    layers = _block_count(shapes, r"visual\.transformer\.(\d+)\.")
    out_dim = shapes["visual.head"][1] if "visual.head" in shapes else ClipVisionConfig.out_dim
    return ClipVisionConfig(image_size=grid * patch, patch_size=patch, dim=dim,
                            mlp_dim=_need(shapes, "visual.transformer.0.mlp.0.weight", "CLIP")[0],
                            num_heads=dim // CLIP_HEAD_DIM, num_layers=layers, out_dim=out_dim,
                            use_layers=max(layers - 1, 1))


def vae_config_from(shapes: Shapes, hints: Mapping[str, Any] = MappingProxyType({})) -> WanVAEConfig:
    """VAE config from the encoder's layer list: stages end at each resample layer; a resample with a
    `time_conv` also halves time. The latent statistics are not stored: the Wan values are used for z_dim 16."""
    dim = _need(shapes, "encoder.conv1.weight", "VAE")[0]
    z_dim = _need(shapes, "conv2.weight", "VAE")[0]
    layer = re.compile(r"encoder\.downsamples\.(\d+)\.(.+)")
    kinds: Dict[int, str] = {}
    widths: Dict[int, int] = {}
    for key, shape in shapes.items():
        m = layer.match(key)
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        if rest.startswith("resample."):
            kinds.setdefault(i, "resample2d")
        elif rest.startswith("time_conv."):
            kinds[i] = "resample3d"
        elif rest.startswith(("residual.", "shortcut.")):
            kinds[i] = "residual"
            if rest == "residual.2.weight":
                widths[i] = shape[0]
        else:
            raise ConfigError(f"VAE encoder layer {key!r} is not a residual or resample layer (attention inside "
                              "the stages is not read from shapes): pass config=WanVAEConfig(...)")
    stages: List[List[int]] = [[]]
    temporal: List[bool] = []
    for i in sorted(kinds):
        if kinds[i] == "residual":
            stages[-1].append(i)
        else:
            temporal.append(kinds[i] == "resample3d")
            stages.append([])
    counts = {len(s) for s in stages}
    if len(counts) != 1 or 0 in counts:
        raise ConfigError(f"VAE encoder stages have uneven residual-block counts {[len(s) for s in stages]}")
    dim_mult = tuple(widths[s[0]] // dim for s in stages)
    kwargs: Dict[str, Any] = dict(dim=dim, z_dim=z_dim, dim_mult=dim_mult, num_res_blocks=counts.pop(),
                                  temporal_downsample=tuple(temporal))
    if z_dim != WanVAEConfig.z_dim:
        raise ConfigError(f"a VAE with z_dim={z_dim} has no known latent mean/std (they are not stored in the "
                          "file): pass config=WanVAEConfig(..., latents_mean=..., latents_std=...)")
    return WanVAEConfig(**kwargs)


# ------------------------------------------------------------------------------------------------- models
def _build_dit(config):
    from ..models.wan_dit import WanModel
    return WanModel(config)


def _build_vae(config):
    from ..models.wan_vae import WanVideoVAE
    return WanVideoVAE(config)


def _build_t5(config):
    from ..models.wan_text_encoder import WanTextEncoder
    return WanTextEncoder(config)


def _build_clip(config):
    from ..models.wan_image_encoder import WanImageEncoder
    return WanImageEncoder(config)


@dataclass(frozen=True)
class ModelKind:
    name: str                                   # DiffSynth-compatible name, e.g. "wan_video_dit"
    config_type: type
    config_from: Callable[[Shapes, Mapping[str, Any]], Any]
    build: Callable[[Any], torch.nn.Module]
    # Official keys that may be absent (unused by Wan); they are filled with zeros.
    optional: Tuple[str, ...] = ()


MODEL_KINDS: Dict[str, ModelKind] = {k.name: k for k in (
    ModelKind("wan_video_dit", WanDiTConfig, dit_config_from, _build_dit),
    ModelKind("wan_video_text_encoder", UMT5Config, t5_config_from, _build_t5),
    ModelKind("wan_video_image_encoder", ClipVisionConfig, clip_config_from, _build_clip,
              optional=("visual.head", "visual.post_norm.weight", "visual.post_norm.bias")),
    ModelKind("wan_video_vae", WanVAEConfig, vae_config_from, _build_vae),
)}


__all__ = [
    "ModelKind", "MODEL_KINDS", "ConfigError", "dit_config_from", "t5_config_from", "clip_config_from",
    "vae_config_from", "read_config_json", "Shapes",
]
