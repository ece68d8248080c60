"""Flow-matching Euler scheduler as used by DiffSynth/UniAnimate (wan-architecture spec 5.1 and 5.3).

Convention: x_sigma = (1 - sigma) x0 + sigma eps, DiT timestep t = 1000 sigma, the DiT predicts v = eps - x0.
"""
from __future__ import annotations

import torch


class FlowMatchScheduler:
    """Shifted linear sigma schedule with Euler steps (inference) and bell-shaped loss weights (training)."""

    def __init__(self, shift: float = 5.0, num_train_timesteps: int = 1000, sigma_max: float = 1.0,
                 sigma_min: float = 0.0, extra_one_step: bool = True):
        self.shift = shift
        self.num_train_timesteps = num_train_timesteps
        self.sigma_max, self.sigma_min = sigma_max, sigma_min
        self.extra_one_step = extra_one_step
        self.set_timesteps(50)

    def set_timesteps(self, num_inference_steps: int = 50, denoising_strength: float = 1.0, training: bool = False):
        """Schedule `sigmas` and `timesteps` (float32, decreasing). `denoising_strength` < 1 starts part-way."""
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1; got {num_inference_steps}")
        start = self.sigma_min + (self.sigma_max - self.sigma_min) * denoising_strength
        if self.extra_one_step:   # linspace(start, min, N+1) without its last point
            sigmas = torch.linspace(start, self.sigma_min, num_inference_steps + 1)[:-1]
        else:
            sigmas = torch.linspace(start, self.sigma_min, num_inference_steps)
        self.sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        self.timesteps = self.sigmas * self.num_train_timesteps
        if training:
            # Bell-shaped loss weights around t=500, shifted to 0 at the minimum and scaled to mean 1.
            y = torch.exp(-2 * ((self.timesteps - num_inference_steps / 2) / num_inference_steps) ** 2)
            y = y - y.min()
            self.linear_timesteps_weights = y * (num_inference_steps / y.sum())

    def _index(self, timestep) -> torch.Tensor:
        t = torch.as_tensor(timestep, dtype=torch.float32).reshape(-1)[0].cpu()
        return (self.timesteps - t).abs().argmin()

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor) -> torch.Tensor:
        """One Euler step: x <- x + v (sigma_next - sigma), with sigma after the last step = 0."""
        i = int(self._index(timestep))
        sigma = self.sigmas[i]
        sigma_next = self.sigmas[i + 1] if i + 1 < len(self.sigmas) else 0.0
        return sample + model_output * (float(sigma_next) - float(sigma))

    def add_noise(self, original: torch.Tensor, noise: torch.Tensor, timestep) -> torch.Tensor:
        sigma = float(self.sigmas[self._index(timestep)])
        return (1 - sigma) * original + sigma * noise

    @staticmethod
    def training_target(sample: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return noise - sample

    def training_weight(self, timestep) -> torch.Tensor:
        return self.linear_timesteps_weights[self._index(timestep)]


__all__ = ["FlowMatchScheduler"]
