"""Official Wan2.1 VAE keys <-> diffusers `AutoencoderKLWan` keys (Wan2.1 layout only, not Wan2.2's residual VAE).

Keys are parsed into (place, layer, inner name) and renamed by explicit tables; nothing is a substring replace.
Shapes are identical in both layouts. The only structural difference is the decoder: official keys number its
layers flat (`decoder.upsamples.0..14`), diffusers groups them per stage (`up_blocks.{g}.resnets.{r}` followed by
`up_blocks.{g}.upsamplers.0`). The grouping is read from the keys themselves (a stage ends at each resample layer),
so any `num_res_blocks` works.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Tuple

import torch

# Whole-key or prefix renames outside the repeated blocks, official -> diffusers.
_TOP = {
    "conv1": "quant_conv",
    "conv2": "post_quant_conv",
    "encoder.conv1": "encoder.conv_in",
    "decoder.conv1": "decoder.conv_in",
    "encoder.head.0": "encoder.norm_out",
    "encoder.head.2": "encoder.conv_out",
    "decoder.head.0": "decoder.norm_out",
    "decoder.head.2": "decoder.conv_out",
}
# Middle block layer index -> diffusers place.
_MIDDLE = {"0": "mid_block.resnets.0", "1": "mid_block.attentions.0", "2": "mid_block.resnets.1"}
# Names inside one layer (residual block, attention block or resample), official -> diffusers.
_INNER = {
    "residual.0": "norm1",
    "residual.2": "conv1",
    "residual.3": "norm2",
    "residual.6": "conv2",
    "shortcut": "conv_shortcut",
    "resample.1": "resample.1",
    "time_conv": "time_conv",
    "norm": "norm",
    "to_qkv": "to_qkv",
    "proj": "proj",
}
_LEAVES = ("weight", "bias", "gamma")

_TOP_INV = {v: k for k, v in _TOP.items()}
_MIDDLE_INV = {v: k for k, v in _MIDDLE.items()}
_INNER_INV = {v: k for k, v in _INNER.items()}

_OFF_MIDDLE = re.compile(r"^(encoder|decoder)\.middle\.(\d+)\.(.+)$")
_OFF_DOWN = re.compile(r"^encoder\.downsamples\.(\d+)\.(.+)$")
_OFF_UP = re.compile(r"^decoder\.upsamples\.(\d+)\.(.+)$")
_DIF_MIDDLE = re.compile(r"^(encoder|decoder)\.(mid_block\.(?:resnets|attentions)\.\d+)\.(.+)$")
_DIF_DOWN = re.compile(r"^encoder\.down_blocks\.(\d+)\.(.+)$")
_DIF_UP = re.compile(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0)\.(.+)$")


def _rename_leafed(name: str, table: Dict[str, str], key: str) -> str:
    """'residual.2.weight' -> table['residual.2'] + '.weight'."""
    stem, _, leaf = name.rpartition(".")
    if leaf not in _LEAVES or stem not in table:
        raise KeyError(f"no official/diffusers mapping for VAE key {key!r}")
    return f"{table[stem]}.{leaf}"


def _decoder_layout_official(keys: Iterable[str]) -> Dict[int, str]:
    """Flat decoder layer index -> diffusers place, splitting stages after each resample layer."""
    layers = sorted({int(m.group(1)) for m in map(_OFF_UP.match, keys) if m})
    resamples = {int(m.group(1)) for m in map(_OFF_UP.match, keys) if m and m.group(2).startswith("resample.")}
    places, stage, index = {}, 0, 0
    for i in layers:
        if i in resamples:
            places[i] = f"up_blocks.{stage}.upsamplers.0"
            stage, index = stage + 1, 0
        else:
            places[i] = f"up_blocks.{stage}.resnets.{index}"
            index += 1
    return places


def _decoder_layout_diffusers(keys: Iterable[str]) -> Dict[Tuple[int, str], int]:
    """(stage, 'resnets.r' | 'upsamplers.0') -> flat official decoder layer index."""
    stages: Dict[int, List[int]] = {}
    upsamplers = set()
    for m in map(_DIF_UP.match, keys):
        if not m:
            continue
        stage = int(m.group(1))
        if m.group(3) is None:
            upsamplers.add(stage)
        else:
            stages.setdefault(stage, []).append(int(m.group(3)))
    flat, offset = {}, 0
    for stage in sorted(set(stages) | upsamplers):
        num_resnets = max(stages.get(stage, [-1])) + 1
        for r in range(num_resnets):
            flat[(stage, f"resnets.{r}")] = offset + r
        offset += num_resnets
        if stage in upsamplers:
            flat[(stage, "upsamplers.0")] = offset
            offset += 1
    return flat


def vae_official_to_diffusers(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Official `Wan2.1_VAE.pth` keys -> `AutoencoderKLWan` keys (same tensors)."""
    up_places = _decoder_layout_official(state_dict.keys())
    out = {}
    for key, value in state_dict.items():
        if m := _OFF_MIDDLE.match(key):
            new = f"{m.group(1)}.{_MIDDLE[m.group(2)]}.{_rename_leafed(m.group(3), _INNER, key)}"
        elif m := _OFF_DOWN.match(key):
            new = f"encoder.down_blocks.{m.group(1)}.{_rename_leafed(m.group(2), _INNER, key)}"
        elif m := _OFF_UP.match(key):
            new = f"decoder.{up_places[int(m.group(1))]}.{_rename_leafed(m.group(2), _INNER, key)}"
        else:
            new = _rename_leafed(key, _TOP, key)
        out[new] = value
    return out


def vae_diffusers_to_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """`AutoencoderKLWan` keys -> official `Wan2.1_VAE.pth` keys (same tensors)."""
    up_index = _decoder_layout_diffusers(state_dict.keys())
    out = {}
    for key, value in state_dict.items():
        if m := _DIF_MIDDLE.match(key):
            if m.group(2) not in _MIDDLE_INV:
                raise KeyError(f"no official/diffusers mapping for VAE key {key!r}")
            new = f"{m.group(1)}.middle.{_MIDDLE_INV[m.group(2)]}.{_rename_leafed(m.group(3), _INNER_INV, key)}"
        elif m := _DIF_DOWN.match(key):
            new = f"encoder.downsamples.{m.group(1)}.{_rename_leafed(m.group(2), _INNER_INV, key)}"
        elif m := _DIF_UP.match(key):
            place = m.group(2) if m.group(3) is None else f"resnets.{m.group(3)}"
            new = f"decoder.upsamples.{up_index[(int(m.group(1)), place)]}.{_rename_leafed(m.group(4), _INNER_INV, key)}"
        else:
            new = _rename_leafed(key, _TOP_INV, key)
        out[new] = value
    return out


def is_diffusers_vae_state_dict(keys: Iterable[str]) -> bool:
    """True for a diffusers `AutoencoderKLWan` state dict (the official file has `conv1.weight` instead)."""
    keys = set(keys)
    return {"quant_conv.weight", "encoder.conv_in.weight", "decoder.conv_in.weight"} <= keys


__all__ = ["vae_official_to_diffusers", "vae_diffusers_to_official", "is_diffusers_vae_state_dict"]
