"""Official Wan2.1 umT5 / CLIP-visual keys <-> transformers `UMT5EncoderModel` / `CLIPVisionModel` keys.

Pure functions on state dicts (no model needed). Explicit tables of whole dotted segments; unknown keys raise, so a
wrong file never maps silently to half a model.

umT5: a one-to-one rename, except that transformers stores the token embedding twice (`shared.weight` and the tied
`encoder.embed_tokens.weight`).
CLIP: `to_qkv` is split in 3 along dim 0 into q/k/v_proj (layout (3, heads, head_dim) on both sides); the class and
position embeddings lose their leading singleton axes; `head [dim, out]` is `visual_projection.weight [out, dim]`
(transposed; only in `CLIPVisionModelWithProjection`).
"""
from __future__ import annotations

import re
from typing import Dict, Mapping, Optional, Tuple

import torch

StateDict = Dict[str, torch.Tensor]

# ----------------------------------------------------------------------------------------------- umT5

_T5_TOP = {  # official -> transformers
    "token_embedding.weight": "shared.weight",
    "norm.weight": "encoder.final_layer_norm.weight",
}
_T5_BLOCK = {  # after `blocks.{i}.` -> after `encoder.block.{i}.`
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_T5_TOP_INV = {v: k for k, v in _T5_TOP.items()}
_T5_BLOCK_INV = {v: k for k, v in _T5_BLOCK.items()}
_T5_TIED = "encoder.embed_tokens.weight"

_OFFICIAL_T5_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_HF_T5_BLOCK = re.compile(r"encoder\.block\.(\d+)\.(.+)")


def _unknown(keys, what: str) -> ValueError:
    keys = sorted(keys)
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")
    return ValueError(f"not {what} keys: {shown}")


def _rename_t5(state_dict: Mapping[str, torch.Tensor], top: Mapping[str, str], block: re.Pattern,
               block_table: Mapping[str, str], block_stem: str, what: str,
               tied: Optional[Tuple[str, str]] = None) -> StateDict:
    """One direction of the umT5 rename: whole keys by `top`; keys `block` matches (block index, name inside the
    block) by `block_table`, under `{block_stem}.{index}.`; `tied` = (key, target): a second copy of a tensor, used
    for target only when no `top` key fills it. Unknown keys raise (ValueError naming `what`)."""
    out, unknown = {}, []
    for key, value in state_dict.items():
        if key in top:
            out[top[key]] = value
            continue
        if tied is not None and key == tied[0]:
            out.setdefault(tied[1], value)
            continue
        m = block.fullmatch(key)
        if m and m.group(2) in block_table:
            out[f"{block_stem}.{m.group(1)}.{block_table[m.group(2)]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise _unknown(unknown, what)
    return out


def t5_official_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Official umT5 encoder keys (`blocks.{i}.attn.q.weight`, ...) -> `UMT5EncoderModel` keys.

    The token embedding is written to both `shared.weight` and `encoder.embed_tokens.weight` (same tensor), which is
    what `UMT5EncoderModel.state_dict()` lists.
    """
    out = _rename_t5(state_dict, _T5_TOP, _OFFICIAL_T5_BLOCK, _T5_BLOCK, "encoder.block", "official umT5 encoder")
    if "shared.weight" in out:
        out[_T5_TIED] = out["shared.weight"]
    return out


def t5_transformers_to_official(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """`UMT5EncoderModel` (or the encoder half of `UMT5Model` / `T5EncoderModel`-style) keys -> official keys.

    `shared.weight` and `encoder.embed_tokens.weight` are the same (tied) tensor; either one is accepted.
    """
    return _rename_t5(state_dict, _T5_TOP_INV, _HF_T5_BLOCK, _T5_BLOCK_INV, "blocks", "transformers umT5 encoder",
                      tied=(_T5_TIED, "token_embedding.weight"))


# ----------------------------------------------------------------------------------------------- CLIP visual

_CLIP_TOP = {  # official (after `visual.`) -> transformers (after `vision_model.`); same shapes
    "patch_embedding.weight": "embeddings.patch_embedding.weight",
    "pre_norm.weight": "pre_layrnorm.weight",  # (sic) transformers spelling
    "pre_norm.bias": "pre_layrnorm.bias",
    "post_norm.weight": "post_layernorm.weight",
    "post_norm.bias": "post_layernorm.bias",
}
_CLIP_BLOCK = {  # after `transformer.{i}.` -> after `encoder.layers.{i}.`; to_qkv is handled apart
    "norm1.weight": "layer_norm1.weight", "norm1.bias": "layer_norm1.bias",
    "attn.proj.weight": "self_attn.out_proj.weight", "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "layer_norm2.weight", "norm2.bias": "layer_norm2.bias",
    "mlp.0.weight": "mlp.fc1.weight", "mlp.0.bias": "mlp.fc1.bias",
    "mlp.2.weight": "mlp.fc2.weight", "mlp.2.bias": "mlp.fc2.bias",
}
_CLIP_TOP_INV = {v: k for k, v in _CLIP_TOP.items()}
_CLIP_BLOCK_INV = {v: k for k, v in _CLIP_BLOCK.items()}

_OFFICIAL_CLIP_BLOCK = re.compile(r"transformer\.(\d+)\.(.+)")
_HF_CLIP_BLOCK = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
_HF_QKV = re.compile(r"self_attn\.([qkv])_proj\.(weight|bias)")
_HF = "vision_model."


def clip_visual_official_to_transformers(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Official CLIP visual keys -> `CLIPVisionModel(WithProjection)` keys (`vision_model.` prefix).

    Accepts the whole official CLIP file: keys with the `visual.` prefix are mapped; `textual.*` and `log_scale`
    (the XLM-R text tower, unused by Wan) are skipped. `head` becomes `visual_projection.weight` (transposed), which
    only `CLIPVisionModelWithProjection` has. Returned tensors are views/copies as needed, never the inputs mutated.
    """
    out, unknown = {}, []
    for full_key, value in state_dict.items():
        if full_key.startswith("textual.") or full_key == "log_scale":
            continue
        if not full_key.startswith("visual."):
            unknown.append(full_key)
            continue
        key = full_key[len("visual."):]
        if key in _CLIP_TOP:
            out[_HF + _CLIP_TOP[key]] = value
        elif key == "cls_embedding":  # [1, 1, dim] -> [dim]
            out[_HF + "embeddings.class_embedding"] = value.reshape(value.shape[-1])
        elif key == "pos_embedding":  # [1, tokens, dim] -> [tokens, dim]
            out[_HF + "embeddings.position_embedding.weight"] = value.reshape(value.shape[-2], value.shape[-1])
        elif key == "head":  # [dim, out] -> [out, dim]
            out["visual_projection.weight"] = value.t().contiguous()
        else:
            m = _OFFICIAL_CLIP_BLOCK.fullmatch(key)
            if m is None:
                unknown.append(full_key)
                continue
            prefix, rest = f"{_HF}encoder.layers.{m.group(1)}.", m.group(2)
            if rest in ("attn.to_qkv.weight", "attn.to_qkv.bias"):
                kind = rest.rsplit(".", 1)[1]
                for name, part in zip("qkv", value.chunk(3, dim=0)):
                    out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
            elif rest in _CLIP_BLOCK:
                out[prefix + _CLIP_BLOCK[rest]] = value
            else:
                unknown.append(full_key)
    if unknown:
        raise _unknown(unknown, "official CLIP visual")
    return out


def clip_visual_transformers_to_official(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """`CLIPVisionModel(WithProjection)` keys -> official keys with the `visual.` prefix.

    q/k/v_proj are concatenated back into `to_qkv` (all three must be present for each layer); `visual_projection`
    becomes `head` (transposed) when present.
    """
    out, unknown = {}, []
    qkv: Dict[tuple, Dict[str, torch.Tensor]] = {}
    for full_key, value in state_dict.items():
        if full_key == "visual_projection.weight":
            out["visual.head"] = value.t().contiguous()
            continue
        if not full_key.startswith(_HF):
            unknown.append(full_key)
            continue
        key = full_key[len(_HF):]
        if key in _CLIP_TOP_INV:
            out["visual." + _CLIP_TOP_INV[key]] = value
        elif key == "embeddings.class_embedding":
            out["visual.cls_embedding"] = value.reshape(1, 1, -1)
        elif key == "embeddings.position_embedding.weight":
            out["visual.pos_embedding"] = value.unsqueeze(0)
        elif key == "embeddings.position_ids":  # buffer kept by some transformers versions
            continue
        else:
            m = _HF_CLIP_BLOCK.fullmatch(key)
            if m is None:
                unknown.append(full_key)
                continue
            layer, rest = m.group(1), m.group(2)
            mq = _HF_QKV.fullmatch(rest)
            if mq:
                qkv.setdefault((layer, mq.group(2)), {})[mq.group(1)] = value
            elif rest in _CLIP_BLOCK_INV:
                out[f"visual.transformer.{layer}.{_CLIP_BLOCK_INV[rest]}"] = value
            else:
                unknown.append(full_key)
    if unknown:
        raise _unknown(unknown, "transformers CLIP vision")
    for (layer, kind), parts in sorted(qkv.items()):
        if set(parts) != {"q", "k", "v"}:
            raise ValueError(f"layer {layer}: {kind} of q/k/v_proj incomplete (have {sorted(parts)})")
        out[f"visual.transformer.{layer}.attn.to_qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


__all__ = [
    "t5_official_to_transformers", "t5_transformers_to_official",
    "clip_visual_official_to_transformers", "clip_visual_transformers_to_official",
]
