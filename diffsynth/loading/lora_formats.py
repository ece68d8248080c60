"""LoRA key layouts, as ONE table: each supported layout is one `LoraLayout` entry holding everything the readers
and writers need: the prefixes its module paths carry, the key suffixes of each role (its key pattern), how its
module names map to the official Wan DiT names, and the suffixes it is written with. Reading (`lora.read_lora`),
merging, converting (`convert_lora`) and the trainer's `--pretrained_lora_path` all go through this table; adding a
layout is adding one entry to `LORA_LAYOUTS`.

Layouts (one file holds one layout; a file mixing them is refused, naming both):

- "diffsynth": PEFT factors on official names, `pipe.dit.blocks.0.self_attn.q.lora_A.default.weight` (the
  UniAnimate trainer; prefix `pipe.dit.`, none, or PEFT's `base_model.model.`), file-wide `network_alpha`.
- "comfy": ComfyUI / Kijai / LightX2V, `diffusion_model.blocks.0.self_attn.q.lora_down.weight` / `.lora_up.weight`
  (or `.lora_A/.lora_B`), optional `<module>.alpha`, and full deltas: `<module>.diff` (the module's weight, e.g.
  `blocks.0.norm3.diff`, or a parameter itself such as `blocks.0.modulation.diff`), `<module>.diff_b` (its bias) and
  `<module>.diff_m` (its `modulation`, LightX2V's `blocks.0.diff_m`). Prefix `diffusion_model.`,
  `model.diffusion_model.` or none.
- "diffusers": PEFT factors on diffusers `WanTransformer3DModel` names, `transformer.blocks.0.attn1.to_q.lora_A.weight`
  (with or without `transformer.`), `lora_B.bias` (PEFT `lora_bias=True`), alpha in the safetensors metadata
  (`lora_adapter_metadata`), renamed with the DiT's diffusers <-> official table (`diffusers_dit.py`).
- "kohya": `lora_unet_blocks_0_cross_attn_k.lora_down.weight`, `.lora_up.weight`, `.alpha`: dots replaced by
  underscores, so a name is resolved against the real dotted names (`cross_attn`, `k_img`, `norm_q` hold
  underscores themselves): the model's module and parameter names when merging, the official name table when
  converting.

Roles: factors "A" (down, [r, in]) and "B" (up, [out, r]), "bias" (the bias of lora_B, added to the module's bias
with the factors' scale), a per-module "alpha", and full deltas of the module's weight ("diff"), bias ("diff_b")
and modulation ("diff_m"). Layout-independent: pose-guider tensors (`dwpose_embedding.*`,
`randomref_embedding_pose.*`, any prefix) and file-wide alpha scalars (`network_alpha`, `lora_alpha`, `alpha`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .diffusers_dit import _BLOCK, _BLOCK_INV, _TOP, _TOP_INV, _rename

# What each delta role changes: the module's weight, bias or modulation.
DIFF_ROLES = {"diff": "weight", "diff_b": "bias", "diff_m": "modulation"}
ROLES = ("A", "B", "bias", "alpha", *DIFF_ROLES)
# Layout-independent tensors.
POSE_MARKERS = ("dwpose_embedding", "randomref_embedding_pose")
ALPHA_KEYS = ("network_alpha", "lora_alpha", "alpha")                 # file-wide scalar tensors
# LoRA variants whose update is not B @ A: merging their lora_down/up parts alone would be wrong, so refuse.
UNSUPPORTED_MARKERS = (".hada_w1_a", ".lokr_w1", ".dora_scale", ".lora_mid.", ".lora_magnitude_vector")

_ADAPTER = r"(?:\.(?P<adapter>[^.]+))?"            # PEFT adapter name: `lora_A.default.weight`
# Module names only the diffusers layout has (a LoRA on `blocks.0.ffn.0` is official, on `ffn.net.0.proj` diffusers).
_DIFFUSERS_NAME = re.compile(r"(^|\.)(attn1|attn2|to_q|to_k|to_v|to_out|add_k_proj|add_v_proj|norm_added_k|"
                             r"proj_out|condition_embedder|scale_shift_table)(\.|$)|(^|\.)ffn\.net\.")


# ------------------------------------------------------------------------------------------------- module names
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


def _official(module: str) -> str:
    """Official names stay; a diffusers-only name (`attn1.to_q`) is not one (KeyError)."""
    if _DIFFUSERS_NAME.search(module):
        raise KeyError(module)
    return module


def _underscored(module: str) -> str:
    """kohya names stay underscored here; `resolve` matches them against dotted names later."""
    if "." in module:
        raise KeyError(module)
    return module


# ------------------------------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class LoraLayout:
    """One LoRA layout: everything reading, merging, converting and the trainer need to know about it.

    prefixes: module-path prefixes, tried in order ("" = none); the first that fits is stripped.
    suffixes: role -> regexes of the key after `<prefix><module>.` (the key pattern; `adapter` may be captured).
    to_official / from_official: module-name renames (KeyError when a name has no counterpart).
    write_prefix, write_suffixes: how `layout_key` writes each role (no write_prefix: the layout is read only).
    underscored: module names are the dotted names with every dot replaced (kohya), resolved by `resolve`.
    write_roles: roles written under another role when this layout has no suffix for them (`bias` -> `diff_b`)."""

    name: str
    title: str
    example: str
    prefixes: Tuple[str, ...]
    suffixes: Mapping[str, Tuple[str, ...]]
    to_official: Callable[[str], str] = _official
    from_official: Callable[[str], str] = lambda module: module
    write_prefix: Optional[str] = None
    write_suffixes: Mapping[str, str] = field(default_factory=dict)
    underscored: bool = False
    extra: str = ""                       # for the help text: other keys it holds

    def __post_init__(self):
        groups, alternatives = {}, []
        for role, regexes in self.suffixes.items():
            for regex in regexes:
                n = len(groups)
                groups[f"r{n}"] = role
                alternatives.append(f"(?:{regex.replace('(?P<adapter>', f'(?P<a{n}>')})(?P<r{n}>)")
        prefixes = "|".join(re.escape(p) for p in self.prefixes if p)
        optional = "?" if "" in self.prefixes else ""
        prefix = f"(?P<prefix>{prefixes}){optional}" if prefixes else "(?P<prefix>)"
        regex = re.compile(rf"{prefix}(?P<module>.+?)\.(?:{'|'.join(alternatives)})")
        object.__setattr__(self, "_regex", regex)
        object.__setattr__(self, "_groups", groups)

    @property
    def writable(self) -> bool:
        return self.write_prefix is not None

    def match(self, key: str) -> Optional["LoraKey"]:
        """The key's module (prefix stripped), role and adapter when it follows this layout's pattern and its
        module path does not start with a prefix (names not checked otherwise)."""
        m = self._regex.fullmatch(key)
        if m is None or m.group("module").startswith(PREFIXES):
            return None
        found = m.groupdict()
        group = next(g for g in self._groups if found[g] is not None)
        return LoraKey(m.group("module"), self._groups[group], found.get("a" + group[1:]), self.name,
                       m.group("prefix") or "")

    def official(self, module: str) -> str:
        """The official name of a module path of this layout (KeyError when it has none)."""
        return self.to_official(module)

    def key(self, module: str, role: str) -> str:
        """The tensor name of `role` of official `module` in this layout. KeyError when the layout has no name for
        the module or no suffix for the role; ValueError when the layout is read only."""
        if not self.writable:
            raise ValueError(f"cannot write LoRA layout {self.name!r}; choose one of {WRITABLE_LAYOUTS}")
        if role not in self.write_suffixes:
            raise KeyError(f"the {self.name} layout has no suffix for {role!r}")
        return self.write_prefix + self.from_official(module) + self.write_suffixes[role]


def _diffusers_from_official(module: str) -> str:
    return official_to_diffusers(module)


def _diffusers_to_official(module: str) -> str:
    return diffusers_to_official(module)


_DOWN_UP = {"A": (r"lora_down\.weight",), "B": (r"lora_up\.weight",)}
_DELTAS = {"diff": (r"diff",), "diff_b": (r"diff_b",), "diff_m": (r"diff_m",)}

LORA_LAYOUTS: Tuple[LoraLayout, ...] = (
    LoraLayout(
        name="diffsynth", title="diffsynth/PEFT", example="pipe.dit.blocks.0.self_attn.q.lora_A.default.weight",
        prefixes=("pipe.dit.", "base_model.model.", ""),
        suffixes={"A": (rf"lora_A{_ADAPTER}\.weight",), "B": (rf"lora_B{_ADAPTER}\.weight",),
                  "bias": (rf"lora_B{_ADAPTER}\.bias",), **_DELTAS},
        write_prefix="pipe.dit.",
        write_suffixes={"A": ".lora_A.default.weight", "B": ".lora_B.default.weight",
                        "bias": ".lora_B.default.bias", "diff": ".diff", "diff_b": ".diff_b", "diff_m": ".diff_m"},
        extra="file-wide network_alpha"),
    LoraLayout(
        name="comfy", title="ComfyUI/Kijai/LightX2V", example="diffusion_model.blocks.0.self_attn.q.lora_down.weight",
        prefixes=("model.diffusion_model.", "diffusion_model.", ""),
        suffixes={"A": (r"lora_down\.weight", rf"lora_A{_ADAPTER}\.weight"),
                  "B": (r"lora_up\.weight", rf"lora_B{_ADAPTER}\.weight"),
                  "alpha": (r"alpha",), **_DELTAS},
        write_prefix="diffusion_model.",
        write_suffixes={"A": ".lora_down.weight", "B": ".lora_up.weight", "alpha": ".alpha", "diff": ".diff",
                        "diff_b": ".diff_b", "diff_m": ".diff_m"},
        extra=".lora_up.weight / .alpha, .diff, .diff_b, .diff_m"),
    LoraLayout(
        name="diffusers", title="diffusers", example="transformer.blocks.0.attn1.to_q.lora_A.weight",
        prefixes=("transformer.", ""),
        suffixes={"A": (rf"lora_A{_ADAPTER}\.weight",), "B": (rf"lora_B{_ADAPTER}\.weight",),
                  "bias": (rf"lora_B{_ADAPTER}\.bias",), "diff": (r"diff",), "diff_b": (r"diff_b",)},
        to_official=_diffusers_to_official, from_official=_diffusers_from_official,
        write_prefix="transformer.",
        # diffusers names have no bare block module: a block's diff_m is written as the `diff` of the parameter
        # itself (`blocks.0.scale_shift_table.diff`), which every reader maps back (see `layout_key`).
        write_suffixes={"A": ".lora_A.weight", "B": ".lora_B.weight", "bias": ".lora_B.bias", "diff": ".diff",
                        "diff_b": ".diff_b"},
        extra="lora_B.bias, alpha in the lora_adapter_metadata"),
    LoraLayout(
        name="kohya", title="kohya", example="lora_unet_blocks_0_cross_attn_k.lora_down.weight",
        prefixes=("lora_unet_",), suffixes={**_DOWN_UP, "alpha": (r"alpha",), **_DELTAS},
        to_official=_underscored, underscored=True, extra=".alpha"),
)
# Derived from the table (`_derive`): names, the writable ones, by name, the help text, every prefix.
LAYOUTS: Tuple[str, ...] = ()
WRITABLE_LAYOUTS: Tuple[str, ...] = ()
LAYOUT_BY_NAME: Dict[str, LoraLayout] = {}
LAYOUT_HELP = ""
PREFIXES: Tuple[str, ...] = ()


def _derive() -> None:
    global LAYOUTS, WRITABLE_LAYOUTS, LAYOUT_HELP, PREFIXES
    LAYOUTS = tuple(layout.name for layout in LORA_LAYOUTS)
    WRITABLE_LAYOUTS = tuple(layout.name for layout in LORA_LAYOUTS if layout.writable)
    LAYOUT_BY_NAME.clear()                     # the same dict object, so importers see the change
    LAYOUT_BY_NAME.update({layout.name: layout for layout in LORA_LAYOUTS})
    LAYOUT_HELP = ", ".join(f"{layout.title} ({layout.example}" + (f"; {layout.extra}" if layout.extra else "")
                            + ")" for layout in LORA_LAYOUTS) \
        + ", plus pose-guider tensors (dwpose_embedding.*, randomref_embedding_pose.*)"
    # Every module-path prefix any layout strips (longest first), for callers that only need to drop one.
    PREFIXES = tuple(sorted({p for layout in LORA_LAYOUTS for p in layout.prefixes if p}, key=len, reverse=True))


def register_layout(layout: LoraLayout) -> None:
    """Add a layout to the table (a plug-in, or a test): reading, merging, converting and the trainer then know
    it. Its name must be new."""
    global LORA_LAYOUTS
    if layout.name in LAYOUT_BY_NAME:
        raise ValueError(f"LoRA layout {layout.name!r} exists already")
    LORA_LAYOUTS = LORA_LAYOUTS + (layout,)
    _derive()


def unregister_layout(name: str) -> None:
    """Remove a layout added with `register_layout`."""
    global LORA_LAYOUTS
    LORA_LAYOUTS = tuple(layout for layout in LORA_LAYOUTS if layout.name != name)
    _derive()


_derive()
KOHYA_PREFIX = LAYOUT_BY_NAME["kohya"].prefixes[0]


@dataclass(frozen=True)
class LoraKey:
    """One recognised tensor name: the module path (prefix stripped, as written), its role, the PEFT adapter, the
    layout whose pattern it follows and the prefix it had."""

    module: str
    role: str                       # one of ROLES
    adapter: Optional[str] = None
    layout: str = ""
    prefix: str = ""


def is_pose_key(key: str) -> bool:
    """True for pose-guider tensors (`dwpose_embedding`, `randomref_embedding_pose`), whatever their prefix."""
    return any(marker in key for marker in POSE_MARKERS)


def candidates(key: str) -> Dict[str, LoraKey]:
    """{layout name: parsed key} for every layout whose pattern AND module names the key fits."""
    out = {}
    for layout in LORA_LAYOUTS:
        parsed = layout.match(key)
        if parsed is None:
            continue
        try:
            layout.official(parsed.module)
        except KeyError:
            continue
        out[layout.name] = parsed
    return out


def pattern_matches(key: str) -> Dict[str, LoraKey]:
    """{layout name: parsed key} for every layout whose key pattern the key follows (module names not checked)."""
    return {layout.name: parsed for layout in LORA_LAYOUTS if (parsed := layout.match(key)) is not None}


def looks_like_lora_key(key: str) -> bool:
    """A name that looks like a LoRA tensor (upstream's `lora` test, plus kohya's prefix), recognised or not."""
    return "lora" in key.lower()


def parse_key(key: str) -> Optional[LoraKey]:
    """The structure of a LoRA tensor name in the first layout (table order) it fits, or None."""
    found = candidates(key)
    return next(iter(found.values()), None)


def choose_layout(per_key: Mapping[str, Mapping[str, LoraKey]]) -> Tuple[Optional[str], Optional[Tuple[str, str, str, str]]]:
    """(the one layout every key fits, None): the first in table order when several do. When the keys fit no single
    layout: (None, (layout A, a key of it, layout B, a key that fits B but not A)), A the layout most keys fit."""
    if not per_key:
        return None, None
    counts = {name: sum(name in fits for fits in per_key.values()) for name in LAYOUTS}
    common = [name for name in LAYOUTS if counts[name] == len(per_key)]
    if common:
        return common[0], None
    first = max(LAYOUTS, key=lambda name: counts[name])
    example = next(k for k, fits in per_key.items() if first in fits)
    other_key, fits = next((k, fits) for k, fits in per_key.items() if first not in fits)
    return None, (first, example, next(iter(fits)), other_key)


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
def layout_key(layout: str, module: str, role: str, prefix: bool = True) -> str:
    """The tensor name of `role` ("A", "B", "bias", "diff", "diff_b", "diff_m") of official `module` in `layout`
    (without the layout's prefix when `prefix` is False: the trainer's parameter names).

    diffusers names have no bare block module, so a `diff_m` (the block's modulation) is written as the `diff` of
    the parameter itself (`blocks.0.scale_shift_table.diff`), which every reader here maps back. KeyError when a
    module or role has no name in the layout."""
    if layout not in WRITABLE_LAYOUTS:
        raise ValueError(f"cannot write LoRA layout {layout!r}; choose one of {WRITABLE_LAYOUTS}")
    entry = LAYOUT_BY_NAME[layout]
    if role == "diff_m" and "diff_m" not in entry.write_suffixes:
        module, role = f"{module}.{DIFF_ROLES['diff_m']}", "diff"
    key = entry.key(module, role)
    return key if prefix else key[len(entry.write_prefix):]


def guess_layout(raw_keys: Sequence[str]) -> Optional[str]:
    """The layout of a list of tensor names (None when they fit no single layout)."""
    return choose_layout({k: candidates(k) for k in raw_keys})[0]


__all__ = ["LoraLayout", "LORA_LAYOUTS", "LAYOUT_BY_NAME", "register_layout", "unregister_layout", "layout_key", "LAYOUTS", "WRITABLE_LAYOUTS",
           "LAYOUT_HELP", "PREFIXES", "KOHYA_PREFIX", "DIFF_ROLES", "ROLES", "POSE_MARKERS", "ALPHA_KEYS",
           "LoraKey", "candidates", "pattern_matches", "choose_layout", "parse_key", "strip_prefix", "is_kohya",
           "is_pose_key", "looks_diffusers", "looks_like_lora_key", "guess_layout", "diffusers_to_official",
           "official_to_diffusers", "underscore_index", "official_names", "kohya_block_count",
           "UNSUPPORTED_MARKERS"]
