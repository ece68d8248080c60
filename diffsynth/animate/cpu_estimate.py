"""How long a denoising step of the released 14B model takes on this CPU, said before a CPU run starts: the DiT's
FLOPs per step (`models.dit_flops`) over the rate this CPU reaches in bf16 matrix products, measured in a quarter of
a second. A lower bound in spirit (attention and memory traffic make real steps slower), but it tells a newcomer
in one line whether to wait or to use a GPU or `--models tiny`."""
from __future__ import annotations

import time
from typing import Optional

import torch

from ..configs import WanDiTConfig
from ..models.dit_flops import dit_forward_flops
from ..pipelines.windows import WindowSettings, context_windows


def matmul_rate(dtype: torch.dtype = torch.bfloat16, size: int = 1024, seconds: float = 0.25) -> float:
    """FLOP/s of `size` x `size` matrix products in `dtype` on this CPU (all its intra-op threads)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    torch.mm(a, b)                                   # warm-up: kernels picked, pages touched
    runs, start = 0, time.perf_counter()
    while runs < 2 or time.perf_counter() - start < seconds:
        torch.mm(a, b)
        runs += 1
    return 2 * size ** 3 * runs / (time.perf_counter() - start)


def step_flops(num_frames: int, height: int, width: int, cfg_scale: float,
               windows: Optional[WindowSettings] = None, config: WanDiTConfig = WanDiTConfig()) -> float:
    """FLOPs of one denoising step: every window of the long-video schedule (`windows`, as given to the
    generation; None: the whole clip at once) and both CFG branches unless `cfg_scale == 1`."""
    latent_frames, latent_h, latent_w = (num_frames - 1) // 4 + 1, height // 8, width // 8
    spans = [(0, latent_frames)] if windows is None else \
        context_windows(latent_frames, windows.context_size, windows.context_overlap)
    branches = 1 if cfg_scale == 1 else 2
    return branches * sum(dit_forward_flops(config, end - start, latent_h, latent_w) for start, end in spans)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def cpu_estimate_line(num_frames: int, height: int, width: int, steps: int, cfg_scale: float,
                      windows: Optional[WindowSettings] = None, rate: Optional[float] = None) -> str:
    """One line: the expected time per step and for the whole denoising on this CPU (`rate`: measured if None)."""
    flops = step_flops(num_frames, height, width, cfg_scale, windows)
    rate = matmul_rate() if rate is None else rate
    per_step = flops / rate
    return (f"on the CPU the 14B model needs about {_duration(per_step)} per denoising step ({flops / 1e15:.2f} "
            f"PFLOP at the {rate / 1e9:.0f} GFLOP/s this CPU reaches in bf16 matrix products; {steps} steps: about "
            f"{_duration(per_step * steps)}). A GPU takes seconds per step; --models tiny runs the demo model here")


__all__ = ["matmul_rate", "step_flops", "cpu_estimate_line"]
