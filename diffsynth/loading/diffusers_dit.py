"""Official Wan2.1 DiT keys <-> diffusers `WanTransformer3DModel` keys.

An explicit table of whole dotted segments (no ordered substring replacement: `cross_attn.k` is a prefix of
`cross_attn.k_img`). Shapes are identical in both layouts; nothing is transposed or split.
"""
from __future__ import annotations

import re
from typing import Dict

import torch

# Non-block prefixes, official -> diffusers.
_TOP = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
    "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
    "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
    "img_emb.proj.4": "condition_embedder.image_embedder.norm2",
    "img_emb.emb_pos": "condition_embedder.image_embedder.pos_embed",
    "head.modulation": "scale_shift_table",
    "head.head": "proj_out",
}
# Per-block prefixes (after `blocks.{i}.`), official -> diffusers. Note diffusers calls the affine norm3 `norm2`.
_BLOCK = {
    "modulation": "scale_shift_table",
    "self_attn.q": "attn1.to_q", "self_attn.k": "attn1.to_k", "self_attn.v": "attn1.to_v",
    "self_attn.o": "attn1.to_out.0",
    "self_attn.norm_q": "attn1.norm_q", "self_attn.norm_k": "attn1.norm_k",
    "cross_attn.q": "attn2.to_q", "cross_attn.k": "attn2.to_k", "cross_attn.v": "attn2.to_v",
    "cross_attn.o": "attn2.to_out.0",
    "cross_attn.norm_q": "attn2.norm_q", "cross_attn.norm_k": "attn2.norm_k",
    "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
    "cross_attn.norm_k_img": "attn2.norm_added_k",
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}
_LEAVES = ("weight", "bias")
_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _split_leaf(key: str):
    """'a.b.weight' -> ('a.b', '.weight'); keys that are parameters themselves (modulation) have no leaf."""
    head, _, leaf = key.rpartition(".")
    return (head, "." + leaf) if leaf in _LEAVES else (key, "")


def _rename(key: str, top: Dict[str, str], block: Dict[str, str]) -> str:
    match = _BLOCK_KEY.match(key)
    table, prefix, rest = (block, f"blocks.{match.group(1)}.", match.group(2)) if match else (top, "", key)
    stem, leaf = _split_leaf(rest)
    if stem not in table:
        raise KeyError(f"no diffusers/official mapping for DiT key {key!r}")
    return prefix + table[stem] + leaf


_TOP_INV = {v: k for k, v in _TOP.items()}
_BLOCK_INV = {v: k for k, v in _BLOCK.items()}


def dit_official_to_diffusers(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename official Wan DiT keys to diffusers `WanTransformer3DModel` keys (tensors unchanged)."""
    return {_rename(k, _TOP, _BLOCK): v for k, v in state_dict.items()}


def dit_diffusers_to_official(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename diffusers `WanTransformer3DModel` keys to the official Wan DiT keys (tensors unchanged)."""
    # diffusers may carry `norm_added_q` (never used by Wan2.1); it has no official counterpart.
    return {_rename(k, _TOP_INV, _BLOCK_INV): v for k, v in state_dict.items() if ".norm_added_q." not in k}


__all__ = ["dit_official_to_diffusers", "dit_diffusers_to_official"]
