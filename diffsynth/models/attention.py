"""Scaled-dot-product attention with a pluggable backend.

Order of preference: FlashAttention-3 > FlashAttention-2 > SageAttention > torch SDPA. Optional accelerators are
imported lazily, once, and *any* failure while importing one (not only ModuleNotFoundError: a flash-attn wheel built
against another torch raises ImportError/OSError/RuntimeError) makes us fall back to the next. The choice can be
forced with the environment variable `DIFFSYNTH_ATTENTION` or the `backend` argument
(`"flash_attn_3"`, `"flash_attn_2"`, `"sage"`, `"sdpa"`).

The accelerated kernels only take CUDA fp16/bf16 tensors; anything else (CPU, fp32, fp64) always runs on SDPA.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Optional

import torch

from .layers import HALF_DTYPES
import torch.nn.functional as F

logger = logging.getLogger(__name__)

BACKENDS = ("flash_attn_3", "flash_attn_2", "sage", "sdpa")
ENV_VAR = "DIFFSYNTH_ATTENTION"


def _import_flash_attn_3() -> Callable:
    import flash_attn_interface  # noqa: PLC0415  (optional accelerator)

    def run(q, k, v):
        out = flash_attn_interface.flash_attn_func(q, k, v)
        # Some FA3 releases return (out, softmax_lse), others just out.
        return out[0] if isinstance(out, tuple) else out

    return run


def _import_flash_attn_2() -> Callable:
    import flash_attn  # noqa: PLC0415

    return lambda q, k, v: flash_attn.flash_attn_func(q, k, v)


def _import_sage() -> Callable:
    from sageattention import sageattn  # noqa: PLC0415

    return lambda q, k, v: sageattn(q, k, v, tensor_layout="NHD")


_IMPORTERS = {"flash_attn_3": _import_flash_attn_3, "flash_attn_2": _import_flash_attn_2, "sage": _import_sage}


@functools.lru_cache(maxsize=None)
def _load_backend(name: str) -> Optional[Callable]:
    """Import an accelerated kernel once; None if it cannot be imported for any reason."""
    try:
        fn = _IMPORTERS[name]()
    except Exception as exc:  # noqa: BLE001 -- a broken optional install must never crash us
        logger.debug("attention backend %s unavailable: %s: %s", name, type(exc).__name__, exc)
        return None
    return fn


@functools.lru_cache(maxsize=None)
def _choose(requested: Optional[str]) -> str:
    """The backend actually used for a request (None = automatic); decided and logged once per request."""
    if requested is None:
        for name in BACKENDS[:-1]:
            if _load_backend(name) is not None:
                logger.debug("attention backend: %s", name)
                return name
        logger.debug("attention backend: sdpa (no accelerated kernel importable)")
        return "sdpa"
    if requested != "sdpa" and _load_backend(requested) is None:
        logger.debug("attention backend %s requested but not importable; using sdpa", requested)
        return "sdpa"
    logger.debug("attention backend: %s (requested)", requested)
    return requested


def resolve_backend(backend: Optional[str] = None) -> str:
    """Name of the backend that `attention` uses for CUDA half-precision inputs.

    `backend` wins over `$DIFFSYNTH_ATTENTION`; None or "auto" picks the best importable kernel.
    """
    name = backend or os.environ.get(ENV_VAR) or None
    if name == "auto":
        name = None
    if name is not None and name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r} (from argument or ${ENV_VAR}); choose one of "
                         f"{BACKENDS} or 'auto'")
    return _choose(name)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [B,Lq,n,dh], k/v [B,Lk,n,dh] -> [B,Lq,n,dh]; softmax scale 1/sqrt(dh), no mask."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: Optional[str] = None) -> torch.Tensor:
    """Non-causal multi-head attention.

    Args:
        q: [B, Lq, n, dh]; k, v: [B, Lk, n, dh].
        backend: force a backend name (see module docstring); None means `$DIFFSYNTH_ATTENTION` or automatic.
    Returns:
        [B, Lq, n, dh] in q's dtype.
    """
    if q.is_cuda and q.dtype in HALF_DTYPES:
        name = resolve_backend(backend)
        if name != "sdpa":
            return _load_backend(name)(q, k, v)
    return sdpa(q, k, v)
