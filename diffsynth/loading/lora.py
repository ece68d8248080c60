"""LoRA checkpoints: read the factors, deltas, alphas and pose-guider tensors of any supported layout, and merge
them into the DiT (several LoRAs at once, each with its strength), restorably.

Layouts: the table in `lora_formats.py` (`LORA_LAYOUTS`, one entry per layout: the UniAnimate trainer's PEFT names
`pipe.dit.blocks.{i}.self_attn.q.lora_A.default.weight` plus the pose guider's `dwpose_embedding.*` /
`randomref_embedding_pose.*`, ComfyUI/Kijai/LightX2V, diffusers, kohya). A file holds one layout; a file mixing
layouts is refused. DeepSpeed exports (`zero_to_fp32 --safe_serialization`) spread the names, and every frozen
weight, over several shards; a shard may hold only `lora_A` tensors.

Merge of one weight W, `W += strength * (scale * B @ A)` plus full deltas (`strength * diff`) and lora_B biases
(`strength * scale * b`), with `scale = alpha / r` when alpha is known and 1 otherwise (upstream always uses 1):

- precision "upstream" (default), bf16/fp16 weights: upstream's own operations, in the weight's dtype on
  `upstream_device` (CUDA when the weight is on the CPU and CUDA is available): `W = W + factor * mm(B, A)` per
  LoRA, rounded at each step like `GeneralLoRAFromPeft.load`, so the merged weights are bit-identical to
  upstream's on the same device and library.
- precision "float32": every update of a weight summed in fp32, W rounded to its dtype once (not upstream's
  numbers).
- fp32/fp64 weights: in place in their own dtype (`addmm_`) either way; an fp8 `Fp8Linear` is dequantised,
  updated in fp32 and requantised with new scales.

Alpha comes from the argument, a kohya `<module>.alpha`, a file-wide scalar tensor (`network_alpha`, which our
trainer saves and upstream's loader skips since the key holds no 'lora'; or `lora_alpha`/`alpha`), safetensors
metadata, or diffusers' `lora_adapter_metadata` (`lora_alpha`, `alpha_pattern`). An alpha or strength of NaN/Inf is
refused, a stored alpha of 0 or below too.

Speed: the merge works on the weight's device (upstream precision: upstream's device), in place, through one
reused buffer per device and dtype, so no weight-sized temporary is allocated per layer (allocation and page
faults, not FLOPs, dominate a per-layer temporary).

`LoraCheckpoint.digest` identifies the content (a SHA-256 over the normalised names, dtypes, shapes and bytes of
the tensors read), so the manager can tell a LoRA merged twice under another path or name.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch

from .files import Checkpoint, CheckpointError, PathSpec, all_finite, describe, non_finite_error, resolve_paths
from . import lora_formats
from .lora_formats import (ALPHA_KEYS, DIFF_ROLES, KOHYA_PREFIX, LAYOUT_BY_NAME, POSE_MARKERS, PREFIXES,
                           UNSUPPORTED_MARKERS, LoraKey, candidates, choose_layout, is_pose_key, kohya_block_count,
                           layout_key, looks_like_lora_key, official_names, pattern_matches, strip_prefix,
                           underscore_index)

logger = logging.getLogger(__name__)

# Kept for callers: every prefix a layout of the table strips (`lora_formats.PREFIXES`).
LORA_PREFIXES = PREFIXES
ALPHA_METADATA = ("network_alpha", "lora_alpha", "alpha", "ss_network_alpha")
# diffusers' `save_lora_adapter` / `save_lora_weights` keep the PEFT LoraConfig as JSON under this metadata key
# (`lora_alpha`, `r`, `alpha_pattern`, ...; pipeline-level files prefix each entry with `transformer.`).
DIFFUSERS_METADATA = "lora_adapter_metadata"
# `X.safetensors` converted by `python -m diffsynth.convert_lora` keeps its pose guider in `X.pose_guider.safetensors`.
POSE_SIDECAR_SUFFIX = ".pose_guider.safetensors"
MERGE_PRECISIONS = ("upstream", "float32")


class LoraError(CheckpointError):
    """A LoRA checkpoint that is incomplete, of an unknown layout, or does not fit the model."""


@dataclass
class LoraModule:
    """What a LoRA holds for one module: factors (W [out, in] += scale * B [out, r] @ A [r, in]), the bias of lora_B
    (bias += scale * bias), an optional per-module alpha, and full deltas of the module's weight (`diff`), bias
    (`diff_b`) and modulation (`diff_m`)."""

    A: Optional[torch.Tensor] = None
    B: Optional[torch.Tensor] = None
    bias: Optional[torch.Tensor] = None
    alpha: Optional[float] = None
    diff: Optional[torch.Tensor] = None
    diff_b: Optional[torch.Tensor] = None
    diff_m: Optional[torch.Tensor] = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]

    @property
    def has_factors(self) -> bool:
        return self.A is not None or self.B is not None

    def deltas(self) -> Dict[str, torch.Tensor]:
        """{"diff" | "diff_b" | "diff_m": tensor} for the deltas present."""
        return {role: getattr(self, role) for role in DIFF_ROLES if getattr(self, role) is not None}


@dataclass
class LoraCheckpoint:
    modules: Dict[str, LoraModule] = field(default_factory=dict)    # official module path -> factors/deltas
    pose: Dict[str, torch.Tensor] = field(default_factory=dict)     # pose-guider tensors, names unchanged
    alpha: Optional[float] = None                                    # file-wide alpha, when stored
    alpha_source: str = ""                                           # where the file-wide alpha was read
    adapters: Set[str] = field(default_factory=set)                  # PEFT adapter names seen ("default")
    ignored: int = 0                                                 # other tensors (frozen weights, ...)
    unmerged: List[str] = field(default_factory=list)                # LoRA-like tensors no layout merges (named)
    files: Tuple[Path, ...] = ()                                     # the files read, resolved (symlinks too)
    digest: str = ""                                                 # content hash of the tensors read
    layout: str = ""                                                 # "diffsynth", "comfy", "diffusers", "kohya"
    underscored: Set[str] = field(default_factory=set)               # kohya names still to resolve (`resolve`)
    looks_like_base: bool = False                                    # other tensors include a DiT weight

    def alpha_of(self, module: LoraModule, network_alpha: Optional[float] = None, name: str = "",
                 source: str = "LoRA") -> Optional[float]:
        """The alpha that applies to `module`: the argument, else its own, else the file's; None when unknown.
        A stored alpha that is not a positive finite number is refused, naming it (LoraError)."""
        if network_alpha is not None:
            return check_alpha(network_alpha, "network_alpha")
        if module.alpha is not None:
            return check_alpha(module.alpha, f"{source}: the alpha stored for {name or 'a module'}", stored=True)
        if self.alpha is not None:
            return check_alpha(self.alpha, f"{source}: its {self.alpha_source or 'stored alpha'}", stored=True)
        return None

    def scale_of(self, module: LoraModule, network_alpha: Optional[float] = None, name: str = "",
                 source: str = "LoRA") -> float:
        """alpha / r, or 1 when alpha is unknown (upstream's behaviour)."""
        alpha = self.alpha_of(module, network_alpha, name, source)
        return alpha / module.rank if alpha is not None else 1.0


def check_alpha(value, what: str, stored: bool = False) -> float:
    """`value` as a float when it is a positive finite number; LoraError (ValueError for an argument) naming `what`
    otherwise. NaN or Inf would merge NaN or an all-black video; 0 merges nothing (kohya's trainer reads a stored 0
    as alpha = rank); a negative alpha inverts the LoRA."""
    try:
        alpha = float(value)
    except (TypeError, ValueError):
        alpha = math.nan
    if math.isfinite(alpha) and alpha > 0:
        return alpha
    hint = " (kohya's trainer reads a stored alpha of 0 as alpha = rank)" if alpha == 0 and stored else ""
    message = (f"{what} is {value!r}: an alpha must be a positive finite number{hint}; "
               + ("pass network_alpha= (convert_lora: --network-alpha) to choose the scale" if stored
                  else "give the training lora_alpha"))
    raise (LoraError if stored else ValueError)(message)


def check_strength(strength, source: str) -> float:
    """A merge strength: NaN/Inf refused (ValueError, naming the LoRA and the value); 0 (merges nothing) and a
    negative strength (subtracts the LoRA) are allowed with a warning, since they can be meant."""
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"LoRA strength for {source} must be a number, got {strength!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"LoRA strength for {source} must be a finite number, got {strength}")
    if value == 0:
        logger.warning("%s: strength 0 merges nothing (its pose-guider tensors are still collected)", source)
    elif value < 0:
        logger.warning("%s: negative strength %g subtracts the LoRA's update", source, value)
    return value


def strip_lora_prefix(path: str) -> str:
    """Drop a layout prefix (`pipe.dit.`, `diffusion_model.`, `transformer.`, ...) from a LoRA module path."""
    return strip_prefix(path)


def _scalar(tensor: torch.Tensor, key: str) -> float:
    if tensor.numel() != 1:
        raise LoraError(f"{key!r} should be a scalar alpha, has shape {tuple(tensor.shape)}")
    return float(tensor.reshape(()).item())


def _tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    """SHA-256 of one tensor under its normalised name; order-free combination happens in `read_lora`."""
    h = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    h.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.digest()


def _file_alpha(values: Dict[str, float], spec: PathSpec) -> Optional[float]:
    """The one file-wide alpha among the scalar keys read (they must agree)."""
    if len(set(values.values())) > 1:
        raise LoraError(f"{describe(spec)} stores different alphas {values}; pass network_alpha= to choose")
    return next(iter(values.values()), None)


def _metadata_number(value, what: str, spec: PathSpec) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise LoraError(f"{describe(spec)}: {what} is {value!r}, not a number; pass network_alpha= to choose "
                        "the scale") from None


def _metadata_alpha(metadata: Dict[str, str], spec: PathSpec) -> Tuple[Optional[float], str]:
    """(alpha, where) from the plain metadata entries (`network_alpha`, `ss_network_alpha`, ...)."""
    for name in ALPHA_METADATA:
        if name in metadata:
            return _metadata_number(metadata[name], f"metadata {name!r}", spec), f"metadata {name!r}"
    return None, ""


def _diffusers_config(metadata: Dict[str, str], spec: PathSpec) -> Dict[str, object]:
    """The PEFT LoraConfig diffusers stores as JSON (`lora_adapter_metadata`), unprefixed; {} when absent."""
    raw = metadata.get(DIFFUSERS_METADATA)
    if raw is None:
        return {}
    try:
        config = json.loads(raw)
    except ValueError as error:
        raise LoraError(f"{describe(spec)}: its {DIFFUSERS_METADATA!r} metadata is not JSON ({error})") from None
    if not isinstance(config, dict):
        raise LoraError(f"{describe(spec)}: its {DIFFUSERS_METADATA!r} metadata is not a JSON object")
    # save_lora_weights (pipeline level) prefixes each entry with the component: `transformer.lora_alpha`.
    prefixed = {k.split(".", 1)[1]: v for k, v in config.items() if k.startswith("transformer.")}
    return prefixed or config


def _apply_diffusers_config(out: "LoraCheckpoint", config: Dict[str, object], raw_modules: Dict[str, str],
                            spec: PathSpec) -> None:
    """The alpha of a diffusers file: `lora_alpha`, with `alpha_pattern` per module (PEFT's matching rule on the
    module names as written). DoRA and rsLoRA files are refused (their update is not scale * B @ A with
    scale = alpha / r)."""
    for flag in ("use_dora", "use_rslora"):
        if config.get(flag):
            raise LoraError(f"{describe(spec)} was saved with {flag}=true ({DIFFUSERS_METADATA}); only plain LoRA "
                            "(scale = lora_alpha / r) can be merged")
    if "lora_alpha" in config and out.alpha is None:
        out.alpha = _metadata_number(config["lora_alpha"], f"{DIFFUSERS_METADATA} lora_alpha", spec)
        out.alpha_source = f"{DIFFUSERS_METADATA} lora_alpha"
    patterns = config.get("alpha_pattern") or {}
    if not isinstance(patterns, dict):
        raise LoraError(f"{describe(spec)}: {DIFFUSERS_METADATA} alpha_pattern is not a JSON object")
    for official, written in raw_modules.items():
        for pattern, value in patterns.items():
            if re.match(rf"(.*\.)?({pattern})$", written) and official in out.modules:
                if out.modules[official].alpha is None:
                    out.modules[official].alpha = _metadata_number(value, f"alpha_pattern {pattern!r}", spec)
                break


def _list(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------------- reading
def _unknown_layout(spec: PathSpec, keys: List[str]) -> LoraError:
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} tensors)" if len(keys) > 5 else "")
    return LoraError(f"{describe(spec)} is not a LoRA layout this loader knows: no tensor is a LoRA factor, delta, "
                     f"alpha or pose-guider tensor (first keys: {shown or 'none'}). Supported layouts: "
                     f"{lora_formats.LAYOUT_HELP}.")


def _check_finite(ckpt: Checkpoint, tensors: Dict[str, torch.Tensor]) -> None:
    """NonFiniteTensorError naming the first tensor with NaN/Inf. One reduction per dtype over all tensors at once:
    a LoRA holds hundreds of small tensors, and one parallel reduction each costs more in thread wake-ups than in
    arithmetic (seconds on a busy machine). Only a failing group is searched tensor by tensor."""
    groups: Dict[torch.dtype, List[str]] = {}
    for key, tensor in tensors.items():
        if tensor.is_floating_point():
            groups.setdefault(tensor.dtype, []).append(key)
    for keys in groups.values():
        if all_finite(torch.cat([tensors[k].reshape(-1) for k in keys])):
            continue
        for key in keys:
            if not all_finite(tensors[key]):
                raise non_finite_error(ckpt.infos[key].file, key, tensors[key], tensors[key])


def classify_keys(keys: Sequence[str], spec: PathSpec) -> Tuple[Optional[str], Dict[str, LoraKey], List[str],
                                                                 List[str]]:
    """Sort the tensor names of a file by the layout table: (layout, {key: parsed key in that layout}, keys to
    read as they are (pose guider, file-wide alpha), LoRA-like keys no layout defines). Raises LoraError for
    LoHa/LoKr/DoRA tensors, names of a layout with no Wan DiT counterpart, and a file mixing layouts."""
    unsupported = [k for k in keys if any(m in k for m in UNSUPPORTED_MARKERS)]
    if unsupported:
        raise LoraError(f"{describe(spec)} holds LoHa/LoKr/DoRA/LoCon tensors ({_list(unsupported, 3)}), whose "
                        "update is not B @ A; only plain LoRA factors and .diff deltas can be merged")
    plain, fits, unnamed, unknown = [], {}, {}, []
    for key in keys:
        if is_pose_key(key) or key in ALPHA_KEYS:
            plain.append(key)
        elif found := candidates(key):
            fits[key] = found
        elif found := pattern_matches(key):
            unnamed[key] = next(iter(found))
        elif looks_like_lora_key(key):
            unknown.append(key)
    if unnamed:
        layout = max(set(unnamed.values()), key=list(unnamed.values()).count)
        raise LoraError(f"{describe(spec)} uses {LAYOUT_BY_NAME[layout].title} key names, but these have no Wan DiT "
                        f"counterpart: {_list(unnamed)}. Is it a LoRA for another model?")
    layout, mixed = choose_layout(fits)
    if mixed:
        first, first_key, second, second_key = mixed
        raise LoraError(f"{describe(spec)} mixes LoRA layouts: {LAYOUT_BY_NAME[first].title} (e.g. {first_key!r}) "
                        f"and {LAYOUT_BY_NAME[second].title} (e.g. {second_key!r}); a file must hold one layout. "
                        "Convert each part with python -m diffsynth.convert_lora and load them as separate LoRAs")
    return layout, {k: found[layout] for k, found in fits.items()}, plain, unknown


def read_lora(spec: PathSpec, progress: bool = False, required: bool = True) -> LoraCheckpoint:
    """Read LoRA factors, deltas, alphas and pose-guider tensors from one file or a list of shards, recognising
    the layout by the key structure (`lora_formats.LORA_LAYOUTS`); every other tensor (a DeepSpeed export also
    holds the frozen DiT, T5 and VAE) is skipped without being read. Every tensor read is checked for NaN/Inf
    (`NonFiniteTensorError`). LoRA-like tensors that no layout defines are named in a warning. `required=False`:
    a file without any LoRA or pose tensor gives an empty checkpoint instead of an error."""
    out = LoraCheckpoint()
    digests: List[bytes] = []
    file_alphas: Dict[str, float] = {}
    with Checkpoint(spec) as ckpt:
        out.files = tuple(p.resolve() for p in ckpt.paths)
        keys = list(ckpt.infos)
        layout, parsed, plain, out.unmerged = classify_keys(keys, spec)
        wanted = plain + list(parsed)
        out.ignored = len(keys) - len(wanted) - len(out.unmerged)
        out.looks_like_base = any(k.endswith("self_attn.q.weight") for k in keys if k not in parsed)
        entry = LAYOUT_BY_NAME[layout] if layout else None
        raw_modules: Dict[str, str] = {}
        seen: Dict[Tuple[str, str], str] = {}
        tensors = dict(ckpt.iter_tensors(wanted, progress=progress, desc="reading LoRA", check_finite=False))
        _check_finite(ckpt, tensors)         # before anything is parsed further or merged
        for key in wanted:
            tensor = tensors.pop(key)
            if is_pose_key(key):
                out.pose[key] = tensor
                name = next(iter(pose_guider_state_dict({key: tensor})))
            elif key in ALPHA_KEYS:
                file_alphas[key] = _scalar(tensor, key)
                name = "alpha"
            else:
                p = parsed[key]
                module = entry.official(p.module)
                raw_modules[module] = p.module
                if (module, p.role) in seen:
                    raise LoraError(f"{describe(spec)} holds the {p.role} of module {module} twice: "
                                    f"{seen[module, p.role]!r} and {key!r}")
                seen[module, p.role] = key
                target = out.modules.setdefault(module, LoraModule())
                setattr(target, p.role, _scalar(tensor, key) if p.role == "alpha" else tensor)
                if p.adapter:
                    out.adapters.add(p.adapter)
                if entry.underscored:
                    out.underscored.add(module)
                name = f"{module}.{p.role}"
            digests.append(_tensor_digest(name, tensor))
        out.alpha = _file_alpha(file_alphas, spec)
        if out.alpha is not None:
            out.alpha_source = f"{next(iter(file_alphas))} tensor"
        else:
            out.alpha, out.alpha_source = _metadata_alpha(ckpt.metadata, spec)
        _apply_diffusers_config(out, _diffusers_config(ckpt.metadata, spec), raw_modules, spec)
    # Sorted: the same tensors give the same digest whatever the file order or the key prefixes.
    out.digest = hashlib.sha256(b"".join(sorted(digests))).hexdigest()
    # Alpha-only entries are modules without factors or deltas: nothing to merge; named, never silently dropped.
    alone = sorted(k for k, m in out.modules.items() if not (m.has_factors or m.deltas() or m.bias is not None))
    if alone:
        out.unmerged.extend(f"{k}.alpha" for k in alone)
    out.modules = {k: m for k, m in out.modules.items() if k not in alone}
    out.underscored &= set(out.modules)
    out.layout = layout or ""
    if out.unmerged:
        logger.warning("%s: %d LoRA-like tensors are not merged (no layout defines them, or they belong to no "
                       "factor): %s", describe(spec), len(out.unmerged), _list(out.unmerged, 10))
    if len(out.adapters) > 1:
        raise LoraError(f"{describe(spec)} holds several PEFT adapters {sorted(out.adapters)}; merge one at a time")
    if not out.modules and not out.pose and required:
        raise _unknown_layout(spec, keys)
    if not out.modules:
        out.layout = "pose guider"
    return out


def check_complete(lora: LoraCheckpoint, source: str) -> None:
    """Every module with factors has both A and B, and a lora_B bias has its factors."""
    incomplete = {k: ("lora_A (down)" if m.A is None else "lora_B (up)") for k, m in lora.modules.items()
                  if (m.has_factors or m.bias is not None) and (m.A is None or m.B is None)}
    if incomplete:
        missing = sorted(set(incomplete.values()))
        raise LoraError(f"{source}: {len(incomplete)} modules miss {' / '.join(missing)} (e.g. {_list(incomplete)}). "
                        "A DeepSpeed export stores lora_A and lora_B in different shards: pass all shards as one "
                        "list to load_lora_v2.")


def resolve(lora: LoraCheckpoint, names: Iterable[str], source: str) -> Dict[str, LoraModule]:
    """The modules under official names: kohya underscore names (`blocks_0_cross_attn_k_img`) are matched against
    `names`, the dotted module and parameter names of the model (or of the official table)."""
    if not lora.underscored:
        return lora.modules
    index, clashes = underscore_index(names)
    out: Dict[str, LoraModule] = {}
    unknown, ambiguous = [], []
    for name, module in lora.modules.items():
        if name not in lora.underscored:
            target = name
        elif name in clashes:
            ambiguous.append(f"{KOHYA_PREFIX}{name} ({' or '.join(clashes[name])})")
            continue
        elif name in index:
            target = index[name]
        else:
            unknown.append(KOHYA_PREFIX + name)
            continue
        if target in out:
            raise LoraError(f"{source}: module {target} appears twice (as {KOHYA_PREFIX}{name} and another name)")
        out[target] = module
    if ambiguous:
        raise LoraError(f"{source}: kohya names that fit several modules: {_list(ambiguous, 3)}")
    if unknown:
        raise LoraError(f"{source}: {len(unknown)} kohya LoRA names match no module of the DiT (e.g. "
                        f"{_list(unknown)}). Is the LoRA for another model?")
    return out


def resolve_without_model(lora: LoraCheckpoint, source: str) -> Dict[str, LoraModule]:
    """`resolve` against the official Wan DiT names (for converting a kohya file without loading a DiT)."""
    return resolve(lora, official_names(kohya_block_count(lora.underscored)), source)


# ------------------------------------------------------------------------------------------------- training
@dataclass
class TrainingLora:
    """A LoRA file read for training (`--pretrained_lora_path`): the factors under the parameter names of a PEFT
    LoRA-wrapped DiT, the pose-guider tensors, the stored alphas and where each was read."""

    state: Dict[str, torch.Tensor]                 # `blocks.0.self_attn.q.lora_A.default.weight` -> tensor
    pose: Dict[str, torch.Tensor]                  # PoseGuider names
    alphas: Dict[float, str]                       # stored alpha -> where it was read
    layout: str
    looks_like_base: bool                          # no LoRA, but a DiT weight: the base model was given


def read_training_lora(spec: PathSpec, names: Iterable[str], source: str) -> TrainingLora:
    """Read a LoRA of any layout of the table (and the pose-guider file beside it) for the trainer: factors under
    the diffsynth layout's names without its prefix (PEFT's parameter names, adapter "default"), kohya names
    resolved against `names` (the DiT's module names). Full deltas and lora_B biases have no trainable counterpart
    in a LoRA: they are refused by name (LoraError), as are unusable stored alphas."""
    to_read, sidecars = with_pose_sidecars(spec)
    for sidecar in sidecars:
        logger.info("%s: also reading the pose guider beside it, %s", source, sidecar)
    lora = read_lora(to_read, required=False)
    state: Dict[str, torch.Tensor] = {}
    alphas: Dict[float, str] = {}
    untrainable: List[str] = []
    for name, module in sorted(resolve(lora, names, source).items()):
        for role in ("A", "B"):
            if getattr(module, role) is not None:
                state[layout_key("diffsynth", name, role, prefix=False)] = getattr(module, role)
        if module.has_factors:
            alpha = lora.alpha_of(module, None, name, source)
            if alpha is not None:
                alphas.setdefault(alpha, lora.alpha_source if module.alpha is None else f"{name}.alpha")
        untrainable += [f"{name}.{role}" for role in module.deltas()]
        if module.bias is not None:
            untrainable.append(f"{name}.lora_B.bias")
    if untrainable:
        raise LoraError(f"{source} holds {len(untrainable)} tensors a LoRA cannot be trained from (full deltas or "
                        f"lora_B biases: {_list(untrainable)}); merge it into the DiT instead (load_lora_v2)")
    return TrainingLora(state, pose_guider_state_dict(lora.pose), alphas, lora.layout, lora.looks_like_base)


# ------------------------------------------------------------------------------------------------- base weights
class BaseWeights:
    """The original values of the weights a LoRA merge changed, kept the first time each one changes, so `restore`
    puts the base model back bit-exactly.

    A CPU weight is kept by reference (no copy): its merged value goes to new memory and the original tensor stays
    untouched here. A weight on another device is copied to CPU. Either way the cost is CPU memory equal to the
    touched weights as stored (bf16: 2 bytes per parameter, ~1 GB for the block Linears of a 537M-parameter DiT,
    ~26 GB for a 14B DiT with a LoRA on every block Linear; fp8: 1 byte per parameter plus fp32 scales)."""

    def __init__(self):
        self._saved: Dict[int, Tuple[object, Tuple[torch.Tensor, ...]]] = {}

    @staticmethod
    def tensors(owner) -> Tuple[torch.Tensor, ...]:
        """The tensors of `owner` a merge changes: a Parameter itself, or an Fp8Linear's weight and scale."""
        from ..models.fp8 import Fp8Linear

        return (owner.weight, owner.scale) if isinstance(owner, Fp8Linear) else (owner,)

    def __contains__(self, owner) -> bool:
        return id(owner) in self._saved

    def keep(self, owner, originals: Tuple[torch.Tensor, ...]) -> None:
        """Record `originals` (tensors the caller no longer changes) as the base value of `owner`."""
        if id(owner) not in self._saved:
            self._saved[id(owner)] = (owner, originals)

    def save(self, owner) -> None:
        """Keep a CPU copy of the current value of `owner` (for a weight that is changed in place)."""
        if id(owner) not in self._saved:
            self.keep(owner, tuple(t.detach().to("cpu", copy=True) for t in self.tensors(owner)))

    @torch.no_grad()
    def restore(self) -> int:
        """Put every kept original back (same dtype: bit-exact) and forget them. Returns the number restored."""
        for owner, saved in self._saved.values():
            for tensor, original in zip(self.tensors(owner), saved):
                if original.device == tensor.device and original.dtype == tensor.dtype:
                    tensor.data = original
                else:                     # moved since (e.g. the DiT went to the GPU): copy into place
                    tensor.data.copy_(original)
        count = len(self._saved)
        self._saved.clear()
        return count

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, saved in self._saved.values() for t in saved)

    def __len__(self) -> int:
        return len(self._saved)


# ------------------------------------------------------------------------------------------------- merging
@dataclass
class _Target:
    """One weight to change: its owner (a Parameter, or an Fp8Linear for its fp8 weight) and the updates, in the
    order of the LoRAs."""

    name: str
    owner: object
    low_rank: List[Tuple[torch.Tensor, torch.Tensor, float]] = field(default_factory=list)   # (B, A, factor)
    full: List[Tuple[torch.Tensor, float]] = field(default_factory=list)                     # (delta, factor)


def _factors_fit(a: torch.Tensor, b: torch.Tensor, shape: Tuple[int, ...]) -> bool:
    """B [out, r(, 1...)] @ A [r, in(, k...)] fits W [out, in(, k...)] (Linear, or a conv through its kernel)."""
    if a.ndim < 2 or b.ndim != a.ndim or len(shape) != a.ndim or any(n != 1 for n in b.shape[2:]):
        return False
    return b.shape[1] == a.shape[0] and b.shape[0] == shape[0] and tuple(a.shape[1:]) == tuple(shape[1:])


def _delta_param(role: str, module: str, params: Dict[str, torch.nn.Parameter]) -> str:
    """The parameter a delta changes: `.diff` the module's weight (or the module path itself when it names a
    parameter, e.g. `blocks.0.modulation.diff`), `.diff_b` its bias, `.diff_m` its modulation."""
    if role == "diff" and f"{module}.weight" not in params and module in params:
        return module
    return f"{module}.{DIFF_ROLES[role]}" if module else DIFF_ROLES[role]


def plan_merge(models: Sequence[torch.nn.Module], loras: Sequence[Tuple[LoraCheckpoint, float, Optional[float], str]]
               ) -> List[_Target]:
    """Check every LoRA against every model and list the weights to change, grouped per weight (several LoRAs on
    one weight are applied to it together). Raises LoraError before anything changes."""
    from ..models.fp8 import Fp8Linear

    targets: Dict[int, _Target] = {}
    for model in models:
        params = dict(model.named_parameters())
        modules = dict(model.named_modules())
        fp8 = {f"{n}.weight": m for n, m in modules.items() if isinstance(m, Fp8Linear)}
        for lora, strength, network_alpha, source in loras:
            check_complete(lora, source)
            unknown, unknown_deltas, bad_shape = [], [], []
            resolved = resolve(lora, list(modules) + list(params), source)

            def target(pname: str) -> _Target:
                owner = fp8.get(pname, params[pname])
                return targets.setdefault(id(owner), _Target(pname, owner))

            for name, module in sorted(resolved.items()):
                deltas = dict(module.deltas())
                if module.has_factors:
                    weight = params.get(f"{name}.weight")
                    if weight is None:
                        unknown.append(name)
                    elif not _factors_fit(module.A, module.B, tuple(weight.shape)):
                        bad_shape.append(f"{name}: A {tuple(module.A.shape)}, B {tuple(module.B.shape)} vs W "
                                         f"{tuple(weight.shape)}")
                    else:
                        factor = strength * lora.scale_of(module, network_alpha, name, source)
                        target(f"{name}.weight").low_rank.append((module.B, module.A, factor))
                        if module.bias is not None:       # lora_B's bias: bias += strength * scale * b
                            deltas["bias"] = module.bias
                for role, delta in deltas.items():
                    pname = f"{name}.bias" if role == "bias" else _delta_param(role, name, params)
                    if pname not in params:
                        unknown_deltas.append(f"{name}.{role} ({pname})")
                    elif tuple(delta.shape) != tuple(params[pname].shape):
                        bad_shape.append(f"{name}.{role} {tuple(delta.shape)} vs {pname} {tuple(params[pname].shape)}")
                    else:
                        factor = strength * (lora.scale_of(module, network_alpha, name, source) if role == "bias"
                                             else 1.0)
                        target(pname).full.append((delta, factor))
            if unknown:
                raise LoraError(f"{source}: {len(set(unknown))} LoRA modules are not Linear layers of the DiT "
                                f"(e.g. {_list(set(unknown))}); layouts understood: {lora_formats.LAYOUT_HELP}")
            if unknown_deltas:
                raise LoraError(f"{source}: {len(unknown_deltas)} full deltas change no parameter of the DiT "
                                f"(e.g. {_list(unknown_deltas)}). Is the LoRA for another model?")
            if bad_shape:
                raise LoraError(f"{source}: LoRA tensors do not fit the DiT weights: {'; '.join(bad_shape[:3])}"
                                + (f" ... ({len(bad_shape)} in all)" if len(bad_shape) > 3 else "")
                                + ". Is the LoRA for another model size?")
    return list(targets.values())


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32, or the weight's own dtype when it is wider (float64)."""
    return dtype if dtype.is_floating_point and dtype.itemsize > 4 else torch.float32


def upstream_device(device: torch.device) -> torch.device:
    """Where upstream computes a merge: CUDA when the weight is on the CPU and CUDA is available, else the weight's
    device (`GeneralLoRAFromPeft.fetch_device_and_dtype`)."""
    device = torch.device(device)
    return torch.device("cuda") if device.type == "cpu" and torch.cuda.is_available() else device


def _like_upstream(owner, precision: str) -> bool:
    """True when the weight is merged with upstream's operations: precision "upstream" and a weight narrower than
    fp32 (bf16, fp16). fp32/fp64 weights are merged in their own dtype either way (`addmm`), fp8 layers in fp32."""
    from ..models.fp8 import Fp8Linear

    return (precision == "upstream" and not isinstance(owner, Fp8Linear) and owner.dtype.is_floating_point
            and owner.dtype.itemsize < 4)


def _where(t: _Target, precision: str) -> Tuple[torch.dtype, torch.device]:
    """The dtype and device a target's updates are computed in."""
    from ..models.fp8 import Fp8Linear

    if isinstance(t.owner, Fp8Linear):
        return torch.float32, t.owner.weight.device
    if _like_upstream(t.owner, precision):
        return t.owner.dtype, upstream_device(t.owner.device)
    return _compute_dtype(t.owner.dtype), t.owner.device


def _cast_factors(targets: Sequence[_Target], precision: str = "float32") -> Dict[int, torch.Tensor]:
    """Every update tensor in its weight's compute dtype and device, `{id(tensor): cast}`, cast with one `cat` and
    one `.to` per (dtype, device) group: hundreds of small casts cost more in thread wake-ups (and, to a GPU, in
    transfers) than in copying. The cast of each element is the same as a `.to` of its own tensor."""
    groups: Dict[Tuple[torch.dtype, torch.device], Dict[int, torch.Tensor]] = {}
    for t in targets:
        dtype, device = _where(t, precision)
        tensors = [x for b, a, _ in t.low_rank for x in (b, a)]
        if _like_upstream(t.owner, precision):
            tensors += [d for d, _ in t.full]
        for tensor in tensors:
            if tensor.dtype != dtype or tensor.device != device:
                groups.setdefault((dtype, device), {})[id(tensor)] = tensor
    out: Dict[int, torch.Tensor] = {}
    for (dtype, device), tensors in groups.items():
        flat = torch.cat([f.reshape(-1) for f in tensors.values()]).to(device, dtype)
        for (key, tensor), part in zip(tensors.items(), flat.split([f.numel() for f in tensors.values()])):
            out[key] = part.view(tensor.shape)
    return out


def _accumulate(w: torch.Tensor, target: _Target, source: Optional[torch.Tensor] = None,
                cast: Optional[Dict[int, torch.Tensor]] = None) -> None:
    """fp32 merge: w (the weight in its compute dtype) <- (`source` if given, else w) + every update of `target`;
    the first update reads `source` directly, which saves a copy pass. `cast`: factors already in w's dtype and
    device."""
    device, dtype = w.device, w.dtype
    rows = w.view(w.shape[0], -1)
    cast = cast or {}
    for b, a, factor in target.low_rank:
        b = cast.get(id(b), b).to(device, dtype).reshape(b.shape[0], -1)
        a = cast.get(id(a), a).to(device, dtype).reshape(a.shape[0], -1)
        if source is not None:
            torch.addmm(source.reshape(rows.shape), b, a, alpha=factor, out=rows)
            source = None
        else:
            rows.addmm_(b, a, alpha=factor)
    if source is not None:
        w.copy_(source)
    for delta, factor in target.full:
        w.add_(delta.to(device, dtype), alpha=factor)


def _merge_like_upstream(weight: torch.Tensor, out: torch.Tensor, target: _Target, cast: Dict[int, torch.Tensor],
                         scratch: torch.Tensor) -> None:
    """out <- upstream's merge of `weight` (out may be `weight` itself): for each update, in the weight's dtype on
    `upstream_device`, `product = factor * torch.mm(B, A)` (the factors cast to that dtype; the multiplication
    skipped when factor is 1, which changes no bit) and `W = W + product`, rounded at every step as upstream's
    `GeneralLoRAFromPeft.load` does; full deltas follow the same rule (`W = W + factor * delta`). `scratch`: a
    buffer of the weight's dtype on the compute device holding the product (the same kernels as upstream's
    out-of-place operations, without a weight-sized allocation per layer)."""
    device, dtype = scratch.device, weight.dtype
    current = weight.to(device)                       # a copy when the merge runs on another device
    writable = current is not weight or out is weight
    rows = weight.shape[0]

    def add(product: torch.Tensor) -> None:
        nonlocal current, writable
        if writable:
            current.add_(product)
        else:                                         # keep `weight` unchanged: first result goes to `out`
            torch.add(current, product, out=out)
            current, writable = out, True

    for b, a, factor in target.low_rank:
        up = cast.get(id(b), b).to(device, dtype).reshape(b.shape[0], -1)
        down = cast.get(id(a), a).to(device, dtype).reshape(a.shape[0], -1)
        product = torch.mm(up, down, out=scratch[: rows * down.shape[1]].view(rows, -1))
        if factor != 1.0:
            product.mul_(factor)
        add(product.view(weight.shape))
    for delta, factor in target.full:
        delta = cast.get(id(delta), delta).to(device, dtype)
        if factor != 1.0:
            delta = torch.mul(delta, factor, out=scratch[: delta.numel()].view(delta.shape))
        add(delta)
    if current is not out:
        out.copy_(current)


@torch.no_grad()
def apply_merge(targets: Sequence[_Target], backup: Optional[BaseWeights] = None, precision: str = "upstream"
                ) -> None:
    """Change the planned weights (see `plan_merge`). With `backup`, the original of each weight is kept first:
    a CPU weight by reference (its merged value goes to a new tensor, so the original is never copied), others by
    a CPU copy.

    precision "upstream" (default): bf16/fp16 weights are merged with upstream's operations and roundings
    (`_merge_like_upstream`); "float32": every update of a weight is summed in fp32 and the weight rounded once.
    fp32/fp64 weights are updated in place in their own dtype (`addmm_`) and fp8 layers in fp32 either way."""
    from ..models.fp8 import Fp8Linear

    if precision not in MERGE_PRECISIONS:
        raise ValueError(f"merge_precision must be one of {MERGE_PRECISIONS}, got {precision!r}")
    # One scratch buffer per (device, dtype) for weights stored narrower than their compute dtype, or for upstream
    # products: no weight-sized temporary per layer.
    need: Dict[Tuple[torch.device, torch.dtype], int] = {}
    for t in targets:
        if isinstance(t.owner, Fp8Linear) or (_in_place(t.owner) and not _like_upstream(t.owner, precision)):
            continue
        dtype, device = _where(t, precision)
        need[device, dtype] = max(need.get((device, dtype), 0), t.owner.numel())
    scratch = {key: torch.empty(n, dtype=key[1], device=key[0]) for key, n in need.items()}
    cast = _cast_factors(targets, precision)
    for t in targets:
        if isinstance(t.owner, Fp8Linear):
            # set_weight replaces weight and scale rather than writing into them: keep the originals by
            # reference on CPU (a copy only when they live on another device).
            keep = backup is not None and t.owner not in backup
            original = tuple(x.data.to("cpu") for x in BaseWeights.tensors(t.owner)) if keep else ()
            w = t.owner.dequantized_weight(torch.float32)
            _accumulate(w, t, cast=cast)
            t.owner.set_weight(w)          # requantised with the layer's granularity (new scales)
            if keep:
                backup.keep(t.owner, original)
            continue
        weight = t.owner.data
        swap = backup is not None and weight.device.type == "cpu" and t.owner not in backup
        if backup is not None and not swap:
            backup.save(t.owner)
        out = torch.empty_like(weight, memory_format=torch.contiguous_format) if swap else weight
        dtype, device = _where(t, precision)
        if _like_upstream(t.owner, precision):
            _merge_like_upstream(weight, out, t, cast, scratch[device, dtype])
        elif _in_place(weight):
            _accumulate(out, t, source=weight if swap else None, cast=cast)
        else:
            w = scratch[device, dtype][: weight.numel()].view(weight.shape)
            w.copy_(weight)
            _accumulate(w, t, cast=cast)
            out.copy_(w)
        if swap:
            backup.keep(t.owner, (weight,))
            t.owner.data = out


def _in_place(weight: torch.Tensor) -> bool:
    return weight.dtype == _compute_dtype(weight.dtype) and weight.is_contiguous()


def merge_loras(models: Iterable[torch.nn.Module], loras: Sequence[Tuple[LoraCheckpoint, float, Optional[float], str]],
                backup: Optional[BaseWeights] = None, precision: str = "upstream") -> int:
    """Merge several LoRAs, `(checkpoint, strength, network_alpha, source)` each, into `models` (normally the one
    DiT). Everything is checked before the first weight changes, so a failing check leaves the models as they
    were. `precision`: see `apply_merge`. Returns the number of weights changed."""
    if precision not in MERGE_PRECISIONS:
        raise ValueError(f"merge_precision must be one of {MERGE_PRECISIONS}, got {precision!r}")
    targets = plan_merge(list(models), loras)
    apply_merge(targets, backup, precision)
    return len(targets)


def merge_lora(models: Iterable[torch.nn.Module], lora: LoraCheckpoint, strength: float = 1.0,
               network_alpha: Optional[float] = None, source: str = "LoRA",
               backup: Optional[BaseWeights] = None, precision: str = "upstream") -> int:
    """Merge one LoRA into `models` (see `merge_loras`). Returns the number of weights changed."""
    return merge_loras(models, [(lora, strength, network_alpha, source)], backup, precision)


# ------------------------------------------------------------------------------------------------- pose guider
def pose_guider_state_dict(collected: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Pose tensors under any prefix (`dwpose_embedding.0.weight`, `pipe.dwpose_embedding...`, ...) -> the
    `PoseGuider` names (everything before the marker dropped)."""
    out = {}
    for key, value in collected.items():
        starts = [key.find(m) for m in POSE_MARKERS if m in key]
        if starts:
            out[key[min(starts):]] = value
    return out


def is_pose_sidecar(path: Union[str, Path]) -> bool:
    return str(path).endswith(POSE_SIDECAR_SUFFIX)


def pose_sidecar_path(path: Union[str, Path]) -> Path:
    """`X.safetensors` (or `X.ckpt`, ...) -> `X.pose_guider.safetensors`, beside it."""
    path = Path(path)
    return path.with_name((path.name[: -len(path.suffix)] if path.suffix else path.name) + POSE_SIDECAR_SUFFIX)


def with_pose_sidecars(spec: PathSpec) -> Tuple[PathSpec, List[Path]]:
    """`spec` plus the pose-guider files that sit beside its files (`X.pose_guider.safetensors` next to
    `X.safetensors`) and are not part of it already; returns (spec to read, sidecars added)."""
    paths = resolve_paths(spec)
    present = {p.resolve() for p in paths}
    added = []
    for p in paths:
        sidecar = pose_sidecar_path(p)
        if not is_pose_sidecar(p) and sidecar.is_file() and sidecar.resolve() not in present:
            added.append(sidecar)
            present.add(sidecar.resolve())
    return (paths + added, added) if added else (spec, [])


__all__ = [
    "LoraModule", "LoraCheckpoint", "LoraError", "BaseWeights", "read_lora", "merge_lora", "merge_loras",
    "plan_merge", "apply_merge", "check_complete", "resolve", "resolve_without_model", "pose_guider_state_dict",
    "is_pose_key", "strip_lora_prefix", "pose_sidecar_path", "is_pose_sidecar", "with_pose_sidecars",
    "POSE_MARKERS", "LORA_PREFIXES", "ALPHA_KEYS", "ALPHA_METADATA", "POSE_SIDECAR_SUFFIX", "MERGE_PRECISIONS",
    "DIFFUSERS_METADATA", "check_alpha", "check_strength", "classify_keys", "upstream_device", "TrainingLora", "read_training_lora",
]
