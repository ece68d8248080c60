"""LoRA key layouts: recognise a key by its structure, map module names to the official Wan DiT names, and write
a parsed LoRA back in one of the layouts.

Layouts read (one file may mix prefixes; the module names of a file are either all official or all diffusers):

- "diffsynth": PEFT factors on official names, `pipe.dit.blocks.0.self_attn.q.lora_A.default.weight` (the
  UniAnimate trainer; prefix `pipe.dit.`, none, or PEFT's `base_model.model.`), file-wide `network_alpha`.
- "comfy": ComfyUI / Kijai / LightX2V, `diffusion_model.blocks.0.self_attn.q.lora_down.weight` / `.lora_up.weight`
  (or `.lora_A/.lora_B`), optional `<module>.alpha`, and full deltas: `<module>.diff` (the module's weight, e.g.
  `blocks.0.norm3.diff`, or a parameter itself such as `blocks.0.modulation.diff`), `<module>.diff_b` (its bias) and
  `<module>.diff_m` (its `modulation`, LightX2V's `blocks.0.diff_m`). Prefix `diffusion_model.` or
  `model.diffusion_model.`.
- "diffusers": PEFT factors on diffusers `WanTransformer3DModel` names, `transformer.blocks.0.attn1.to_q.lora_A.weight`
  (with or without `transformer.`), renamed with the DiT's diffusers <-> official table (`diffusers_dit.py`).
- "kohya": `lora_unet_blocks_0_cross_attn_k.lora_down.weight`, `.lora_up.weight`, `.alpha`: dots replaced by
  underscores, so a name is resolved against the real dotted names (`cross_attn`, `k_img`, `norm_q` hold
  underscores themselves): the model's module and parameter names when merging, the official name table when
  converting.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple

from .diffusers_dit import _BLOCK, _BLOCK_INV, _TOP, _TOP_INV, _rename

LAYOUTS = ("diffsynth", "comfy", "diffusers", "kohya")
WRITABLE_LAYOUTS = ("diffsynth", "comfy", "diffusers")
LAYOUT_HELP = (
    "diffsynth/PEFT (pipe.dit.blocks.0.self_attn.q.lora_A.default.weight), "
    "ComfyUI/Kijai/LightX2V (diffusion_model.blocks.0.self_attn.q.lora_down.weight / .lora_up.weight / .alpha, "
    ".diff, .diff_b, .diff_m), "
    "diffusers (transformer.blocks.0.attn1.to_q.lora_A.weight), "
    "kohya (lora_unet_blocks_0_cross_attn_k.lora_down.weight), "
    "plus pose-guider tensors (dwpose_embedding.*, randomref_embedding_pose.*)")

# Stripped from a module path (the first that matches): trainer, ComfyUI, PEFT wrapper and diffusers prefixes.
PREFIXES = ("pipe.dit.", "model.diffusion_model.", "diffusion_model.", "base_model.model.", "transformer.")
KOHYA_PREFIX = "lora_unet_"
# What each role of a key is: factors "A" (down, [r, in]) and "B" (up, [out, r]), a per-module "alpha", and full
# deltas of the module's weight ("diff"), bias ("diff_b") and modulation ("diff_m").
DIFF_ROLES = {"diff": "weight", "diff_b": "bias", "diff_m": "modulation"}
_PEFT = re.compile(r"(?P<module>.+)\.lora_(?P<role>[AB])(?:\.(?P<adapter>[^.]+))?\.weight")
_DOWN_UP = re.compile(r"(?P<module>.+)\.lora_(?P<role>down|up)\.weight")
_SUFFIX = re.compile(r"(?P<module>.+)\.(?P<role>alpha|diff|diff_b|diff_m)")
# LoRA variants whose update is not B @ A: merging their lora_down/up parts alone would be wrong, so refuse.
UNSUPPORTED_MARKERS = (".hada_w1_a", ".lokr_w1", ".dora_scale", ".lora_mid.")
# Module names only the diffusers layout has (a LoRA on `blocks.0.ffn.0` is official, on `ffn.net.0.proj` diffusers).
_DIFFUSERS_NAME = re.compile(r"(^|\.)(attn1|attn2|to_q|to_k|to_v|to_out|add_k_proj|add_v_proj|norm_added_k|"
                             r"proj_out|condition_embedder|scale_shift_table)(\.|$)|(^|\.)ffn\.net\.")


@dataclass(frozen=True)
class LoraKey:
    """One recognised tensor name: the module path as written (prefix kept), its role, and the PEFT adapter."""

    module: str
    role: str                       # "A", "B", "alpha", "diff", "diff_b", "diff_m"
    adapter: Optional[str] = None


def parse_key(key: str) -> Optional[LoraKey]:
    """The structure of a LoRA tensor name, or None when it is not a factor, alpha or delta."""
    m = _PEFT.fullmatch(key)
    if m:
        return LoraKey(m.group("module"), m.group("role"), m.group("adapter"))
    m = _DOWN_UP.fullmatch(key)
    if m:
        return LoraKey(m.group("module"), "A" if m.group("role") == "down" else "B")
    m = _SUFFIX.fullmatch(key)
    if m:
        return LoraKey(m.group("module"), m.group("role"))
    return None


def strip_prefix(path: str) -> str:
    """Drop one known prefix (`pipe.dit.`, `diffusion_model.`, `transformer.`, ...) from a module path."""
    for prefix in PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


def is_kohya(path: str) -> bool:
    return path.startswith(KOHYA_PREFIX)


def looks_diffusers(paths: Iterable[str]) -> bool:
    """True when module paths (prefixes stripped) use diffusers names (`attn1.to_q`, `ffn.net.0.proj`, ...)."""
    return any(_DIFFUSERS_NAME.search(p) for p in paths)


def guess_layout(raw_modules: Iterable[str], roles: Iterable[str]) -> str:
    """The layout label of a file from its raw module paths and roles (for messages and logs)."""
    raw_modules, roles = list(raw_modules), set(roles)
    if any(is_kohya(p) for p in raw_modules):
        return "kohya"
    if looks_diffusers(strip_prefix(p) for p in raw_modules):
        return "diffusers"
    if any(p.startswith(("diffusion_model.", "model.diffusion_model.")) for p in raw_modules) \
            or roles & {"diff", "diff_b", "diff_m"}:
        return "comfy"
    return "diffsynth"


# ------------------------------------------------------------------------------------------------- diffusers names
def diffusers_to_official(module: str) -> str:
    """A diffusers module path (`blocks.0.attn1.to_q`, `proj_out`, `blocks.0.scale_shift_table`) -> the official
    one; a bare block (`blocks.0`, the owner of a `diff_m`) is the same in both. KeyError when unknown."""
    if re.fullmatch(r"blocks\.\d+", module):
        return module
    return _rename(module, _TOP_INV, _BLOCK_INV)


def official_to_diffusers(module: str) -> str:
    """The inverse of `diffusers_to_official`. KeyError for a name diffusers does not have."""
    if re.fullmatch(r"blocks\.\d+", module):
        return module
    return _rename(module, _TOP, _BLOCK)


# ------------------------------------------------------------------------------------------------- kohya names
def underscore_index(names: Iterable[str]) -> Tuple[Dict[str, str], Dict[str, List[str]]]:
    """`{name with "." -> "_": name}` for dotted names, and the underscore forms that several names share."""
    index: Dict[str, str] = {}
    clashes: Dict[str, List[str]] = {}
    for name in names:
        flat = name.replace(".", "_")
        if flat in index and index[flat] != name:
            clashes.setdefault(flat, [index[flat]]).append(name)
        index[flat] = name
    return index, clashes


def official_names(num_blocks: int) -> List[str]:
    """Every official DiT module/parameter path that can carry a LoRA or delta, for `num_blocks` blocks (from the
    diffusers <-> official table): used to resolve kohya names without a model."""
    names = list(_TOP) + ["head", ""]
    for i in range(num_blocks):
        names.append(f"blocks.{i}")
        names.extend(f"blocks.{i}.{stem}" for stem in _BLOCK)
    return [n for n in names if n]


def kohya_block_count(flat_names: Iterable[str]) -> int:
    """1 + the highest block index in kohya names (`blocks_12_...` -> 13)."""
    indices = [int(m.group(1)) for n in flat_names if (m := re.match(r"blocks_(\d+)(?:_|$)", n))]
    return max(indices) + 1 if indices else 0


# ------------------------------------------------------------------------------------------------- writing
_WRITE_PREFIX = {"diffsynth": "pipe.dit.", "comfy": "diffusion_model.", "diffusers": "transformer."}
_FACTOR_SUFFIX = {"diffsynth": (".lora_A.default.weight", ".lora_B.default.weight"),
                  "comfy": (".lora_down.weight", ".lora_up.weight"),
                  "diffusers": (".lora_A.weight", ".lora_B.weight")}


def layout_key(layout: str, module: str, role: str) -> str:
    """The tensor name of `role` ("A", "B", "diff", "diff_b", "diff_m") of official `module` in `layout`.

    diffusers names have no bare block module, so a `diff_m` (the block's modulation) is written as the `diff` of
    the parameter itself (`blocks.0.scale_shift_table.diff`), which every reader here maps back. KeyError when a
    module has no diffusers name."""
    if layout not in _WRITE_PREFIX:
        raise ValueError(f"cannot write LoRA layout {layout!r}; choose one of {WRITABLE_LAYOUTS}")
    if layout == "diffusers":
        if role == "diff_m":
            module, role = f"{module}.modulation", "diff"
        module = official_to_diffusers(module)
    if role in ("A", "B"):
        return _WRITE_PREFIX[layout] + module + _FACTOR_SUFFIX[layout][role == "B"]
    return f"{_WRITE_PREFIX[layout]}{module}.{role}"


__all__ = ["layout_key", "LAYOUTS", "WRITABLE_LAYOUTS", "LAYOUT_HELP", "PREFIXES", "KOHYA_PREFIX", "DIFF_ROLES", "LoraKey",
           "parse_key", "strip_prefix", "is_kohya", "looks_diffusers", "guess_layout", "diffusers_to_official",
           "official_to_diffusers", "underscore_index", "official_names", "kohya_block_count",
           "UNSUPPORTED_MARKERS"]
