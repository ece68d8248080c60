"""LoRA checkpoints: read the factors, deltas, alphas and pose-guider tensors of any supported layout
(`read_lora`), put kohya names on the DiT's modules (`resolve`), and read a LoRA for training
(`read_training_lora`). Merging them into the DiT: `lora_merge.py`.

Layouts: the table in `lora_formats.py` (`LORA_LAYOUTS`, one entry per layout: the UniAnimate trainer's PEFT names
`pipe.dit.blocks.{i}.self_attn.q.lora_A.default.weight` plus the pose guider's `dwpose_embedding.*` /
`randomref_embedding_pose.*`, ComfyUI/Kijai/LightX2V, diffusers, kohya). A file holds one layout; a file mixing
layouts is refused. DeepSpeed exports (`zero_to_fp32 --safe_serialization`) spread the names, and every frozen
weight, over several shards; a shard may hold only `lora_A` tensors.

Alpha comes from the argument, or from the file (`lora_alpha.py`: a kohya `<module>.alpha`, a file-wide scalar
tensor, safetensors metadata, or diffusers' `lora_adapter_metadata`). An alpha or strength of NaN/Inf is refused, a
stored alpha of 0 or below too (`lora_checkpoint.check_alpha`).

`LoraCheckpoint.digest` identifies the content (a SHA-256 over the normalised names, dtypes, shapes and bytes of
the tensors read), so the manager can tell a LoRA merged twice under another path or name.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from .files import Checkpoint, PathSpec, describe
from .tensors import all_finite, non_finite_error
from . import lora_formats
from .lora_alpha import read_alphas, scalar
from .lora_checkpoint import LoraCheckpoint, LoraError, LoraModule, listed
# check_alpha and pose_sidecar_path are imported from here by callers outside the package.
from .lora_checkpoint import check_alpha
from .lora_formats import (ALPHA_KEYS, KOHYA_PREFIX, LAYOUT_BY_NAME, PREFIXES, UNSUPPORTED_MARKERS, LoraKey,
                           candidates, choose_layout, is_pose_key, kohya_block_count, layout_key, looks_like_lora_key,
                           official_names, pattern_matches, strip_prefix, underscore_index)
from .lora_pose import pose_guider_state_dict, pose_sidecar_path, with_pose_sidecars

logger = logging.getLogger(__name__)

# Kept for callers: every prefix a layout of the table strips (`lora_formats.PREFIXES`).
LORA_PREFIXES = PREFIXES


def strip_lora_prefix(path: str) -> str:
    """Drop a layout prefix (`pipe.dit.`, `diffusion_model.`, `transformer.`, ...) from a LoRA module path."""
    return strip_prefix(path)


def _tensor_digest(name: str, tensor: torch.Tensor) -> bytes:
    """SHA-256 of one tensor under its normalised name; order-free combination happens in `read_lora`."""
    h = hashlib.sha256(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
    h.update(memoryview(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()))
    return h.digest()


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
        raise LoraError(f"{describe(spec)} holds LoHa/LoKr/DoRA/LoCon tensors ({listed(unsupported, 3)}), whose "
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
                        f"counterpart: {listed(unnamed)}. Is it a LoRA for another model?")
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
                file_alphas[key] = scalar(tensor, key)
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
                setattr(target, p.role, scalar(tensor, key) if p.role == "alpha" else tensor)
                if p.adapter:
                    out.adapters.add(p.adapter)
                if entry.underscored:
                    out.underscored.add(module)
                name = f"{module}.{p.role}"
            digests.append(_tensor_digest(name, tensor))
        read_alphas(out, file_alphas, ckpt, raw_modules, spec)
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
                       "factor): %s", describe(spec), len(out.unmerged), listed(out.unmerged, 10))
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
        raise LoraError(f"{source}: {len(incomplete)} modules miss {' / '.join(missing)} (e.g. {listed(incomplete)}). "
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
        raise LoraError(f"{source}: kohya names that fit several modules: {listed(ambiguous, 3)}")
    if unknown:
        raise LoraError(f"{source}: {len(unknown)} kohya LoRA names match no module of the DiT (e.g. "
                        f"{listed(unknown)}). Is the LoRA for another model?")
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
                        f"lora_B biases: {listed(untrainable)}); merge it into the DiT instead (load_lora_v2)")
    return TrainingLora(state, pose_guider_state_dict(lora.pose), alphas, lora.layout, lora.looks_like_base)


__all__ = [
    "LoraModule", "LoraCheckpoint", "LoraError", "read_lora", "check_complete", "resolve", "resolve_without_model",
    "pose_guider_state_dict", "is_pose_key", "strip_lora_prefix", "pose_sidecar_path", "with_pose_sidecars",
    "LORA_PREFIXES", "check_alpha", "classify_keys", "TrainingLora", "read_training_lora",
]
