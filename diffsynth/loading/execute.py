"""Executing a load plan: stream the tensors into the meta-built model, each cast (or kept in fp8, or quantised)
as it is read and assigned before the next one, then fill the optional tensors and place the model
(`execute_plan`)."""
from __future__ import annotations

import logging
import time
from typing import Dict, List, Optional, Union

import torch
import torch.nn as nn

from .errors import CheckpointError, NonFiniteTensorError
from .files import Checkpoint
from .formats import Detection
from .plan import LoadPlan, expected_tensors
from .tensors import FP8_DTYPES, FP8_UPCAST, STORED, all_finite, target_dtype

logger = logging.getLogger(__name__)

Device = Union[str, torch.device, None]


def assign_tensor(model: nn.Module, key: str, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter or buffer `key` by `tensor` (frozen: requires_grad=False)."""
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    if name in module._parameters:
        module._parameters[name] = nn.Parameter(tensor, requires_grad=False)
    elif name in module._buffers:
        module._buffers[name] = tensor
    else:
        raise KeyError(key)


def _meta_tensors(model: nn.Module) -> List[str]:
    names = [n for n, p in model.named_parameters() if p.is_meta]
    return names + [n for n, b in model.named_buffers() if b.is_meta]


# ------------------------------------------------------------------------------------------------- fp8
class _Fp8Weights:
    """What the fp8 DiT load does with each weight: the Linear weights (`Fp8Linear`) are kept as stored when the
    file already holds the storage dtype (with the file's ComfyUI `scale_weight`, or scale 1), and are otherwise
    read in fp32 (dequantised with the file's scale, if any) and quantised with `granularity`. Weights of other
    modules that carry a ComfyUI scale are dequantised (W * scale) into their compute dtype."""

    def __init__(self, plan: LoadPlan, torch_dtype, device, granularity: str, base_dtype):
        from ..models.fp8 import GRANULARITIES, fp8_dtype_for_device, fp8_linear_names, quantize_model_fp8

        if granularity not in GRANULARITIES:
            raise ValueError(f"fp8_granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.plan, self.device, self.granularity, self.base_dtype = plan, device, granularity, base_dtype
        det = plan.detection
        self.stored = {det.key_map[k]: info.dtype for k, info in plan.checkpoint.infos.items() if k in det.key_map}
        self.storage: Optional[torch.dtype] = None
        self.linear_weights: set = set()
        if torch_dtype in FP8_DTYPES:
            if plan.name != "wan_video_dit":
                logger.info("%s: fp8 storage applies to the DiT's Linear layers; this %s is loaded in %s",
                            plan.source, plan.name, FP8_UPCAST)
            else:
                self.storage = fp8_dtype_for_device(torch_dtype, device)
                names = fp8_linear_names(plan.model)
                quantize_model_fp8(plan.model, self.storage, granularity, names=names, compute_dtype=FP8_UPCAST)
                self.linear_weights = {n + ".weight" for n in names}
        # ComfyUI scales: small (a scalar or [out] per layer), read up front in fp32.
        self.scales: Dict[str, torch.Tensor] = {}
        if det.scales:
            by_file = {v: k for k, v in det.scales.items()}
            for file_key, t in plan.checkpoint.iter_tensors(list(by_file), dtype=torch.float32, desc="fp8 scales"):
                self.scales[by_file[file_key]] = t

    def read_dtype(self, key: str):
        """The dtype a tensor is read in (see the class doc)."""
        if key in self.linear_weights:
            return STORED if self.stored.get(key) == self.storage else torch.float32
        if key in self.scales:
            return torch.float32
        return self.base_dtype(key)

    def assignments(self, key: str, tensor: torch.Tensor, source: str):
        """(official key, tensor) pairs to assign for one tensor read with `read_dtype`."""
        from ..models.fp8 import dequantize_fp8, quantize_fp8, scale_to_channels

        if key not in self.linear_weights and key not in self.scales:
            return [(key, tensor)]
        scale = None
        if key in self.scales:
            scale = scale_to_channels(self.scales[key], tensor.shape[0], f"{key} scale_weight").to(tensor.device)
        if key in self.linear_weights:
            module = key[: -len(".weight")]
            if tensor.dtype == self.storage:            # kept exactly as stored
                scale = scale if scale is not None else torch.ones(tensor.shape[0], device=tensor.device)
                return [(key, tensor), (module + ".scale", scale)]
            weight = dequantize_fp8(tensor, scale) if scale is not None else tensor
            q, s = quantize_fp8(weight, self.storage, self.granularity)
            return [(key, q), (module + ".scale", s)]
        out = dequantize_fp8(tensor, scale).to(target_dtype(self.stored[key], self.base_dtype(key)))
        if not all_finite(out):
            raise NonFiniteTensorError(f"{source}: tensor {key!r} times its fp8 scale_weight is not finite in "
                                       f"{out.dtype}: load it in a wider dtype (bfloat16 or float32)")
        return [(key, out)]


def execute_plan(plan: LoadPlan, torch_dtype: Optional[torch.dtype] = None, device: Device = "cpu",
                 progress: bool = True, fp8_granularity: str = "channel") -> nn.Module:
    """Stream the tensors into the meta-built model, casting each as it is read; returns the loaded model
    (eval mode, frozen). The plan's files are closed afterwards.

    An fp8 `torch_dtype` (float8_e4m3fn / float8_e5m2) loads a DiT with its Linear layers as `Fp8Linear` (fp8
    weight, fp32 scale per output channel, or per tensor with `fp8_granularity="tensor"`, or none with "none")
    and everything else in bf16; see `diffsynth.models.fp8`. Other models are loaded in bf16."""
    started = time.perf_counter()
    model, det = plan.model, plan.detection
    device = torch.device(device) if device is not None else torch.device("cpu")
    def base_dtype(official_key: str) -> Optional[torch.dtype]:   # one dtype per model (loading/release.py)
        return torch_dtype

    try:
        fp8 = _Fp8Weights(plan, torch_dtype, device, fp8_granularity, base_dtype)
        dtype_for = fp8.read_dtype
        with plan.checkpoint as ckpt:
            if det.layout.convert is None:
                # One tensor at a time: renamed, cast and assigned before the next one is read.
                for file_key, tensor in _stream(ckpt, det, dtype_for, device, progress, plan.name):
                    for key, value in fp8.assignments(det.key_map[file_key], tensor, plan.source):
                        assign_tensor(model, key, value)
            else:
                # Tensors must be combined (CLIP q/k/v -> to_qkv): read the (small) model whole, then convert.
                raw = {det.key_map[k]: t for k, t in _stream(ckpt, det, dtype_for, device, progress, plan.name)}
                for key, tensor in det.layout.convert(raw).items():
                    assign_tensor(model, key, tensor.contiguous())
                del raw
        expected = expected_tensors(model)
        for key in plan.kind.optional:
            if key in expected and _is_meta(model, key):
                logger.info("%s: %s not in the file (unused by Wan); filled with zeros", plan.source, key)
                dtype = target_dtype(torch.float32, base_dtype(key))
                assign_tensor(model, key, torch.zeros(expected[key], dtype=dtype, device=device))
        left = _meta_tensors(model)
        if left:
            raise CheckpointError(f"{plan.source}: {len(left)} tensors were never loaded: {left[:6]}")
        model.to(device)         # non-persistent buffers built on CPU (e.g. the VAE latent statistics)
    except BaseException:
        plan.checkpoint.close()
        raise
    model.eval().requires_grad_(False)
    logger.info("loaded %s (%s) from %s as %s on %s in %.1f s", plan.name, det.label, plan.source,
                f"{fp8.storage} Linear weights + {FP8_UPCAST}" if fp8.storage else torch_dtype or "stored dtype",
                device, time.perf_counter() - started)
    return model


def _stream(ckpt: Checkpoint, det: Detection, dtype_for, device, progress: bool, desc: str):
    """(file key, tensor) in file order, each cast to the dtype its official name asks for."""
    return ckpt.iter_tensors(det.key_map, dtype=lambda file_key: dtype_for(det.key_map[file_key]), device=device,
                             progress=progress, desc=desc)


def _is_meta(model: nn.Module, key: str) -> bool:
    module_path, _, name = key.rpartition(".")
    module = model.get_submodule(module_path) if module_path else model
    tensor = module._parameters.get(name, module._buffers.get(name))
    return tensor is not None and tensor.is_meta


__all__ = ["execute_plan", "assign_tensor", "Device"]
