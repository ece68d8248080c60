"""FlowMatchScheduler against the spec's numbers and an independent computation."""
from __future__ import annotations

import math

import pytest
import torch

from diffsynth.schedulers import FlowMatchScheduler


def test_inference_schedule_matches_spec_values():
    s = FlowMatchScheduler(shift=5.0)
    s.set_timesteps(50)
    assert s.timesteps.dtype == torch.float32 and len(s.timesteps) == 50
    # upstream spec 5.1: 1000, 995.935, 991.736, 987.395, ..., 241.935, 172.414, 92.593
    expected_head, expected_tail = [1000.0, 995.935, 991.736, 987.395], [241.935, 172.414, 92.593]
    torch.testing.assert_close(s.timesteps[:4], torch.tensor(expected_head), atol=1e-3, rtol=0)
    torch.testing.assert_close(s.timesteps[-3:], torch.tensor(expected_tail), atol=1e-3, rtol=0)
    # as bf16 (what the DiT sees): 1000, 996, 992, 988, ..., 92.5
    assert s.timesteps[:4].bfloat16().float().tolist() == [1000.0, 996.0, 992.0, 988.0]
    assert s.timesteps[-1].bfloat16().item() == 92.5


def test_euler_steps_integrate_a_constant_velocity_exactly():
    s = FlowMatchScheduler(shift=3.0)
    s.set_timesteps(7)
    x0, eps = torch.randn(4), torch.randn(4)
    x = eps.clone()                       # sigma = 1
    for t in s.timesteps:
        x = s.step(eps - x0, t, x)        # the true velocity of the straight path
    torch.testing.assert_close(x, x0, atol=1e-5, rtol=0)


def test_training_weights_and_noise():
    s = FlowMatchScheduler(shift=5.0)
    s.set_timesteps(1000, training=True)
    w = s.linear_timesteps_weights
    assert abs(w.mean().item() - 1) < 1e-4 and w[0].item() == 0.0
    assert abs(w.max().item() - 2.076) < 2e-3
    frac_above_500 = (s.timesteps > 500).float().mean().item()
    assert abs(frac_above_500 - 0.83) < 0.01
    x0, eps = torch.ones(3), torch.zeros(3)
    t = s.timesteps[100]
    sigma = 5 * (1 - 100 / 1000) / (1 + 4 * (1 - 100 / 1000))
    torch.testing.assert_close(s.add_noise(x0, eps, t), torch.full((3,), 1 - sigma), atol=1e-6, rtol=0)
    assert math.isclose(s.training_weight(t).item(), w[100].item())


def test_partial_denoising_and_bad_steps():
    s = FlowMatchScheduler(shift=1.0)
    s.set_timesteps(4, denoising_strength=0.5)
    torch.testing.assert_close(s.sigmas, torch.tensor([0.5, 0.375, 0.25, 0.125]))
    with pytest.raises(ValueError, match="num_inference_steps"):
        s.set_timesteps(0)
