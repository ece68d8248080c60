"""One stored tensor as it is read: the dtype it becomes (`target_dtype`, `cast`; fp8 kept or upcast) and the
NaN/Inf check (`all_finite`, `non_finite_error` naming the tensor and whether the file or the cast is at fault)."""
from __future__ import annotations

import os
from typing import Iterator, Tuple, Union

import torch

from .errors import NonFiniteTensorError

FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
                                                     "float8_e5m2fnuz") if hasattr(torch, name))
# Compute dtype for fp8 tensors when no target dtype is given (fp8 cannot be computed with on CPU).
FP8_UPCAST = torch.bfloat16


# ------------------------------------------------------------------------------------------------- casting
# Pass as the dtype to keep a tensor exactly as stored, fp8 included (the fp8 DiT loader keeps fp8 weights as is).
STORED = "stored"


def target_dtype(source: torch.dtype, dtype: Union[torch.dtype, str, None]) -> torch.dtype:
    """The dtype a stored tensor becomes: `dtype` for floating tensors, unchanged for integer/bool tensors.

    `dtype=None` keeps the stored dtype but upcasts fp8 to bf16. An fp8 `dtype` is a storage request that only the
    fp8 DiT loader honours (for its Linear weights): every other floating tensor is computed in bf16
    (`FP8_UPCAST`). `dtype=STORED` keeps every tensor as stored, fp8 included."""
    if not source.is_floating_point or dtype == STORED:
        return source
    if dtype is None:
        return FP8_UPCAST if source in FP8_DTYPES else source
    if dtype in FP8_DTYPES:
        return FP8_UPCAST
    return dtype


def cast(tensor: torch.Tensor, dtype: Union[torch.dtype, str, None] = None, device: Union[str, torch.device, None] = None
         ) -> torch.Tensor:
    """Cast one stored tensor to the compute dtype/device (round to nearest even, as torch `.to`)."""
    return tensor.to(device=device, dtype=target_dtype(tensor.dtype, dtype))


# ------------------------------------------------------------------------------------------------- finite values
FINITE_CHUNK = 1 << 24     # elements per element-wise pass: bounds the slow path's temporaries to 16 MiB


def _chunks(tensor: torch.Tensor) -> Iterator[torch.Tensor]:
    flat = tensor.reshape(-1)
    for start in range(0, flat.numel(), FINITE_CHUNK):
        yield flat[start:start + FINITE_CHUNK]


def all_finite(tensor: torch.Tensor) -> bool:
    """True when no element is NaN or Inf (always for integer tensors).

    A sum is finite iff every term is finite and it does not overflow; torch accumulates half types in fp32, so
    one reduction at memory speed clears a weight tensor (isfinite().all() costs ~10x more). Only a non-finite sum
    pays for the exact element-wise test, chunk by chunk."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return True
    if tensor.dtype in FP8_DTYPES:      # no arithmetic on fp8: upcast chunk-wise (exact)
        return all(all_finite(c.to(torch.float32)) for c in _chunks(tensor))
    if bool(torch.isfinite(tensor.sum())):
        return True
    return all(bool(torch.isfinite(c).all()) for c in _chunks(tensor))


def _count_nonfinite(tensor: torch.Tensor) -> Tuple[int, int]:
    """(NaN count, Inf count), chunk-wise."""
    nan = inf = 0
    for c in _chunks(tensor):
        c = c.to(torch.float32) if c.dtype in FP8_DTYPES else c
        nan += int(torch.isnan(c).sum())
        inf += int(torch.isinf(c).sum())
    return nan, inf


def non_finite_error(path: Union[str, os.PathLike], key: str, stored: torch.Tensor, loaded: torch.Tensor
                     ) -> NonFiniteTensorError:
    """The error for a tensor that is not finite once loaded: damaged in the file, or overflowed by the cast."""
    where = f"{str(path)!r}: tensor {key!r} {list(stored.shape)}"
    if loaded.dtype != stored.dtype and all_finite(stored):
        amax = max(float(c.to(torch.float32).abs().max()) for c in _chunks(stored))
        return NonFiniteTensorError(
            f"{where} is finite as stored ({stored.dtype}) but overflows {loaded.dtype} (largest magnitude "
            f"{amax:g}): load it in a wider dtype (bfloat16 or float32)")
    nan, inf = _count_nonfinite(stored)
    return NonFiniteTensorError(
        f"{where} holds {nan} NaN and {inf} Inf values (of {stored.numel()}); refusing to load it. The file is "
        "damaged, or the training that wrote it diverged.")



__all__ = ["FP8_DTYPES", "FP8_UPCAST", "STORED", "target_dtype", "cast", "all_finite", "non_finite_error"]
