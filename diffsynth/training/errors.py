"""The errors that stop training with a one-line message (cli.main prints them without a traceback), and the check
for NaN/Inf values that raises `NonFiniteError`."""
from __future__ import annotations

from typing import Any, List

import torch


class TrainingError(RuntimeError):
    """A training setup that cannot work (e.g. a pretrained LoRA of another rank)."""


class NonFiniteError(RuntimeError):
    """NaN or Inf in a loss, gradients, weights or a loaded file: training stops instead of going on with them."""


def find_nonfinite(obj: Any, prefix: str = "", limit: int = 5) -> List[str]:
    """The keys (dotted paths) of floating-point tensors holding NaN or Inf in a nested dict/list of tensors,
    at most `limit` of them."""
    found: List[str] = []

    def visit(value, key):
        if len(found) >= limit:
            return
        if isinstance(value, torch.Tensor):
            if (value.is_floating_point() or value.is_complex()) and value.numel() \
                    and not bool(torch.isfinite(value).all()):
                found.append(key)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{key}.{i}" if key else str(i))

    visit(obj, prefix)
    return found


__all__ = ["TrainingError", "NonFiniteError", "find_nonfinite"]
