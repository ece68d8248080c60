"""The errors of checkpoint loading: `CheckpointError` and the two kinds of unreadable file below it (the LoRA,
format and configuration errors derive from it in their own modules)."""
from __future__ import annotations


class CheckpointError(RuntimeError):
    """A weight file that cannot be read, or whose contents do not fit the model it is loaded as."""


class UnsafeCheckpointError(CheckpointError):
    """`torch.load(weights_only=True)` refused a pickle: it would import or call something other than tensors."""


class NonFiniteTensorError(CheckpointError):
    """A tensor holds NaN or Inf values, as stored or after the cast to the compute dtype."""


__all__ = ["CheckpointError", "UnsafeCheckpointError", "NonFiniteTensorError"]
