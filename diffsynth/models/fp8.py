"""fp8 weight storage for Linear layers: weights kept in float8 with an fp32 scale, computed in bf16.

`Fp8Linear` stores

- `weight`: float8_e4m3fn (or float8_e5m2) [out, in], a frozen Parameter (so LoRA merging and `state_dict` find it
  under the usual name);
- `scale`: fp32 buffer [out], one factor per output channel (a per-tensor scale is stored broadcast to [out]);
- `bias`: in the compute dtype (bf16).

and computes `F.linear(x, weight.to(x.dtype) * scale[:, None], bias)`: the weight is dequantised to the
activation dtype for every call (a transient the size of one layer's weight in bf16), so the arithmetic is the bf16
arithmetic of a plain Linear and only the stored weight values differ.

Quantisation (`quantize_fp8`), with fp8_max = 448 (e4m3fn) or 57344 (e5m2):

- "channel" (default): scale[o] = amax_i |W[o, i]| / fp8_max, W_q = clamp(W / scale[o]).to(fp8);
- "tensor": one scale = amax |W| / fp8_max for the whole matrix (ComfyUI's `scale_weight` scalar);
- "none": W_q = clamp(W).to(fp8), scale = 1 (the plain cast of DiffSynth/upstream, for comparison).

A row of zeros gets scale 1. Values are clamped to +-fp8_max before the cast (e4m3fn saturates on CPU anyway, e5m2
would overflow to inf).

Storage dtype: e4m3fn has more mantissa (3 bits against 2) and is the default. GPUs before Ada (compute capability
< 8.9) have no fp8 hardware; `fp8_storage_dtype` then falls back to e5m2 with a logged warning, the conservative
choice DiffSynth users know (PyTorch's element-wise casts themselves work for both formats on any GPU). CPU keeps
e4m3fn.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

logger = logging.getLogger(__name__)

FP8_MAX = {torch.float8_e4m3fn: 448.0, torch.float8_e5m2: 57344.0}
STORAGE_DTYPES = tuple(FP8_MAX)
GRANULARITIES = ("channel", "tensor", "none")
# Minimum CUDA compute capability with fp8 (e4m3) support: Ada (8.9) and Hopper (9.0).
FP8_E4M3_MIN_CAPABILITY = (8, 9)
# Linear layers of the Wan DiT left in the compute dtype: `WanModel.embed_timestep` reads the dtype of
# `time_embedding.0.weight` to choose the dtype of the sinusoid (and the layer has 256 x d weights: nothing to save).
DEFAULT_SKIP = ("time_embedding.0",)


# ------------------------------------------------------------------------------------------------ dtype choice
def fp8_storage_dtype(requested: torch.dtype = torch.float8_e4m3fn,
                      capability: Optional[Tuple[int, int]] = None) -> torch.dtype:
    """The fp8 storage dtype for a device of CUDA `capability` ((major, minor); None for CPU or any non-CUDA
    device): `requested`, except float8_e4m3fn on a GPU older than Ada (capability < 8.9), which becomes
    float8_e5m2 with a warning."""
    if requested not in STORAGE_DTYPES:
        raise ValueError(f"fp8 storage must be one of {[str(d) for d in STORAGE_DTYPES]}, got {requested}")
    if requested == torch.float8_e4m3fn and capability is not None and tuple(capability) < FP8_E4M3_MIN_CAPABILITY:
        logger.warning("this GPU (compute capability %d.%d) predates fp8 e4m3 support (8.9, Ada): storing the fp8 "
                       "weights as float8_e5m2 instead (one mantissa bit less, so about twice the rounding error)",
                       *capability)
        return torch.float8_e5m2
    return requested


def device_capability(device: Union[str, torch.device, None]) -> Optional[Tuple[int, int]]:
    """CUDA compute capability of `device`, or None when it is not a CUDA device."""
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


def fp8_dtype_for_device(requested: torch.dtype, device: Union[str, torch.device, None]) -> torch.dtype:
    """`fp8_storage_dtype` for the capability of `device`."""
    return fp8_storage_dtype(requested, device_capability(device))


# ------------------------------------------------------------------------------------------------ (de)quantise
def _check(dtype: torch.dtype, granularity: str) -> None:
    if dtype not in FP8_MAX:
        raise ValueError(f"fp8 storage must be one of {[str(d) for d in STORAGE_DTYPES]}, got {dtype}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")


@torch.no_grad()
def quantize_fp8(weight: torch.Tensor, dtype: torch.dtype = torch.float8_e4m3fn, granularity: str = "channel"
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
    """W [out, in] -> (W_q fp8 [out, in], scale fp32 [out]) with W ~= W_q * scale[:, None]; see the module doc."""
    _check(dtype, granularity)
    if weight.ndim != 2:
        raise ValueError(f"quantize_fp8 takes a [out, in] weight, got shape {tuple(weight.shape)}")
    fmax = FP8_MAX[dtype]
    w = weight.to(torch.float32)
    out = w.shape[0]
    if granularity == "none":
        scale = torch.ones(out, dtype=torch.float32, device=w.device)
    else:
        amax = w.abs().amax(dim=1) if granularity == "channel" else w.abs().amax().expand(out)
        scale = torch.where(amax > 0, amax / fmax, torch.ones_like(amax)).contiguous()
        w = w / scale.unsqueeze(1)
    return w.clamp_(-fmax, fmax).to(dtype), scale


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """W_q [out, in] * scale [out] (or a scalar) in `dtype`."""
    scale = scale.to(dtype)
    return weight.to(dtype) * (scale.unsqueeze(1) if scale.ndim == 1 else scale)


def scale_to_channels(scale: torch.Tensor, out_features: int, what: str = "scale") -> torch.Tensor:
    """A stored scale (a scalar, [1], [out] or [out, 1]) as fp32 [out]."""
    flat = scale.reshape(-1).to(torch.float32)
    if flat.numel() == 1:
        return flat.expand(out_features).contiguous()
    if flat.numel() == out_features:
        return flat.contiguous()
    raise ValueError(f"{what} has shape {tuple(scale.shape)}: expected a scalar or one value per output channel "
                     f"({out_features})")


# ------------------------------------------------------------------------------------------------ module
class Fp8Linear(nn.Module):
    """A Linear layer whose weight is stored in fp8 with a per-output-channel fp32 scale (see the module doc).

    Args:
        fp8_dtype: float8_e4m3fn or float8_e5m2.
        granularity: how `set_weight` (and a LoRA merge) quantises: "channel", "tensor" or "none".
        compute_dtype: dtype of the bias and of the computation when the input is not floating point.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 fp8_dtype: torch.dtype = torch.float8_e4m3fn, granularity: str = "channel",
                 compute_dtype: torch.dtype = torch.bfloat16, device=None):
        super().__init__()
        _check(fp8_dtype, granularity)
        self.in_features, self.out_features = in_features, out_features
        self.fp8_dtype, self.granularity, self.compute_dtype = fp8_dtype, granularity, compute_dtype
        self.weight = nn.Parameter(torch.zeros(out_features, in_features, dtype=fp8_dtype, device=device),
                                   requires_grad=False)
        self.register_buffer("scale", torch.ones(out_features, dtype=torch.float32, device=device))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=compute_dtype, device=device),
                                 requires_grad=False) if bias else None

    @classmethod
    def from_linear(cls, linear: nn.Linear, fp8_dtype: torch.dtype = torch.float8_e4m3fn,
                    granularity: str = "channel", compute_dtype: torch.dtype = torch.bfloat16) -> "Fp8Linear":
        """Quantise a Linear (on meta: an empty Fp8Linear on meta, to be filled by a loader)."""
        device = linear.weight.device
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, fp8_dtype, granularity,
                     compute_dtype, device=device)
        if device.type != "meta":
            module.set_weight(linear.weight)
            if linear.bias is not None:
                module.bias.data = linear.bias.detach().to(compute_dtype).clone()
        return module

    @torch.no_grad()
    def set_weight(self, weight: torch.Tensor) -> None:
        """Quantise a full-precision weight [out, in] into this layer (with its own granularity)."""
        q, scale = quantize_fp8(weight, self.fp8_dtype, self.granularity)
        self.weight.data = q.to(self.weight.device)
        self.scale.data = scale.to(self.scale.device)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_fp8(self.weight, self.scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype if x.is_floating_point() and x.dtype not in FP8_MAX else self.compute_dtype
        weight = self.weight.to(dtype) * self.scale.to(dtype).unsqueeze(1)
        bias = self.bias.to(dtype) if self.bias is not None else None
        return F.linear(x.to(dtype), weight, bias)

    def _apply(self, fn, recurse=True):
        # `model.to(torch.bfloat16)` must not upcast the stored fp8 weight or round the fp32 scale: moves keep
        # their device, dtype changes of weight and scale are undone (fp8 -> bf16 -> fp8 is exact).
        dtypes = (self.weight.dtype, self.scale.dtype)
        out = super()._apply(fn, recurse)
        if self.weight.dtype != dtypes[0]:
            self.weight.data = self.weight.data.to(dtypes[0])
        if self.scale.dtype != dtypes[1]:
            self.scale.data = self.scale.data.to(dtypes[1])
        if self.bias is not None and self.bias.dtype.is_floating_point:
            self.compute_dtype = self.bias.dtype
        return out

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"fp8_dtype={self.fp8_dtype}, granularity={self.granularity!r}")


# ------------------------------------------------------------------------------------------------ models
def _skipped(name: str, skip: Sequence[str]) -> bool:
    return any(name == s or name.startswith(s + ".") for s in skip)


def fp8_linear_names(model: nn.Module, skip: Sequence[str] = DEFAULT_SKIP) -> list:
    """Names of the nn.Linear modules `quantize_model_fp8` would replace."""
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and not _skipped(n, skip)]


def quantize_model_fp8(model: nn.Module, fp8_dtype: torch.dtype = torch.float8_e4m3fn, granularity: str = "channel",
                       skip: Sequence[str] = DEFAULT_SKIP, compute_dtype: torch.dtype = torch.bfloat16,
                       names: Optional[Iterable[str]] = None) -> nn.Module:
    """Replace every nn.Linear (except `skip`, or exactly `names`) by an `Fp8Linear` in place, and cast every other
    floating parameter and buffer to `compute_dtype`. On a meta model this only changes structure and dtypes (the
    loader fills it). Returns the model."""
    _check(fp8_dtype, granularity)
    names = list(names) if names is not None else fp8_linear_names(model, skip)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        linear = getattr(parent, child)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not an nn.Linear")
        setattr(parent, child, Fp8Linear.from_linear(linear, fp8_dtype, granularity, compute_dtype))
    model.to(compute_dtype)           # Fp8Linear keeps its fp8 weight and fp32 scale (on meta: dtypes only)
    return model


def parameter_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer (works on meta models)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


__all__ = ["Fp8Linear", "quantize_fp8", "dequantize_fp8", "scale_to_channels", "fp8_storage_dtype",
           "fp8_dtype_for_device", "device_capability", "quantize_model_fp8", "fp8_linear_names", "parameter_bytes",
           "FP8_MAX", "GRANULARITIES", "DEFAULT_SKIP", "FP8_E4M3_MIN_CAPABILITY"]
