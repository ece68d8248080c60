"""Which model a checkpoint holds and in which naming: read from key names and shapes only (never a hash table of
key lists).

Every supported layout is one `Layout` entry: the model it holds, the marker keys that must be present
(`required`), a pure key rename to the official Wan names (`to_official`) or, where tensors must be combined, a
state-dict converter (`convert`), and the names it ignores (`ignore`, e.g. the CLIP text tower). `detect` finds the
one layout that matches. Each model's configuration and construction are its `ModelKind` (`model_kinds.py`).

Wrapping prefixes are stripped first when every key has them: `model.diffusion_model.` and `diffusion_model.`
(ComfyUI single files) and `model.` (DiffSynth-internal names).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .errors import CheckpointError
# Imported from here by callers outside the package: the configuration of each model lives in model_kinds.py.
from .model_kinds import (ConfigError, Shapes, clip_config_from, dit_config_from, read_config_json, t5_config_from,
                          vae_config_from)

StateDict = Dict[str, torch.Tensor]

WRAPPER_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "model.")
# ComfyUI "fp8_scaled" files: `<layer>.scale_weight` (a scalar or one value per output channel) next to the fp8
# `<layer>.weight`, which stands for weight * scale_weight; `<layer>.scale_input` (an activation scale for fp8
# matmuls, unused here) and a `scaled_fp8` marker tensor, with or without the wrapping prefix.
FP8_SCALE_SUFFIX = ".scale_weight"
FP8_IGNORED = (r"(.*\.)?scaled_fp8", r".*\.scale_input")


class UnknownFormatError(CheckpointError):
    """No supported layout matches the checkpoint's keys and shapes."""


# ------------------------------------------------------------------------------------------------- layouts
def _identity(keys: Iterable[str]) -> Dict[str, str]:
    return {k: k for k in keys}


def _rename_with(converter: Callable[[Dict[str, Any]], Dict[str, Any]]) -> Callable[[Iterable[str]], Dict[str, str]]:
    """Turn a pure-rename state-dict converter into a key map: run it on {key: key} and read the values back."""
    def to_official(keys: Iterable[str]) -> Dict[str, str]:
        try:
            renamed = converter({k: k for k in keys})
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"key conversion failed: {e}") from e
        return {source: official for official, source in renamed.items()}
    return to_official


def _dit_diffusers(keys):
    from .diffusers_dit import dit_diffusers_to_official
    return _rename_with(dit_diffusers_to_official)(keys)


def _vae_diffusers(keys):
    from .diffusers_vae import vae_diffusers_to_official
    return _rename_with(vae_diffusers_to_official)(keys)


def _t5_transformers(keys):
    from .transformers_keys import t5_transformers_to_official
    return _rename_with(t5_transformers_to_official)(keys)


def _clip_transformers(state_dict: StateDict) -> StateDict:
    from .transformers_keys import clip_visual_transformers_to_official
    return clip_visual_transformers_to_official(state_dict)


@dataclass(frozen=True)
class Layout:
    model: str                                  # a MODEL_KINDS name
    name: str                                   # "official", "diffusers", "transformers"
    description: str
    required: Tuple[str, ...]                   # marker keys that must all be present
    to_official: Optional[Callable[[Iterable[str]], Dict[str, str]]] = _identity   # file key -> official key
    convert: Optional[Callable[[StateDict], StateDict]] = None   # used instead of to_official when set
    ignore: Tuple[str, ...] = ()                # regexes of keys that are not part of the model
    check: Optional[Callable[[Shapes], bool]] = None   # extra shape test

    @property
    def label(self) -> str:
        return f"{self.model} ({self.name})"

    def matches(self, shapes: Shapes) -> bool:
        return all(k in shapes for k in self.required) and (self.check is None or self.check(shapes))

    def ignored(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.ignore)


LAYOUTS: Tuple[Layout, ...] = (
    Layout("wan_video_dit", "official", "Wan2.1 DiT, official names (diffusion_pytorch_model*.safetensors)",
           ("patch_embedding.weight", "time_projection.1.weight", "blocks.0.self_attn.q.weight"),
           check=lambda s: len(s["patch_embedding.weight"]) == 5),
    Layout("wan_video_dit", "diffusers", "Wan2.1 DiT, diffusers WanTransformer3DModel names",
           ("condition_embedder.time_proj.weight", "blocks.0.attn1.to_q.weight"),
           to_official=_dit_diffusers),
    Layout("wan_video_text_encoder", "official", "umT5-XXL encoder, official names (models_t5_umt5-xxl-enc-bf16.pth)",
           ("token_embedding.weight", "blocks.0.attn.q.weight", "blocks.0.pos_embedding.embedding.weight")),
    Layout("wan_video_text_encoder", "transformers", "umT5 encoder, transformers UMT5EncoderModel names",
           ("encoder.block.0.layer.0.SelfAttention.q.weight",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
           to_official=_t5_transformers, ignore=(r"decoder\..*", r"lm_head\..*"),
           check=lambda s: "shared.weight" in s or "encoder.embed_tokens.weight" in s),
    Layout("wan_video_image_encoder", "official",
           "open-clip XLM-RoBERTa/ViT-H-14, official names (models_clip_*.pth; the text tower is ignored)",
           ("visual.patch_embedding.weight", "visual.pos_embedding", "visual.transformer.0.attn.to_qkv.weight"),
           ignore=(r"textual\..*", r"log_scale")),
    Layout("wan_video_image_encoder", "transformers", "CLIP vision tower, transformers CLIPVisionModel names",
           ("vision_model.embeddings.patch_embedding.weight", "vision_model.encoder.layers.0.self_attn.q_proj.weight"),
           to_official=None, convert=_clip_transformers,
           ignore=(r"text_model\..*", r"logit_scale", r"text_projection\..*", r".*position_ids")),
    Layout("wan_video_vae", "official", "Wan2.1 VAE, official names (Wan2.1_VAE.pth, optionally in model_state)",
           ("encoder.conv1.weight", "decoder.conv1.weight", "conv1.weight", "conv2.weight"),
           check=lambda s: len(s["encoder.conv1.weight"]) == 5),
    Layout("wan_video_vae", "diffusers", "Wan2.1 VAE, diffusers AutoencoderKLWan names",
           ("quant_conv.weight", "encoder.conv_in.weight", "decoder.conv_in.weight"), to_official=_vae_diffusers),
)


def supported_formats() -> List[str]:
    """Human-readable names of every layout `detect` recognises."""
    return [f"{layout.label}: {layout.description}" for layout in LAYOUTS] + [
        "any of these with a ComfyUI/DiffSynth wrapping prefix (model.diffusion_model., diffusion_model., model.), "
        "stored in fp32, fp16, bf16, float8_e4m3fn or float8_e5m2 (also ComfyUI fp8_scaled: "
        "<layer>.scale_weight next to the fp8 weight)"]


# ------------------------------------------------------------------------------------------------- detection
@dataclass
class Detection:
    """How to read one checkpoint as one model."""

    layout: Layout
    prefix: str                                  # stripped from every file key
    key_map: Dict[str, str]                      # file key -> official key (rename layouts) or -> converter input key
    official_shapes: Dict[str, Tuple[int, ...]]  # shapes under the official names
    ignored: List[str] = field(default_factory=list)   # file keys that are not part of the model
    # ComfyUI fp8_scaled: official weight key -> file key of its `scale_weight` (the weight is stored / scale)
    scales: Dict[str, str] = field(default_factory=dict)

    @property
    def model(self) -> str:
        return self.layout.model

    @property
    def label(self) -> str:
        return self.layout.label + (f", prefix {self.prefix!r}" if self.prefix else "")


def looks_like_lora(keys: Iterable[str]) -> bool:
    return any(".lora_A." in k or ".lora_B." in k or k.endswith((".lora_A.weight", ".lora_B.weight")) for k in keys)


def detect(shapes: Shapes, source: str = "checkpoint") -> Detection:
    """Find the one layout that matches; raise `UnknownFormatError` naming the closest candidate otherwise."""
    markers = [k for k in shapes if is_fp8_marker(k)]    # ComfyUI fp8 markers may lack the wrapping prefix
    keys = [k for k in shapes if k not in set(markers)]
    candidates = [p for p in WRAPPER_PREFIXES if keys and all(k.startswith(p) for k in keys)] + [""]
    for prefix in candidates:
        stripped = {k[len(prefix):]: shapes[k] for k in keys}
        found = [layout for layout in LAYOUTS if layout.matches(stripped)]
        if len(found) > 1:
            raise UnknownFormatError(f"{source}: ambiguous, matches {[f.label for f in found]}")
        if found:
            detection = _plan(found[0], prefix, {k: shapes[k] for k in keys}, source)
            detection.ignored += markers
            return detection
    raise UnknownFormatError(_unknown_message(shapes, source))


def is_fp8_marker(key: str) -> bool:
    """ComfyUI fp8 keys that hold no model weight (`scaled_fp8`, `*.scale_input`)."""
    return any(re.fullmatch(p, key) for p in FP8_IGNORED)


def _plan(layout: Layout, prefix: str, shapes: Shapes, source: str) -> Detection:
    ignored = [k for k in shapes if layout.ignored(k[len(prefix):])]
    scale_keys = [k for k in shapes if k.endswith(FP8_SCALE_SUFFIX) and k not in set(ignored)]
    kept = [k for k in shapes if k not in set(ignored) and k not in set(scale_keys)]
    stripped = {k[len(prefix):]: k for k in kept}
    if layout.convert is not None:
        meta = {s: torch.empty(shapes[k], device="meta") for s, k in stripped.items()}
        try:
            official = layout.convert(meta)
        except (KeyError, ValueError) as e:
            raise CheckpointError(f"{source}: looks like {layout.label} but its keys do not convert: {e}") from e
        official_shapes = {k: tuple(v.shape) for k, v in official.items()}
        key_map = {k: s for s, k in stripped.items()}
    else:
        try:
            renamed = layout.to_official(list(stripped))
        except CheckpointError as e:
            raise CheckpointError(f"{source}: looks like {layout.label} but {e}") from e
        key_map = {stripped[s]: o for s, o in renamed.items()}
        official_shapes = {o: tuple(shapes[k]) for k, o in key_map.items()}
        # e.g. transformers' tied copy `encoder.embed_tokens.weight` when `shared.weight` is read instead
        ignored += [k for k in kept if k not in key_map]
    scales = _fp8_scales(scale_keys, key_map if layout.convert is None else {}, shapes, source, layout)
    return Detection(layout, prefix, key_map, official_shapes, ignored, scales)


def _fp8_scales(scale_keys: Sequence[str], key_map: Dict[str, str], shapes: Shapes, source: str,
                layout: Layout) -> Dict[str, str]:
    """Official weight key -> file key of its ComfyUI `scale_weight`; the scale must be a scalar or [out]."""
    scales: Dict[str, str] = {}
    for scale_key in scale_keys:
        weight_key = scale_key[: -len(FP8_SCALE_SUFFIX)] + ".weight"
        official = key_map.get(weight_key)
        if official is None:
            raise CheckpointError(f"{source}: fp8 scale {scale_key!r} has no weight {weight_key!r} in "
                                  f"{layout.label}; the file is not a ComfyUI fp8_scaled model this loader reads")
        numel = 1
        for n in shapes[scale_key]:
            numel *= n
        out = shapes[weight_key][0] if shapes[weight_key] else 1
        if numel not in (1, out) or len(shapes[weight_key]) != 2:
            raise CheckpointError(f"{source}: fp8 scale {scale_key!r} {list(shapes[scale_key])} does not fit "
                                  f"{weight_key!r} {list(shapes[weight_key])} (a scalar or one value per output "
                                  "channel of a Linear weight is expected)")
        scales[official] = scale_key
    return scales


def _numbered(key: str) -> str:
    return re.sub(r"\.\d+\.", ".#.", key)


def closest_layout(keys: Iterable[str]) -> Optional[Tuple[Layout, List[str]]]:
    """The layout whose marker keys the keys come closest to, with the markers absent; None when no marker is
    even partly there. A marker in another block (`blocks.7.self_attn.q.weight` for `blocks.0...`) counts half:
    that is what a later shard of a model looks like."""
    keys = list(keys)
    best, best_score = None, 0.0
    for prefix in [p for p in WRAPPER_PREFIXES if any(k.startswith(p) for k in keys)] + [""]:
        stripped = {k[len(prefix):] for k in keys}
        numbered = {_numbered(k) for k in stripped}
        for layout in LAYOUTS:
            score = sum(1.0 if k in stripped else 0.5 if _numbered(k) in numbered else 0.0
                        for k in layout.required) / len(layout.required)
            if score > best_score:
                best, best_score = (layout, [k for k in layout.required if k not in stripped]), score
    return best


def _unknown_message(shapes: Shapes, source: str) -> str:
    keys = list(shapes)
    shown = "\n".join(f"  {k} {list(shapes[k])}" for k in keys[:12])
    more = f"\n  ... ({len(keys)} tensors in all)" if len(keys) > 12 else ""
    lines = [f"{source}: no supported model format matches its {len(keys)} tensors. First keys seen:\n{shown}{more}"]
    if looks_like_lora(keys):
        lines.append("It has lora_A/lora_B keys: a LoRA (e.g. the UniAnimate checkpoint) is merged with "
                     "ModelManager.load_lora_v2(path), not loaded with load_models.")
    closest = closest_layout(keys)
    if closest is not None:
        layout, missing = closest
        lines.append(f"Closest format: {layout.label}; missing marker keys: {missing}"
                     + ("" if missing else " (shapes do not fit)"))
    lines.append("Supported formats:\n" + "\n".join(f"  - {s}" for s in supported_formats()))
    return "\n".join(lines)


__all__ = [
    "Layout", "LAYOUTS", "Detection", "detect", "supported_formats", "UnknownFormatError", "ConfigError",
    "dit_config_from", "t5_config_from", "clip_config_from", "vae_config_from", "read_config_json",
    "WRAPPER_PREFIXES", "closest_layout", "looks_like_lora", "is_fp8_marker", "FP8_SCALE_SUFFIX",
]
