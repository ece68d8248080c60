"""Flow-matching Euler scheduler as used by DiffSynth/UniAnimate (wan-architecture spec 5.1 and 5.3).

Convention: x_sigma = (1 - sigma) x0 + sigma eps, DiT timestep t = 1000 sigma, the DiT predicts v = eps - x0.

Schedules: the shifted linear one from `num_inference_steps` (the Wan default), or an explicit one for step-distilled
models: `denoising_step_list` (LightX2V/Self-Forcing convention: entries on the 1000-step training grid, e.g.
[1000, 750, 500, 250], picked from the shifted 1000-step schedule, so with shift 5 they become t = 1000, 937.5, 833.3,
625), `sigmas` (used as given) or `timesteps` (t = 1000 sigma, used as given).

Samplers: "euler" (x <- x + v (sigma_next - sigma), deterministic) and "renoise", the few-step sampler the distill
models are trained for (LightX2V's WanStepDistillScheduler, ComfyUI's "lcm"): predict x0 = x - sigma v, then
re-noise it to the next sigma with fresh Gaussian noise, x <- (1 - sigma_next) x0 + sigma_next eps.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

SAMPLERS = ("euler", "renoise")


class FlowMatchScheduler:
    """Shifted linear sigma schedule with Euler steps (inference) and bell-shaped loss weights (training)."""

    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000, sigma_max: float = 1.0,
                 sigma_min: float = 0.0, extra_one_step: bool = True, sampler: str = "euler"):
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        self.sigma_max, self.sigma_min = sigma_max, sigma_min
        self.extra_one_step = extra_one_step
        self.sampler = sampler
        self.set_timesteps(50)

    @property
    def sampler(self) -> str:
        return self._sampler

    @sampler.setter
    def sampler(self, value: str) -> None:
        if value not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}; got {value!r}")
        self._sampler = value

    def shifted_sigmas(self, num_steps: int, start: float = 1.0) -> torch.Tensor:
        """`num_steps` sigmas from `start` (a fraction of the sigma range) towards sigma_min, shifted."""
        start = self.sigma_min + (self.sigma_max - self.sigma_min) * start
        if self.extra_one_step:   # linspace(start, min, N+1) without its last point
            sigmas = torch.linspace(start, self.sigma_min, num_steps + 1)[:-1]
        else:
            sigmas = torch.linspace(start, self.sigma_min, num_steps)
        return self.shift * sigmas / (1 + (self.shift - 1) * sigmas)

    def set_timesteps(self, num_inference_steps: Optional[int] = 50, denoising_strength: float = 1.0,
                      training: bool = False, denoising_step_list: Optional[Sequence[float]] = None,
                      sigmas: Optional[Sequence[float]] = None, timesteps: Optional[Sequence[float]] = None):
        """Schedule `sigmas` and `timesteps` (float32, decreasing).

        Either `num_inference_steps` shifted linear steps (`denoising_strength` < 1 starts part-way), or one explicit
        schedule (see the module docstring): `denoising_step_list` (values in 1..1000 on the training grid, picked
        from the shifted 1000-step schedule), `sigmas` (in (0, 1], as given) or `timesteps` (in (0, 1000], as
        given). With an explicit schedule `num_inference_steps` may be None or must equal its length.
        """
        explicit = {name: value for name, value in (("denoising_step_list", denoising_step_list),
                                                    ("sigmas", sigmas), ("timesteps", timesteps))
                    if value is not None}
        if len(explicit) > 1:
            raise ValueError(f"pass one of denoising_step_list, sigmas and timesteps; got {sorted(explicit)}")
        if explicit:
            if training:
                raise ValueError("explicit schedules are for inference; training uses num_inference_steps")
            if denoising_strength != 1.0:
                raise ValueError("denoising_strength < 1 cannot shorten an explicit schedule: give the sigmas to "
                                 "run instead")
            self.sigmas = self._explicit_sigmas(*next(iter(explicit.items())))
            if num_inference_steps is not None and num_inference_steps != len(self.sigmas):
                raise ValueError(f"num_inference_steps={num_inference_steps} but the explicit schedule has "
                                 f"{len(self.sigmas)} steps: pass num_inference_steps=None or {len(self.sigmas)}")
            self.timesteps = self.sigmas * self.num_train_timesteps
            return
        if num_inference_steps is None or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}")
        self.sigmas = self.shifted_sigmas(num_inference_steps, denoising_strength)
        self.timesteps = self.sigmas * self.num_train_timesteps
        if training:
            # Bell-shaped loss weights around t=500, shifted to 0 at the minimum and scaled to mean 1.
            y = torch.exp(-2 * ((self.timesteps - num_inference_steps / 2) / num_inference_steps) ** 2)
            y = y - y.min()
            self.linear_timesteps_weights = y * (num_inference_steps / y.sum())

    def _explicit_sigmas(self, name: str, values: Sequence[float]) -> torch.Tensor:
        values = torch.as_tensor([float(v) for v in values], dtype=torch.float64)
        if values.numel() == 0:
            raise ValueError(f"{name} is empty")
        if name == "denoising_step_list":
            grid = self.num_train_timesteps
            if not all(float(v).is_integer() and 1 <= v <= grid for v in values.tolist()):
                raise ValueError(f"denoising_step_list entries must be integers in 1..{grid} (e.g. [1000, 750, "
                                 f"500, 250]); got {values.tolist()}")
            full = self.shifted_sigmas(grid)
            sigmas = full[(grid - values).long()]
        else:
            limit = 1.0 if name == "sigmas" else float(self.num_train_timesteps)
            if not bool(((values > 0) & (values <= limit)).all()):
                raise ValueError(f"{name} must lie in (0, {limit:g}]; got {values.tolist()}")
            sigmas = (values / limit).float()
        if len(sigmas) > 1 and not bool((sigmas[1:] < sigmas[:-1]).all()):
            raise ValueError(f"{name} must be strictly decreasing (from noise towards data); got {values.tolist()}")
        return sigmas.float()

    def _index(self, timestep) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[0].cpu()
        return (self.timesteps - t).abs().argmin()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             noise: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One step to the next sigma (0 after the last step).

        "euler": x <- x + v (sigma_next - sigma). "renoise": x0 = x - sigma v, then x <- (1 - sigma_next) x0 +
        sigma_next noise; `noise` (like `sample`) is required unless this is the last step."""
        i = int(self._index(timestep))
        sigma = float(self.sigmas[i])
        sigma_next = float(self.sigmas[i + 1]) if i + 1 < len(self.sigmas) else 0.0
        if self.sampler == "euler":
            return sample + model_output * (sigma_next - sigma)
        x0 = sample - sigma * model_output
        if sigma_next == 0.0:
            return x0
        if noise is None:
            raise ValueError("the renoise sampler needs fresh noise for every step but the last")
        return (1 - sigma_next) * x0 + sigma_next * noise.to(x0.dtype)

    def needs_noise(self, timestep) -> bool:
        """True when `step` at this timestep takes fresh noise (the renoise sampler, all but the last step)."""
        return self.sampler == "renoise" and int(self._index(timestep)) + 1 < len(self.sigmas)

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        sigma = float(self.sigmas[self._index(timestep)])
        return (1 - sigma) * original + sigma * noise

    @staticmethod
    def training_target(sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - sample

    def training_weight(self, timestep) -> torch.Tensor:
        return self.linear_timesteps_weights[self._index(timestep)]


__all__ = ["FlowMatchScheduler", "SAMPLERS"]
