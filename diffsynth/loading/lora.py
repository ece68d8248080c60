"""UniAnimate LoRA checkpoints: parse the trainer's flat PEFT-named tensors and merge them into the DiT.

The trainer saves `{name: tensor}` for every trainable parameter (upstream spec 7.7):
`pipe.dit.blocks.{i}.self_attn.q.lora_A.default.weight`, ... plus the pose guider's `dwpose_embedding.*` and
`randomref_embedding_pose.*`. DeepSpeed exports (`zero_to_fp32 --safe_serialization`) spread the same names, and
every frozen weight, over several safetensors shards; a shard may hold only `lora_A` tensors.

Merge: `W <- W + strength * scale * (B @ A)`, computed in fp32 and stored back in W's dtype (an fp8 `Fp8Linear`
is dequantised, updated and requantised with new scales), with
`scale = alpha / r` when alpha is known and 1 otherwise, which is what upstream always does (it ignores alpha).
Alpha comes from the argument, a kohya `<module>.alpha`, a file-wide scalar tensor (`network_alpha`, which our
trainer saves next to the PEFT tensors and upstream's loader skips since the key holds no 'lora'; or
`lora_alpha`/`alpha`), or safetensors metadata.

`LoraCheckpoint.digest` identifies the content (a SHA-256 over the normalised names, dtypes, shapes and bytes of
the tensors read), so the manager can tell a LoRA merged twice under another path or name.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Set, Tuple

import torch

from .files import Checkpoint, CheckpointError, PathSpec, describe

logger = logging.getLogger(__name__)

POSE_MARKERS = ("dwpose_embedding", "randomref_embedding_pose")
# Stripped from a LoRA module path (one of them, at the start): the trainer's LightningModule attribute path,
# ComfyUI names, and PEFT's `get_peft_model` wrapper.
LORA_PREFIXES = ("pipe.dit.", "model.diffusion_model.", "diffusion_model.", "base_model.model.")
ALPHA_KEYS = ("network_alpha", "lora_alpha", "alpha")                 # file-wide scalar tensors
ALPHA_METADATA = ("network_alpha", "lora_alpha", "alpha", "ss_network_alpha")
_LORA_KEY = re.compile(r"(?P<module>.+)\.lora_(?P<which>[AB])(?:\.(?P<adapter>[^.]+))?\.weight")


class LoraError(CheckpointError):
    """A LoRA checkpoint that is incomplete or does not fit the model."""


@dataclass
class LoraModule:
    """The two factors of one adapted Linear: W [out, in] += scale * B [out, r] @ A [r, in]."""

    A: Optional[torch.Tensor] = None
    B: Optional[torch.Tensor] = None
    alpha: Optional[float] = None

    @property
    def rank(self) -> int:
        return self.A.shape[0]


@dataclass
class LoraCheckpoint:
    modules: Dict[str, LoraModule] = field(default_factory=dict)    # module path in the DiT -> factors
    pose: Dict[str, torch.Tensor] = field(default_factory=dict)     # pose-guider tensors, names unchanged
    alpha: Optional[float] = None                                    # file-wide alpha, when stored
    adapters: Set[str] = field(default_factory=set)                  # PEFT adapter names seen ("default")
    ignored: int = 0                                                 # other tensors (frozen weights, ...)
    files: Tuple[Path, ...] = ()                                     # the files read, resolved (symlinks too)
    digest: str = ""                                                 # content hash of the tensors read


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


def read_lora(spec: PathSpec, progress: bool = False) -> LoraCheckpoint:
    """Read LoRA factors, alphas and pose-guider tensors from one file or a list of shards; every other tensor
    (a DeepSpeed export also holds the frozen DiT, T5 and VAE) is skipped without being read."""
    out = LoraCheckpoint()
    digests: List[bytes] = []
    file_alphas: Dict[str, float] = {}
    with Checkpoint(spec) as ckpt:
        out.files = tuple(p.resolve() for p in ckpt.paths)
        wanted: List[str] = []
        for key in ckpt.infos:
            if is_pose_key(key) or _LORA_KEY.fullmatch(key) or key in ALPHA_KEYS or key.endswith(".alpha"):
                wanted.append(key)
            else:
                out.ignored += 1
        # Every tensor is checked for NaN/Inf as it is read (NonFiniteTensorError), before anything is merged.
        for key, tensor in ckpt.iter_tensors(wanted, progress=progress, desc="reading LoRA"):
            if is_pose_key(key):
                out.pose[key] = tensor
                name = next(iter(pose_guider_state_dict({key: tensor})))
            elif key in ALPHA_KEYS:
                file_alphas[key] = _scalar(tensor, key)
                name = "alpha"
            elif (m := _LORA_KEY.fullmatch(key)) is not None:
                name = strip_lora_prefix(m.group("module"))
                setattr(out.modules.setdefault(name, LoraModule()), m.group("which"), tensor)
                if m.group("adapter"):
                    out.adapters.add(m.group("adapter"))
                name += ".lora_" + m.group("which")
            else:   # `<module>.alpha` (kohya-style), attached below
                name = strip_lora_prefix(key[: -len(".alpha")])
                out.modules.setdefault(name, LoraModule()).alpha = _scalar(tensor, key)
                name += ".alpha"
            digests.append(_tensor_digest(name, tensor))
        out.alpha = _file_alpha(file_alphas, spec)
        if out.alpha is None:
            out.alpha = _metadata_alpha(ckpt.metadata, spec)
    # Sorted: the same tensors give the same digest whatever the file order or the key prefixes.
    out.digest = hashlib.sha256(b"".join(sorted(digests))).hexdigest()
    # Alpha-only entries are modules without factors: drop them if nothing else refers to them.
    out.modules = {k: m for k, m in out.modules.items() if m.A is not None or m.B is not None}
    if len(out.adapters) > 1:
        raise LoraError(f"{describe(spec)} holds several PEFT adapters {sorted(out.adapters)}; merge one at a time")
    if not out.modules and not out.pose:
        raise LoraError(f"{describe(spec)} holds no LoRA factors (*.lora_A/B[.adapter].weight) and no pose-guider "
                        f"tensors ({', '.join(POSE_MARKERS)}); {out.ignored} other tensors were skipped")
    return out


def _list(names: Iterable[str], limit: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


@torch.no_grad()
def merge_lora(models: Iterable[torch.nn.Module], lora: LoraCheckpoint, strength: float = 1.0,
               network_alpha: Optional[float] = None, source: str = "LoRA") -> int:
    """Merge every LoRA module into `models` (normally the one DiT). Everything is checked before the first
    weight changes, so a failing call leaves the models as they were. Returns the number of merged Linears."""
    models = list(models)
    incomplete = {k: ("lora_A" if m.A is None else "lora_B") for k, m in lora.modules.items()
                  if m.A is None or m.B is None}
    if incomplete:
        missing = sorted(set(incomplete.values()))
        raise LoraError(f"{source}: {len(incomplete)} modules miss {' / '.join(missing)} (e.g. {_list(incomplete)}). "
                        "A DeepSpeed export stores lora_A and lora_B in different shards: pass all shards as one "
                        "list to load_lora_v2.")
    from ..models.fp8 import Fp8Linear

    plan = []
    unknown, bad_shape = [], []
    for model in models:
        params = dict(model.named_parameters())
        fp8_layers = {n: m for n, m in model.named_modules() if isinstance(m, Fp8Linear)}
        for name, module in sorted(lora.modules.items()):
            weight = params.get(name + ".weight")
            if weight is None:
                unknown.append(name)
                continue
            a, b = module.A, module.B
            if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or (b.shape[0], a.shape[1]) != tuple(weight.shape):
                bad_shape.append(f"{name}: A {tuple(a.shape)}, B {tuple(b.shape)} vs W {tuple(weight.shape)}")
                continue
            alpha = next((x for x in (network_alpha, module.alpha, lora.alpha) if x is not None), None)
            scale = alpha / module.rank if alpha is not None else 1.0
            plan.append((fp8_layers.get(name, weight), a, b, strength * scale))
    if unknown:
        raise LoraError(f"{source}: {len(set(unknown))} LoRA modules are not Linear layers of the DiT "
                        f"(e.g. {_list(set(unknown))}); prefixes understood: {', '.join(LORA_PREFIXES)}")
    if bad_shape:
        raise LoraError(f"{source}: LoRA factors do not fit the DiT weights: {'; '.join(bad_shape[:3])}"
                        + (f" ... ({len(bad_shape)} in all)" if len(bad_shape) > 3 else "")
                        + ". Is the LoRA for another model size?")
    for weight, a, b, factor in plan:
        if isinstance(weight, Fp8Linear):
            # fp8 layer: dequantise, add, requantise (with the layer's granularity: a new scale per channel)
            delta = b.to(weight.weight.device, torch.float32) @ a.to(weight.weight.device, torch.float32)
            weight.set_weight(weight.dequantized_weight(torch.float32) + factor * delta)
            continue
        delta = b.to(weight.device, torch.float32) @ a.to(weight.device, torch.float32)
        weight.copy_((weight.to(torch.float32) + factor * delta).to(weight.dtype))
    return len(plan)


def pose_guider_state_dict(collected: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Pose tensors under any prefix (`dwpose_embedding.0.weight`, `pipe.dwpose_embedding...`, ...) -> the
    `PoseGuider` names (everything before the marker dropped)."""
    out = {}
    for key, value in collected.items():
        starts = [key.find(m) for m in POSE_MARKERS if m in key]
        if starts:
            out[key[min(starts):]] = value
    return out


__all__ = [
    "LoraModule", "LoraCheckpoint", "LoraError", "read_lora", "merge_lora", "pose_guider_state_dict",
    "is_pose_key", "strip_lora_prefix", "POSE_MARKERS", "LORA_PREFIXES", "ALPHA_KEYS", "ALPHA_METADATA",
]
