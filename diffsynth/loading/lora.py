"""LoRA checkpoints: read the factors, deltas, alphas and pose-guider tensors of any supported layout, and merge
them into the DiT (several LoRAs at once, each with its strength), restorably.

Layouts (see `lora_formats.py`): the UniAnimate trainer's flat PEFT names
(`pipe.dit.blocks.{i}.self_attn.q.lora_A.default.weight`, upstream spec 7.7, plus the pose guider's
`dwpose_embedding.*` / `randomref_embedding_pose.*`), ComfyUI/Kijai/LightX2V (`lora_down/lora_up/.alpha` and the
full deltas `.diff/.diff_b/.diff_m`), diffusers (`transformer.blocks.0.attn1.to_q.lora_A.weight`) and kohya
(`lora_unet_blocks_0_cross_attn_k.lora_down.weight`). DeepSpeed exports (`zero_to_fp32 --safe_serialization`)
spread the names, and every frozen weight, over several shards; a shard may hold only `lora_A` tensors.

Merge of one weight W (all updates of one call summed in fp32, W rounded to its dtype once):
`W <- W + sum_i strength_i * (scale_i * B_i @ A_i + diff_i)`, with `scale = alpha / r` when alpha is known and 1
otherwise (upstream always uses 1). An fp8 `Fp8Linear` is dequantised, updated and requantised with new scales.
Alpha comes from the argument, a kohya `<module>.alpha`, a file-wide scalar tensor (`network_alpha`, which our
trainer saves and upstream's loader skips since the key holds no 'lora'; or `lora_alpha`/`alpha`), or safetensors
metadata.

Speed: the merge works on the weight's device, in place for fp32 weights (`addmm_`), through one reused fp32
buffer for bf16/fp16 weights, so no weight-sized temporary is allocated per layer (allocation and page faults, not
FLOPs, dominated the former path).

`LoraCheckpoint.digest` identifies the content (a SHA-256 over the normalised names, dtypes, shapes and bytes of
the tensors read), so the manager can tell a LoRA merged twice under another path or name.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch

from .files import Checkpoint, CheckpointError, PathSpec, all_finite, describe, non_finite_error, resolve_paths
from .lora_formats import (DIFF_ROLES, KOHYA_PREFIX, LAYOUT_HELP, UNSUPPORTED_MARKERS, diffusers_to_official,
                           guess_layout, is_kohya, kohya_block_count, official_names, parse_key, strip_prefix,
                           underscore_index)

logger = logging.getLogger(__name__)

POSE_MARKERS = ("dwpose_embedding", "randomref_embedding_pose")
# Stripped from a LoRA module path by `strip_lora_prefix` (the trainer's pretrained-LoRA loading uses it too).
LORA_PREFIXES = ("pipe.dit.", "model.diffusion_model.", "diffusion_model.", "base_model.model.")
ALPHA_KEYS = ("network_alpha", "lora_alpha", "alpha")                 # file-wide scalar tensors
ALPHA_METADATA = ("network_alpha", "lora_alpha", "alpha", "ss_network_alpha")
# `X.safetensors` converted by `python -m diffsynth.convert_lora` keeps its pose guider in `X.pose_guider.safetensors`.
POSE_SIDECAR_SUFFIX = ".pose_guider.safetensors"


class LoraError(CheckpointError):
    """A LoRA checkpoint that is incomplete, of an unknown layout, or does not fit the model."""


@dataclass
class LoraModule:
    """What a LoRA holds for one module: factors (W [out, in] += scale * B [out, r] @ A [r, in]), an optional
    per-module alpha, and full deltas of the module's weight (`diff`), bias (`diff_b`) and modulation (`diff_m`)."""

    A: Optional[torch.Tensor] = None
    B: Optional[torch.Tensor] = None
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
    adapters: Set[str] = field(default_factory=set)                  # PEFT adapter names seen ("default")
    ignored: int = 0                                                 # other tensors (frozen weights, ...)
    files: Tuple[Path, ...] = ()                                     # the files read, resolved (symlinks too)
    digest: str = ""                                                 # content hash of the tensors read
    layout: str = ""                                                 # "diffsynth", "comfy", "diffusers", "kohya"
    underscored: Set[str] = field(default_factory=set)               # kohya names still to resolve (`resolve`)

    def alpha_of(self, module: LoraModule, network_alpha: Optional[float] = None) -> Optional[float]:
        """The alpha that applies to `module`: the argument, else its own, else the file's; None when unknown."""
        return next((x for x in (network_alpha, module.alpha, self.alpha) if x is not None), None)

    def scale_of(self, module: LoraModule, network_alpha: Optional[float] = None) -> float:
        """alpha / r, or 1 when alpha is unknown (upstream's behaviour)."""
        alpha = self.alpha_of(module, network_alpha)
        return alpha / module.rank if alpha is not None else 1.0


def is_pose_key(key: str) -> bool:
    """True for pose-guider tensors (`dwpose_embedding`, `randomref_embedding_pose`), whatever their prefix."""
    return any(marker in key for marker in POSE_MARKERS)


def strip_lora_prefix(path: str) -> str:
    """Drop a trainer prefix (`pipe.dit.`, `diffusion_model.`, ...) from a LoRA module path."""
    for prefix in LORA_PREFIXES:
        if path.startswith(prefix):
            return path[len(prefix):]
    return path


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


def _metadata_alpha(metadata: Dict[str, str], spec: PathSpec) -> Optional[float]:
    for name in ALPHA_METADATA:
        if name in metadata:
            try:
                value = float(metadata[name])
            except ValueError:
                value = math.nan
            if math.isfinite(value):
                return value
            logger.warning("ignoring %r metadata %r in %s: not a finite number", name, metadata[name],
                           describe(spec))
    return None


def _list(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


# ------------------------------------------------------------------------------------------------- reading
def _module_names(raw: Iterable[str], layout: str, spec: PathSpec) -> Dict[str, str]:
    """Raw module path (as in the file) -> official path, or the kohya underscore form (resolved later)."""
    out, unknown = {}, []
    for path in set(raw):
        if is_kohya(path):
            out[path] = path[len(KOHYA_PREFIX):]
            continue
        stripped = strip_prefix(path)
        if layout == "diffusers":
            try:
                stripped = diffusers_to_official(stripped)
            except KeyError:
                unknown.append(path)
        out[path] = stripped
    if unknown:
        raise LoraError(f"{describe(spec)} uses diffusers module names, but these have no Wan DiT counterpart: "
                        f"{_list(unknown)}. Is it a LoRA for another diffusers model?")
    return out


def _unknown_layout(spec: PathSpec, keys: List[str]) -> LoraError:
    shown = ", ".join(keys[:5]) + (f", ... ({len(keys)} tensors)" if len(keys) > 5 else "")
    return LoraError(f"{describe(spec)} is not a LoRA layout this loader knows: no tensor is a LoRA factor, delta, "
                     f"alpha or pose-guider tensor (first keys: {shown or 'none'}). Supported layouts: "
                     f"{LAYOUT_HELP}.")


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


def read_lora(spec: PathSpec, progress: bool = False) -> LoraCheckpoint:
    """Read LoRA factors, deltas, alphas and pose-guider tensors from one file or a list of shards, recognising
    the layout by the key structure; every other tensor (a DeepSpeed export also holds the frozen DiT, T5 and VAE)
    is skipped without being read. Every tensor read is checked for NaN/Inf (`NonFiniteTensorError`)."""
    out = LoraCheckpoint()
    digests: List[bytes] = []
    file_alphas: Dict[str, float] = {}
    with Checkpoint(spec) as ckpt:
        out.files = tuple(p.resolve() for p in ckpt.paths)
        keys = list(ckpt.infos)
        unsupported = [k for k in keys if any(m in k for m in UNSUPPORTED_MARKERS)]
        if unsupported:
            raise LoraError(f"{describe(spec)} holds LoHa/LoKr/DoRA/LoCon tensors ({_list(unsupported, 3)}), whose "
                            "update is not B @ A; only plain LoRA factors and .diff deltas can be merged")
        parsed, wanted = {}, []
        for key in keys:
            if is_pose_key(key) or key in ALPHA_KEYS:
                wanted.append(key)
            elif (p := parse_key(key)) is not None:
                parsed[key] = p
                wanted.append(key)
            else:
                out.ignored += 1
        out.layout = guess_layout((p.module for p in parsed.values()), (p.role for p in parsed.values()))
        names = _module_names((p.module for p in parsed.values()), out.layout, spec)
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
                module = names[p.module]
                if (module, p.role) in seen:
                    raise LoraError(f"{describe(spec)} holds the {p.role} of module {module} twice: "
                                    f"{seen[module, p.role]!r} and {key!r}")
                seen[module, p.role] = key
                entry = out.modules.setdefault(module, LoraModule())
                setattr(entry, p.role, _scalar(tensor, key) if p.role == "alpha" else tensor)
                if p.adapter:
                    out.adapters.add(p.adapter)
                if is_kohya(p.module):
                    out.underscored.add(module)
                name = f"{module}.{p.role}"
            digests.append(_tensor_digest(name, tensor))
        out.alpha = _file_alpha(file_alphas, spec)
        if out.alpha is None:
            out.alpha = _metadata_alpha(ckpt.metadata, spec)
    # Sorted: the same tensors give the same digest whatever the file order or the key prefixes.
    out.digest = hashlib.sha256(b"".join(sorted(digests))).hexdigest()
    # Alpha-only entries are modules without factors or deltas: drop them.
    out.modules = {k: m for k, m in out.modules.items() if m.has_factors or m.deltas()}
    out.underscored &= set(out.modules)
    if len(out.adapters) > 1:
        raise LoraError(f"{describe(spec)} holds several PEFT adapters {sorted(out.adapters)}; merge one at a time")
    if not out.modules and not out.pose:
        raise _unknown_layout(spec, keys)
    if not out.modules:
        out.layout = "pose guider"
    return out


def check_complete(lora: LoraCheckpoint, source: str) -> None:
    """Every module with factors has both A and B."""
    incomplete = {k: ("lora_A (down)" if m.A is None else "lora_B (up)") for k, m in lora.modules.items()
                  if m.has_factors and (m.A is None or m.B is None)}
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
    """One weight to change: its owner (a Parameter, or an Fp8Linear for its fp8 weight) and the updates."""

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
    one weight are summed before the weight is rounded). Raises LoraError before anything changes."""
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
                if module.has_factors:
                    weight = params.get(f"{name}.weight")
                    if weight is None:
                        unknown.append(name)
                    elif not _factors_fit(module.A, module.B, tuple(weight.shape)):
                        bad_shape.append(f"{name}: A {tuple(module.A.shape)}, B {tuple(module.B.shape)} vs W "
                                         f"{tuple(weight.shape)}")
                    else:
                        factor = strength * lora.scale_of(module, network_alpha)
                        target(f"{name}.weight").low_rank.append((module.B, module.A, factor))
                for role, delta in module.deltas().items():
                    pname = _delta_param(role, name, params)
                    if pname not in params:
                        unknown_deltas.append(f"{name}.{role} ({pname})")
                    elif tuple(delta.shape) != tuple(params[pname].shape):
                        bad_shape.append(f"{name}.{role} {tuple(delta.shape)} vs {pname} {tuple(params[pname].shape)}")
                    else:
                        target(pname).full.append((delta, strength))
            if unknown:
                raise LoraError(f"{source}: {len(set(unknown))} LoRA modules are not Linear layers of the DiT "
                                f"(e.g. {_list(set(unknown))}); layouts understood: {LAYOUT_HELP}")
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


def _cast_factors(targets: Sequence[_Target]) -> Dict[int, torch.Tensor]:
    """Every low-rank factor in its weight's compute dtype and device, `{id(factor): cast}`, cast with one `cat`
    and one `.to` per (dtype, device) group: hundreds of small casts cost more in thread wake-ups (and, to a GPU,
    in transfers) than in copying."""
    from ..models.fp8 import Fp8Linear

    groups: Dict[Tuple[torch.dtype, torch.device], Dict[int, torch.Tensor]] = {}
    for t in targets:
        device = t.owner.weight.device if isinstance(t.owner, Fp8Linear) else t.owner.device
        dtype = torch.float32 if isinstance(t.owner, Fp8Linear) else _compute_dtype(t.owner.dtype)
        for b, a, _ in t.low_rank:
            for factor in (b, a):
                if factor.dtype != dtype or factor.device != device:
                    groups.setdefault((dtype, device), {})[id(factor)] = factor
    out: Dict[int, torch.Tensor] = {}
    for (dtype, device), factors in groups.items():
        flat = torch.cat([f.reshape(-1) for f in factors.values()]).to(device, dtype)
        for (key, factor), part in zip(factors.items(), flat.split([f.numel() for f in factors.values()])):
            out[key] = part.view(factor.shape)
    return out


def _accumulate(w: torch.Tensor, target: _Target, source: Optional[torch.Tensor] = None,
                cast: Optional[Dict[int, torch.Tensor]] = None) -> None:
    """w (the weight in its compute dtype) <- (`source` if given, else w) + every update of `target`; the first
    update reads `source` directly, which saves a copy pass. `cast`: factors already in w's dtype and device."""
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


@torch.no_grad()
def apply_merge(targets: Sequence[_Target], backup: Optional[BaseWeights] = None) -> None:
    """Change the planned weights (see `plan_merge`). With `backup`, the original of each weight is kept first:
    a CPU weight by reference (its merged value goes to a new tensor, so the original is never copied), others by
    a CPU copy."""
    from ..models.fp8 import Fp8Linear

    # One fp32 scratch buffer per device for weights stored narrower than fp32: no weight-sized temporary per layer.
    need: Dict[torch.device, int] = {}
    for t in targets:
        if not isinstance(t.owner, Fp8Linear) and not _in_place(t.owner):
            need[t.owner.device] = max(need.get(t.owner.device, 0), t.owner.numel())
    scratch = {device: torch.empty(n, dtype=torch.float32, device=device) for device, n in need.items()}
    cast = _cast_factors(targets)
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
        if _in_place(weight):
            _accumulate(out, t, source=weight if swap else None, cast=cast)
        else:
            w = scratch[weight.device][: weight.numel()].view(weight.shape)
            w.copy_(weight)
            _accumulate(w, t, cast=cast)
            out.copy_(w)
        if swap:
            backup.keep(t.owner, (weight,))
            t.owner.data = out


def _in_place(weight: torch.Tensor) -> bool:
    return weight.dtype == _compute_dtype(weight.dtype) and weight.is_contiguous()


def merge_loras(models: Iterable[torch.nn.Module], loras: Sequence[Tuple[LoraCheckpoint, float, Optional[float], str]],
                backup: Optional[BaseWeights] = None) -> int:
    """Merge several LoRAs, `(checkpoint, strength, network_alpha, source)` each, into `models` (normally the one
    DiT). Everything is checked before the first weight changes, so a failing check leaves the models as they
    were. Returns the number of weights changed."""
    targets = plan_merge(list(models), loras)
    apply_merge(targets, backup)
    return len(targets)


def merge_lora(models: Iterable[torch.nn.Module], lora: LoraCheckpoint, strength: float = 1.0,
               network_alpha: Optional[float] = None, source: str = "LoRA",
               backup: Optional[BaseWeights] = None) -> int:
    """Merge one LoRA into `models` (see `merge_loras`). Returns the number of weights changed."""
    return merge_loras(models, [(lora, strength, network_alpha, source)], backup)


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
    "POSE_MARKERS", "LORA_PREFIXES", "ALPHA_KEYS", "ALPHA_METADATA", "POSE_SIDECAR_SUFFIX",
]
